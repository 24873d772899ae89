"""A small RLDS dataset with known structure, written by a real TFDS builder.

Every value is a function of (episode index, step index), so tests can check the pipeline value by
value and the demo job has something real to read:

- ``steps/observation/image``: 64x64 RGB PNG, every pixel ``(step * 8) % 256`` in the red channel,
  ``episode % 256`` in green, a 8x8 white square whose column moves with the step (visible structure).
- ``steps/observation/wrist_image``: 32x32 RGB PNG, red ``(step * 8) % 256``, blue 255.
  Absent in the ``no_wrist`` config, which also has a 2-d instead of a 7-d action and 3-d proprio.
- ``steps/observation/state``: float32 [proprio_dim], ``state[0] = step``, ``state[1] = episode``,
  the rest ``sin(step + d)``.
- ``steps/action``: float32 [action_dim], ``action[0] = step``, ``action[1] = episode``, the rest
  ``cos(step * d)``; the last dimension is a gripper in {0, 1} (``step`` parity).
- ``steps/language_instruction``: one of a few instructions per episode; every 7th episode has an
  empty instruction (an unlabeled episode).
- ``steps/reward``, ``is_first``, ``is_last``, ``is_terminal``; ``episode_metadata/episode_id``.

Episode lengths cycle through ``min_length..max_length``. Build it with
``python -m data_pipelines.synthetic.build --data_dir DIR``.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.rlds_features import standard_step_features
from octo_like.utils.errors import InputError

INSTRUCTIONS = (
    "pick up the red block",
    "push the button",
    "open the drawer",
    "move the arm to the left",
)


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    num_episodes: int = 24
    min_length: int = 6
    max_length: int = 18
    action_dim: int = 7
    proprio_dim: int = 8
    with_wrist: bool = True


def episode_length(config: SyntheticConfig, episode: int) -> int:
    span = config.max_length - config.min_length + 1
    return config.min_length + (episode * 5) % span


def instruction(episode: int) -> str:
    return "" if episode % 7 == 6 else INSTRUCTIONS[episode % len(INSTRUCTIONS)]


def state_at(config: SyntheticConfig, episode: int, step: int) -> np.ndarray:
    dims = np.arange(config.proprio_dim)
    state = np.sin(step + dims).astype(np.float32)
    state[0], state[1] = step, episode
    return state


def action_at(config: SyntheticConfig, episode: int, step: int) -> np.ndarray:
    dims = np.arange(config.action_dim)
    action = np.cos(step * dims).astype(np.float32)
    action[0], action[1] = step, episode
    action[-1] = step % 2
    return action


def primary_image(episode: int, step: int) -> np.ndarray:
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = (step * 8) % 256
    image[..., 1] = episode % 256
    column = (step * 3) % 56
    image[28:36, column : column + 8] = 255
    return image


def wrist_image(step: int) -> np.ndarray:
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 0] = (step * 8) % 256
    image[..., 2] = 255
    return image


class SyntheticRlds(tfds.core.GeneratorBasedBuilder):
    """Synthetic RLDS episodes; see the module docstring for the exact values."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        SyntheticConfig(name="default", description="two cameras, 8-d state, 7-d action"),
        SyntheticConfig(
            name="no_wrist",
            description="one camera, 3-d state, 2-d action",
            num_episodes=16,
            action_dim=2,
            proprio_dim=3,
            with_wrist=False,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        # Builders defined outside a TFDS package build their info directly: the metadata-driven
        # `dataset_info_from_configs` looks for package files that do not exist here.
        config = self.builder_config
        observation = {
            "image": tfds.features.Image(shape=(64, 64, 3), encoding_format="png"),
            "state": tfds.features.Tensor(shape=(config.proprio_dim,), dtype=np.float32),
        }
        if config.with_wrist:
            observation["wrist_image"] = tfds.features.Image(shape=(32, 32, 3), encoding_format="png")
        features = tfds.features.FeaturesDict(
            {
                "steps": tfds.features.Dataset(
                    {
                        "observation": tfds.features.FeaturesDict(observation),
                        "action": tfds.features.Tensor(shape=(config.action_dim,), dtype=np.float32),
                        **standard_step_features(),
                    }
                ),
                "episode_metadata": tfds.features.FeaturesDict({"episode_id": tfds.features.Scalar(dtype=np.int32)}),
            }
        )
        return tfds.core.DatasetInfo(builder=self, description=__doc__, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: every value is generated
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        config = self.builder_config
        for episode in range(config.num_episodes):
            length = episode_length(config, episode)
            steps = []
            for step in range(length):
                observation = {"image": primary_image(episode, step), "state": state_at(config, episode, step)}
                if config.with_wrist:
                    observation["wrist_image"] = wrist_image(step)
                steps.append(
                    {
                        "observation": observation,
                        "action": action_at(config, episode, step),
                        "reward": float(step == length - 1),
                        "discount": 1.0,
                        "is_first": step == 0,
                        "is_last": step == length - 1,
                        "is_terminal": step == length - 1,
                        "language_instruction": instruction(episode),
                    }
                )
            yield f"episode_{episode}", {"steps": steps, "episode_metadata": {"episode_id": episode}}


def build(data_dir: str, configs: list[str]) -> list[str]:
    """Builds each config (skipping finished ones); returns the dataset version directories."""
    valid = [config.name for config in SyntheticRlds.BUILDER_CONFIGS]
    unknown = [config for config in configs if config not in valid]
    if unknown:
        raise InputError(f"unknown synthetic config(s) {unknown}; expected some of {valid}")
    paths = []
    for config in configs:
        builder = SyntheticRlds(config=config, data_dir=data_dir)
        builder.download_and_prepare(file_format="tfrecord")
        paths.append(builder.data_dir)
    return paths
