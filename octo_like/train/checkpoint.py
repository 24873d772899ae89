"""Resuming training from the `state` item of a run directory's orbax steps (see octo_like.model.release)."""

import orbax.checkpoint as ocp

from octo_like.model.release import abstract_tree, restore_latest_good


def restore_state(manager: ocp.CheckpointManager, state_like):
    """The train state of the newest step that restores (damaged steps skipped with a warning),
    with the structure (and shardings) of `state_like`."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_tree(state_like)))
    restored, _ = restore_latest_good(manager, lambda step: manager.restore(step, args=args))
    return restored["state"]
