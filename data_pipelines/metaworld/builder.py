"""The `metaworld` TFDS RLDS dataset: scripted-expert episodes collected by `collect.py`.

Each builder config is one collection (a name such as `mt10`, its tasks, episodes per task, image
size, action noise). Per step:

- `observation/image`: the third-person camera (`corner` by default), PNG, S x S x 3
- `observation/wrist_image`: the gripper camera (`gripperPOV`), PNG, S x S x 3
- `observation/proprio`: float32[4], end-effector xyz and gripper opening
- `observation/full_state`: float32[39], Meta-World's whole observation
- `action`: float32[4], the expert's action clipped to [-1, 1] (the label)
- `executed_action`: float32[4], what ran in the simulator (the label plus noise, when collected
  with action noise)
- `reward`, `discount`, `is_first`, `is_last`, `is_terminal` (True on the last step of a
  successful episode), `language_instruction` (one of the task's training paraphrases, see
  `octo_like.eval.envs.metaworld_tasks` for the declared paraphrase and task splits)

`episode_metadata`: task, episode_index, attempt, seed, variation, success.

Splits: `train`, and `val` holding the last `val_fraction` of every task's episode indices, so both
splits cover every task. `build()` collects and writes it; the CLI is
`python -m data_pipelines.metaworld.build`.
"""

import dataclasses
import glob
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from data_pipelines.metaworld.collect import CollectionSettings, collect, load_episode
from data_pipelines.rlds_features import standard_step_features
from octo_like.utils.errors import InputError

DATASET_VERSION = "1.0.0"


@dataclasses.dataclass
class MetaworldConfig(tfds.core.BuilderConfig):
    episodes_dir: str = ""
    settings: CollectionSettings | None = None
    val_fraction: float = 0.1


def val_indices(episodes_per_task: int, val_fraction: float) -> range:
    """The episode indices of every task that go to the val split (none when there is one episode)."""
    num_val = int(round(episodes_per_task * val_fraction))
    num_val = min(max(num_val, 1 if val_fraction > 0 else 0), episodes_per_task - 1)
    return range(episodes_per_task - num_val, episodes_per_task)


class Metaworld(tfds.core.GeneratorBasedBuilder):
    """Meta-World scripted demonstrations; see the module docstring."""

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "Scripted experts, two cameras, proprio, full state, paraphrased instructions."}

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly: `dataset_info_from_configs` expects TFDS package metadata files.
        size = self.builder_config.settings.image_size
        image = tfds.features.Image(shape=(size, size, 3), encoding_format="png")
        vector = lambda dim: tfds.features.Tensor(shape=(dim,), dtype=np.float32)  # noqa: E731
        features = tfds.features.FeaturesDict(
            {
                "steps": tfds.features.Dataset(
                    {
                        "observation": tfds.features.FeaturesDict(
                            {"image": image, "wrist_image": image, "proprio": vector(4), "full_state": vector(39)}
                        ),
                        "action": vector(4),
                        "executed_action": vector(4),
                        **standard_step_features(),
                    }
                ),
                "episode_metadata": tfds.features.FeaturesDict(
                    {
                        "task": tfds.features.Text(),
                        "episode_index": tfds.features.Scalar(dtype=np.int32),
                        "attempt": tfds.features.Scalar(dtype=np.int32),
                        "seed": tfds.features.Scalar(dtype=np.int64),
                        "variation": tfds.features.Scalar(dtype=np.int32),
                        "success": tfds.features.Scalar(dtype=np.bool_),
                    }
                ),
            }
        )
        return tfds.core.DatasetInfo(builder=self, description=__doc__, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager  # the episodes were collected locally by collect.py
        config = self.builder_config
        val = set(val_indices(config.settings.episodes_per_task, config.val_fraction))
        paths = sorted(glob.glob(os.path.join(config.episodes_dir, "*", "episode_*.npz")))
        is_val = [int(os.path.basename(path)[len("episode_") : -len(".npz")]) in val for path in paths]
        splits = {"train": self._generate_examples([p for p, v in zip(paths, is_val) if not v])}
        if any(is_val):
            splits["val"] = self._generate_examples([p for p, v in zip(paths, is_val) if v])
        return splits

    def _generate_examples(self, paths: list[str]):
        for path in paths:
            steps, metadata = load_episode(path)
            length = len(steps["action"])
            last = np.arange(length) == length - 1
            yield (
                f"{metadata['task']}/{metadata['index']}",
                {
                    "steps": {
                        "observation": {
                            "image": steps["image_primary"],
                            "wrist_image": steps["image_wrist"],
                            "proprio": steps["proprio"],
                            "full_state": steps["state"],
                        },
                        "action": steps["action"],
                        "executed_action": steps["executed_action"],
                        "reward": steps["reward"],
                        "discount": np.ones(length, np.float32),
                        "is_first": np.arange(length) == 0,
                        "is_last": last,
                        "is_terminal": last & metadata["success"],
                        "language_instruction": [metadata["instruction"]] * length,
                    },
                    "episode_metadata": {
                        "task": metadata["task"],
                        "episode_index": metadata["index"],
                        "attempt": metadata["attempt"],
                        "seed": metadata["seed"],
                        "variation": metadata["variation"],
                        "success": metadata["success"],
                    },
                },
            )


def build(
    data_dir: str, name: str, settings: CollectionSettings, *, val_fraction: float = 0.1, workers: int | None = None
) -> tuple[str, dict]:
    """Collects what is missing, then writes the dataset; returns (version directory, counts)."""
    if not re.fullmatch(r"[\w\-.]+", name):
        raise InputError(f"dataset name '{name}' has characters TFDS does not allow; expected letters, digits, _ - .")
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction={val_fraction}; expected a fraction in [0, 1)")
    episodes_dir = os.path.join(data_dir, "downloads", "metaworld", name)
    counts = collect(settings, episodes_dir, num_workers=workers)
    if counts["episodes"] == 0:
        raise InputError(f"no episode of {list(settings.tasks)} succeeded; see the failure records in '{episodes_dir}'")
    config = MetaworldConfig(
        name=name,
        description=f"{settings.episodes_per_task} scripted episodes of each of {len(settings.tasks)} tasks",
        episodes_dir=episodes_dir,
        settings=settings,
        val_fraction=val_fraction,
    )
    # Every collection is its own config, which TFDS announces with the whole config dataclass as
    # a warning ("Using custom data configuration"); that line says nothing the user did not ask for.
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        builder = Metaworld(config=config, data_dir=data_dir)
    finally:
        logging.set_verbosity(verbosity)
    builder.download_and_prepare(file_format="tfrecord")
    return builder.data_dir, counts
