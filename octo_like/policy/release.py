"""Orbax steps of a run directory: `<run_dir>/<step>/params` (the release), `.../state` (resume)
and `.../checksums` (a checksum of every array of both, recorded at save time).

The parameters are saved on their own so that a released run directory loads without the
optimizer; the whole train state (parameters again inside it, optimizer state, step, rng) is saved
beside them when training wants to resume. Orbax writes each step to a temporary directory and
renames it when complete, so a step directory that exists is whole; the checksums find damage
after the fact (a flipped bit, a truncated copy), which the file format alone may not notice. A
step whose arrays are not all finite is never saved. Steps written before checksums existed load
with a note that they are unverified.
"""

import os
import shutil
from collections.abc import Callable
from typing import Any

import flax
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint._src.metadata import array_metadata_store  # no public name; orbax is pinned

from octo_like.utils import checksums as checksums_lib
from octo_like.utils.errors import InputError

RELEASE_FILES = ("config.json", "dataset_statistics.json", "example_batch.msgpack")
CHECKSUMS = "checksums"
CHECKSUMS_FORMAT = (
    "octo_like-checksums-v1"  # {"format", "arrays": {"params/<path>" | "state/<path>": "<algorithm>:<hex>"}}
)
DAMAGED_DIR = "damaged_steps"
_ONE_REPLICA_HANDLER = None  # see write_replicated_arrays_from_one_replica


class DamagedCheckpointError(Exception):
    """A restored step whose arrays differ from the checksums recorded when it was saved."""


class NonFiniteStateError(InputError):
    """Parameters or optimizer state holding NaN or Inf: never written as a checkpoint."""


def read_example_batch(run_dir: str) -> dict:
    """The release's example batch (arrays only): it fixes cameras, image sizes, window and chunk."""
    path = os.path.join(run_dir, "example_batch.msgpack")
    if not os.path.isfile(path):
        raise InputError(f"'{path}' not found; expected a run directory written by training (the release format)")
    with open(path, "rb") as file:
        return flax.serialization.msgpack_restore(file.read())


def image_sizes(example_batch: dict) -> dict[str, tuple[int, int]]:
    """{camera: (height, width)} of the observation images in a (release's) example batch."""
    return {
        key.removeprefix("image_"): tuple(int(n) for n in value.shape[-3:-1])
        for key, value in example_batch["observation"].items()
        if key.startswith("image_")
    }


def write_replicated_arrays_from_one_replica() -> None:
    """On one process, orbax writes a replicated array from its first replica.

    Orbax's default on CPU and TPU cuts every replicated array into one slice per replica, so that
    the hosts of a pod share the writing; on one host that buys nothing, and each slice is an
    eagerly compiled op: the first save of the tiny model on 8 CPU devices took 18.3 s, against
    0.8 s from one replica. Multi-process runs keep orbax's default."""
    global _ONE_REPLICA_HANDLER
    if jax.process_count() == 1 and _ONE_REPLICA_HANDLER is None:
        _ONE_REPLICA_HANDLER = ocp.type_handlers.ArrayHandler(
            use_replica_parallel=False, array_metadata_store=array_metadata_store.Store()
        )
        verbosity = logging.get_verbosity()
        logging.set_verbosity(logging.ERROR)  # orbax warns of any override; this one is meant
        try:
            ocp.type_handlers.register_type_handler(jax.Array, _ONE_REPLICA_HANDLER, override=True)
        finally:
            logging.set_verbosity(verbosity)


def checkpoint_manager(
    run_dir: str, max_to_keep: int | None = None, keep_period: int | None = None
) -> ocp.CheckpointManager:
    write_replicated_arrays_from_one_replica()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period, create=True)
    return ocp.CheckpointManager(os.path.abspath(run_dir), options=options, item_names=("params", "state", CHECKSUMS))


def saved_steps(run_dir: str) -> list[int]:
    """The finished orbax steps in `run_dir` (none when it does not exist)."""
    if not os.path.isdir(run_dir):
        return []
    # Orbax names a finished step directory by its number (an unfinished one has a temporary suffix).
    return sorted(
        int(name) for name in os.listdir(run_dir) if name.isdigit() and os.path.isdir(os.path.join(run_dir, name))
    )


def check_release(run_dir: str, step: int | None = None) -> list[int]:
    """The saved steps of a release, after checking (without creating or changing anything) that
    `run_dir` holds the release files and a saved step (`step`, when given): one line otherwise."""
    if not os.path.isdir(run_dir):
        raise InputError(f"'{run_dir}' is not a directory; expected a run directory written by scripts/train.py")
    for name in RELEASE_FILES:
        if not os.path.isfile(os.path.join(run_dir, name)):
            raise InputError(f"'{run_dir}' is not a run directory: it has no {name}")
    steps = saved_steps(run_dir)
    if not steps or (step is not None and step not in steps):
        wanted = "no saved checkpoint step" if not steps else f"no checkpoint step {step}; it has steps {steps}"
        raise InputError(f"run directory '{run_dir}' has {wanted}")
    return steps


def _step_dir(manager: ocp.CheckpointManager, step: int) -> str:
    return os.path.join(str(manager.directory), str(step))


def save(manager: ocp.CheckpointManager, step: int, params, state=None) -> None:
    """Saves step `step` with the checksums of its arrays; refuses (one line) a non-finite array,
    and a step that orbax declines (one not newer than the newest on disk) instead of reporting it saved."""
    items = {"params": params} if state is None else {"params": params, "state": state}
    arrays, nonfinite = checksums_lib.tree_checksums(items)
    if nonfinite:
        raise NonFiniteStateError(
            f"refusing to save checkpoint step {step} to '{manager.directory}': array '{nonfinite[0]}' "
            f"holds NaN or Inf ({len(nonfinite)} such arrays)"
        )
    recorded = {"format": CHECKSUMS_FORMAT, "arrays": arrays}
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    if not manager.save(step, args=ocp.args.Composite(**args, **{CHECKSUMS: ocp.args.JsonSave(recorded)})):
        raise InputError(
            f"checkpoint step {step} was not saved to '{manager.directory}': it already holds step "
            f"{manager.latest_step()}; expected a step newer than every step on disk"
        )


def verify(manager: ocp.CheckpointManager, step: int, name: str, restored) -> None:
    """Checks `restored` (item `name` of `step`) against the checksums saved with it: raises
    DamagedCheckpointError naming the first bad array; a step saved before checksums existed
    passes with a one-line note that it is unverified."""
    if not os.path.isdir(os.path.join(_step_dir(manager, step), CHECKSUMS)):
        logging.warning(
            "checkpoint step %d of %s has no checksums (written before they existed): loaded unverified",
            step,
            manager.directory,
        )
        return
    recorded = manager.restore(step, args=ocp.args.Composite(**{CHECKSUMS: ocp.args.JsonRestore()}))[CHECKSUMS]
    if (
        not isinstance(recorded, dict)
        or recorded.get("format") != CHECKSUMS_FORMAT
        or not isinstance(recorded.get("arrays"), dict)
    ):
        raise DamagedCheckpointError(f"its checksums file is not of format '{CHECKSUMS_FORMAT}'")
    recorded = {path: checksum for path, checksum in recorded["arrays"].items() if path.startswith(f"{name}/")}
    algorithms = {path: str(checksum).partition(":")[0] for path, checksum in recorded.items()}
    actual, _ = checksums_lib.tree_checksums({name: restored}, algorithms, check_finite=False)
    bad = checksums_lib.first_mismatch(recorded, actual)
    if bad is not None:
        raise DamagedCheckpointError(f"array '{bad}' fails its checksum")


def restore_verified(manager: ocp.CheckpointManager, step: int, name: str, target):
    """Item `name` of `step` restored as `target` (see `abstract_tree`) and verified."""
    restored = manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.StandardRestore(target)}))[name]
    verify(manager, step, name, restored)
    return restored


def move_aside_steps_after(manager: ocp.CheckpointManager, step: int) -> list[int]:
    """Moves every step newer than `step` (ones that failed to restore) into `<run_dir>/damaged_steps/`,
    so that training rewrites them (orbax saves only steps newer than the newest on disk) and the
    damaged files stay for inspection. Every process calls it; process 0 moves."""
    newer = sorted(candidate for candidate in manager.all_steps() if candidate > step)
    if newer and jax.process_index() == 0:
        damaged_dir = os.path.join(str(manager.directory), DAMAGED_DIR)
        os.makedirs(damaged_dir, exist_ok=True)
        for candidate in newer:
            destination = os.path.join(damaged_dir, str(candidate))
            suffix = 1
            while os.path.exists(destination):  # an earlier resume moved a damaged step of this number too
                destination, suffix = os.path.join(damaged_dir, f"{candidate}.{suffix}"), suffix + 1
            shutil.move(_step_dir(manager, candidate), destination)
            logging.warning(
                "moved damaged checkpoint step %d of %s to %s; training rewrites it",
                candidate,
                manager.directory,
                destination,
            )
    if newer and jax.process_count() > 1:
        multihost_utils.sync_global_devices("octo_like: damaged steps moved aside")
    manager.reload()
    return newer


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


def restore_latest_good(
    manager: ocp.CheckpointManager, restore: Callable[[int], Any], step: int | None = None
) -> tuple[Any, int]:
    """`restore(step)` of `step`, or else of the newest step that restores; a step that fails
    (corrupt or half-copied files, an array failing its checksum) is skipped with a warning naming
    the step and the cause. Orbax never exposes a step whose write was interrupted (it writes to a
    temporary directory first), so this guards against damage after the fact."""
    steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
    if not steps or (step is not None and step not in manager.all_steps()):
        raise InputError(
            f"run directory '{manager.directory}' has no checkpoint step {step}; it has steps "
            f"{sorted(manager.all_steps())}"
        )
    reason = ""
    for candidate in steps:
        try:
            return restore(candidate), candidate
        except Exception as error:  # noqa: BLE001  orbax raises many types for damaged files
            if step is not None:
                raise InputError(
                    f"checkpoint step {step} of '{manager.directory}' cannot be restored: "
                    f"{type(error).__name__}: {error}"
                ) from error
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            logging.warning(
                "checkpoint step %d of %s cannot be restored (%s); trying the previous one",
                candidate,
                manager.directory,
                reason,
            )
    # Every step failing the same way is rarely damage: more often the target differs from what
    # was saved (another optimizer or model), which the last reason names.
    raise InputError(
        f"no checkpoint step of '{manager.directory}' can be restored (tried {steps}); the last error: {reason}"
    )


def restore_params(run_dir: str, params_like, step: int | None = None):
    """The parameters saved at `step` (default: the newest good step), verified, with the structure of `params_like`."""
    manager = checkpoint_manager(run_dir)
    target = abstract_tree(params_like)
    return restore_latest_good(manager, lambda candidate: restore_verified(manager, candidate, "params", target), step)


def check_step_saved(manager: ocp.CheckpointManager, step: int, params_like) -> None:
    """Raises unless `step` is on disk with its checksums and its parameters read back and verify:
    what a run checks before it reports the step saved."""
    manager.wait_until_finished()
    if step not in manager.all_steps() or not os.path.isdir(os.path.join(_step_dir(manager, step), CHECKSUMS)):
        raise InputError(
            f"checkpoint step {step} is not on disk in '{manager.directory}' (it holds {sorted(manager.all_steps())})"
        )
    try:
        restore_verified(manager, step, "params", abstract_tree(params_like))
    except DamagedCheckpointError as error:
        raise InputError(f"checkpoint step {step} of '{manager.directory}' reads back damaged: {error}") from error
