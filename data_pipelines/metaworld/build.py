"""Collects Meta-World scripted-expert episodes and writes them as the `metaworld/<name>` RLDS dataset.

    python -m data_pipelines.metaworld.build --data_dir data/tensorflow_datasets \
        --name mt10 --tasks mt10 --episodes_per_task 20 [--image_size 128] [--action_noise 0.1] \
        [--keep_failures] [--workers 8] [--seed 0]

Writes the episodes to <data_dir>/downloads/metaworld/<name>/<task>/episode_*.npz (the collection;
`collection.json` records its settings), then the TFDS dataset to <data_dir>/metaworld/<name>/1.0.0/.
A killed run keeps every finished episode: run the same command again to continue. A built
dataset is not rebuilt; delete its version directory to rebuild from the collected episodes.
Tasks: names (`reach-v3` or `reach`), or the sets mt10, mt50, mt50_train, mt50_heldout.
"""

import json

from absl import flags

import octo_like  # noqa: F401  (quiet TensorFlow, set before it is imported)
from data_pipelines.metaworld.builder import build
from data_pipelines.metaworld.collect import CollectionSettings
from octo_like.eval.envs.metaworld_tasks import TASK_SETS, resolve_tasks
from octo_like.utils.cli import run_cli
from octo_like.utils.errors import InputError

_DATA_DIR = flags.DEFINE_string("data_dir", "data/tensorflow_datasets", "TFDS data directory to write into.")
_NAME = flags.DEFINE_string("name", None, "Dataset config name (default: the --tasks value when it is a task set).")
_TASKS = flags.DEFINE_string("tasks", "mt10", "Comma-separated task names or task sets.")
_EPISODES = flags.DEFINE_integer("episodes_per_task", 20, "Episodes kept per task.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Rendered image height and width.")
_PRIMARY_CAMERA = flags.DEFINE_string("primary_camera", "corner", "Third-person camera.")
_WRIST_CAMERA = flags.DEFINE_string("wrist_camera", "gripperPOV", "Gripper camera.")
_ACTION_NOISE = flags.DEFINE_float("action_noise", 0.0, "Std of Gaussian noise on the executed action.")
_KEEP_FAILURES = flags.DEFINE_bool("keep_failures", False, "Keep unsuccessful episodes instead of retrying.")
_MAX_ATTEMPTS = flags.DEFINE_integer("max_attempts", 5, "Attempts per episode to get a success.")
_MAX_STEPS = flags.DEFINE_integer("max_episode_steps", 500, "Steps after which an episode is cut.")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.1, "Fraction of each task's episodes in the val split.")
_WORKERS = flags.DEFINE_integer("workers", None, "Collection processes (default: one per CPU).")
_SEED = flags.DEFINE_integer("seed", 0, "Collection seed.")


def main(argv):
    if len(argv) > 1:
        raise InputError(f"unexpected arguments {argv[1:]}; only flags are accepted")
    name = _NAME.value or (_TASKS.value if _TASKS.value in TASK_SETS else None)
    if name is None:
        raise InputError(f"--name is required when --tasks ('{_TASKS.value}') is not one of {', '.join(TASK_SETS)}")
    settings = CollectionSettings(
        tasks=tuple(resolve_tasks(_TASKS.value)),
        episodes_per_task=_EPISODES.value,
        image_size=_IMAGE_SIZE.value,
        primary_camera=_PRIMARY_CAMERA.value,
        wrist_camera=_WRIST_CAMERA.value,
        action_noise=_ACTION_NOISE.value,
        only_successes=not _KEEP_FAILURES.value,
        max_attempts=_MAX_ATTEMPTS.value,
        max_episode_steps=_MAX_STEPS.value,
        seed=_SEED.value,
    )
    path, counts = build(_DATA_DIR.value, name, settings, val_fraction=_VAL_FRACTION.value, workers=_WORKERS.value)
    print(json.dumps({"dataset": f"metaworld/{name}", "path": path, **counts}))


if __name__ == "__main__":
    run_cli(main, interrupted_line="interrupted; finished episodes are kept, the same command resumes")
