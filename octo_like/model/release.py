"""Orbax steps of a run directory: `<run_dir>/<step>/params` (the release) and `.../state` (resume).

The parameters are saved on their own so that a released run directory loads without the
optimizer; the whole train state (parameters again inside it, optimizer state, step, rng) is saved
beside them when training wants to resume. Orbax writes each step to a temporary directory and
renames it when complete, so a step directory that exists is whole.
"""

import os
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

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
    """Restore targets for `tree`: its shapes, dtypes and shardings. Leaves without a sharding
    (shapes from `jax.eval_shape`) restore onto this process's first device, whatever mesh or
    number of processes saved them (orbax refuses to guess a layout for another topology)."""
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def target(leaf):
        struct = ocp.utils.to_shape_dtype_struct(leaf)
        if struct.sharding is None:
            struct = jax.ShapeDtypeStruct(struct.shape, struct.dtype, sharding=default)
        return struct

    return jax.tree_util.tree_map(target, tree)


def restore_latest_good(manager: ocp.CheckpointManager, restore: Callable[[int], Any], step: int | None = None) -> tuple[Any, int]:
    """`restore(step)` of `step`, or else of the newest step that restores; a step that fails
    (corrupt or half-copied files) is skipped with a warning. Orbax never exposes a step whose
    write was interrupted (it writes to a temporary directory first), so this guards against
    damage after the fact."""
    steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
    if not steps or (step is not None and step not in manager.all_steps()):
        raise InputError(f"run directory '{manager.directory}' has no checkpoint step {step}; it has steps {sorted(manager.all_steps())}")
    reason = ""
    for candidate in steps:
        try:
            return restore(candidate), candidate
        except Exception as error:  # noqa: BLE001  orbax raises many types for damaged files
            if step is not None:
                raise InputError(f"checkpoint step {step} of '{manager.directory}' cannot be restored: {type(error).__name__}: {error}") from error
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            logging.warning("checkpoint step %d of %s cannot be restored (%s); trying the previous one", candidate, manager.directory, reason)
    # Every step failing the same way is rarely damage: more often the target differs from what
    # was saved (another optimizer or model), which the last reason names.
    raise InputError(f"no checkpoint step of '{manager.directory}' can be restored (tried {steps}); the last error: {reason}")


def restore_params(run_dir: str, params_like, step: int | None = None):
    """The parameters saved at `step` (default: the newest good step), with the structure of `params_like`."""
    manager = checkpoint_manager(run_dir)
    args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract_tree(params_like)))
    restored, step = restore_latest_good(manager, lambda candidate: manager.restore(candidate, args=args), step)
    return restored["params"], step
