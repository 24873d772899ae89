"""Resuming training from the `state` item of a run directory's orbax steps (see octo_like.model.release)."""

import orbax.checkpoint as ocp

from octo_like.model.release import abstract_tree


def restore_state(manager: ocp.CheckpointManager, state_like, step: int):
    """The train state saved at `step`, with the structure (and shardings) of `state_like`."""
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_tree(state_like))))
    return restored["state"]
