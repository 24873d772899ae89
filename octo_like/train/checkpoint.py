"""Resuming training from the `state` item of a run directory's orbax steps (see octo_like.policy.release)."""

import orbax.checkpoint as ocp

from octo_like.policy.release import abstract_tree, move_aside_steps_after, restore_latest_good, restore_verified


def restore_state(manager: ocp.CheckpointManager, state_like):
    """The train state of the newest step that restores and verifies, with the structure (and
    shardings) of `state_like`. Damaged newer steps are skipped with a warning and moved aside, so
    that training continues from the good step and saves those steps again."""
    target = abstract_tree(state_like)
    state, step = restore_latest_good(manager, lambda candidate: restore_verified(manager, candidate, "state", target))
    move_aside_steps_after(manager, step)
    return state
