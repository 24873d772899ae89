"""Orbax steps of a run directory: `<run_dir>/<step>/params` (the release) and `.../state` (resume).

The parameters are saved on their own so that a released run directory loads without the
optimizer; the whole train state (parameters again inside it, optimizer state, step, rng) is saved
beside them when training wants to resume. Orbax writes each step to a temporary directory and
renames it when complete, so a step directory that exists is whole.
"""

import os

import jax
import orbax.checkpoint as ocp

from octo_like.utils.errors import InputError


def checkpoint_manager(run_dir: str, max_to_keep: int | None = None, keep_period: int | None = None) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period, create=True)
    return ocp.CheckpointManager(os.path.abspath(run_dir), options=options, item_names=("params", "state"))


def save(manager: ocp.CheckpointManager, step: int, params, state=None) -> None:
    items = {"params": ocp.args.StandardSave(params)}
    if state is not None:
        items["state"] = ocp.args.StandardSave(state)
    manager.save(step, args=ocp.args.Composite(**items))


def abstract_tree(tree):
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def restore_params(run_dir: str, params_like, step: int | None = None):
    """The parameters saved at `step` (default: the latest), with the structure of `params_like`."""
    manager = checkpoint_manager(run_dir)
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise InputError(f"run directory '{run_dir}' has no checkpoint step {step}; it has steps {list(manager.all_steps())}")
    restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_tree(params_like))))
    return restored["params"], step
