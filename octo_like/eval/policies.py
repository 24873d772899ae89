"""What evaluation can drive: a trained checkpoint, the Meta-World scripted expert, a random policy.

Every policy has the same interface, so the rollout code never asks which one it runs:

    policy.window_size      observations per call (the HistoryWrapper window T)
    policy.action_horizon   actions per predicted chunk (H)
    policy.cameras          camera names whose images it reads ("primary", "wrist"); () for none
    policy.reset(task, instruction)                       at every episode start
    policy(observation_window, rng) -> actions_HA         unnormalized env actions, float32 [H, A]

`observation_window` is what HistoryWrapper returns: every key with a leading T axis, plus
`timestep_pad_mask` and `timestep`. Policies are built from specs (octo_like.utils.spec), so that
evaluation workers in other processes can build their own copy.
"""

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from octo_like.eval.envs.metaworld_tasks import ENV_PROPRIO_KEYS, resolve_tasks
from octo_like.utils.errors import InputError

METAWORLD_ACTION_DIM = 4
# frame_transforms.IMAGE_RESIZE_METHOD (not imported: that module loads TensorFlow); a test checks they agree.
IMAGE_RESIZE_METHOD = "lanczos3"


class Policy(Protocol):
    window_size: int
    action_horizon: int
    cameras: tuple[str, ...]

    def reset(self, task: str, instruction: str) -> None: ...

    def __call__(self, observation_window: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray: ...


class ScriptedPolicy:
    """Meta-World's hand-written expert for the episode's task; reads the full 39-d state."""

    window_size = 1
    action_horizon = 1
    cameras = ()

    def __init__(self):
        self._expert = None

    def reset(self, task: str, instruction: str) -> None:
        del instruction  # the expert is task-specific and ignores language
        from octo_like.eval.envs.metaworld import ENV_POLICY_MAP  # imports mujoco: only where episodes run

        (task,) = resolve_tasks([task])
        self._expert = ENV_POLICY_MAP[task]()

    def __call__(self, observation_window, rng):
        del rng
        state_39 = observation_window["state"][-1]
        return np.clip(np.asarray(self._expert.get_action(state_39), np.float32), -1.0, 1.0)[None]


class RandomPolicy:
    """Uniform actions in [-1, 1]: the floor every learned policy must clear."""

    window_size = 1
    cameras = ()

    def __init__(self, action_dim: int = METAWORLD_ACTION_DIM, action_horizon: int = 1):
        self.action_dim = action_dim
        self.action_horizon = action_horizon

    def reset(self, task: str, instruction: str) -> None:
        del task, instruction

    def __call__(self, observation_window, rng):
        del observation_window
        return rng.uniform(-1.0, 1.0, (self.action_horizon, self.action_dim)).astype(np.float32)


def resize_like_training(images_NHWC: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """uint8 images resized as the data pipeline resizes them (antialiased Lanczos-3), without TF.

    TensorFlow cannot be loaded where MuJoCo renders (see octo_like.utils.parallel), so this is
    jax.image.resize, which implements the same scale-and-translate kernel: it matches the
    pipeline's `frame_transforms.resize_images` to within 1 on a few pixels in 100,000 (tested).
    """
    import jax
    import jax.numpy as jnp

    if tuple(images_NHWC.shape[1:3]) == tuple(size):
        return np.asarray(images_NHWC)
    resized = jax.image.resize(
        jnp.asarray(images_NHWC, jnp.float32),
        (images_NHWC.shape[0], *size, images_NHWC.shape[3]),
        method=IMAGE_RESIZE_METHOD,
        antialias=True,
    )
    return np.asarray(jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8))


class CheckpointPolicy:
    """A trained policy model: language task, history window in, action chunk of the last step out.

    `model` is what `PolicyModel.load_pretrained(run_dir)` returns: it has `example_batch` (the
    batch contract, which fixes cameras, image sizes, window and chunk shapes), `dataset_statistics`
    ({dataset name: statistics}), `create_tasks(texts=...)` and `sample_actions(observation, task,
    *, rng, unnormalization_statistics)` returning normalized-then-unnormalized actions [B, H, A].
    Proprio is normalized here exactly as the data pipeline normalized it for training: the
    statistics carry the normalization type and mask (`octo_like.utils.normalization.with_normalization_settings`).
    `proprio_key` is the environment observation the checkpoint's proprio was recorded from
    (`env_proprio_key` reads it from the release's statistics).
    """

    def __init__(self, model: Any, *, dataset_name: str | None = None, proprio_key: str = "proprio"):
        self.model = model
        self.proprio_key = proprio_key
        example_observation = model.example_batch["observation"]
        from octo_like.policy.release import image_sizes  # orbax: only where a checkpoint runs

        self.image_sizes = image_sizes(model.example_batch)
        self.cameras = tuple(self.image_sizes)
        self.window_size = example_observation["timestep_pad_mask"].shape[1]
        _, _, self.action_horizon, self.action_dim = model.example_batch["action"].shape
        names = sorted(model.dataset_statistics)
        if dataset_name is None and len(names) != 1:
            raise InputError(
                f"the checkpoint was trained on several datasets ({', '.join(names)}); expected --dataset_name "
                "to pick whose action statistics to use"
            )
        self.dataset_name = dataset_name or names[0]
        if self.dataset_name not in model.dataset_statistics:
            raise InputError(
                f"dataset_name '{self.dataset_name}' has no statistics in the checkpoint; "
                f"expected one of {', '.join(names)}"
            )
        self.statistics = model.dataset_statistics[self.dataset_name]
        self._task = self._cache = None
        self.sampling = {}  # options of `sample_actions` (e.g. Euler steps), the same for every call
        # Reuse the task's and the earlier frames' keys and values within an episode (the actions
        # equal the uncached ones to float32 rounding); off recomputes the whole window each call.
        self.use_cache = True

    def check_fits(self, env_cameras: Sequence[str], action_dim: int) -> None:
        """One clear error when the environment cannot feed this checkpoint or run its actions."""
        if self.action_dim != action_dim:
            raise InputError(
                f"the checkpoint predicts {self.action_dim}-d actions; the environment expects {action_dim}-d actions"
            )
        missing = sorted(set(self.cameras) - set(env_cameras))
        if missing:
            raise InputError(f"the checkpoint reads camera(s) {missing}; the environment renders {sorted(env_cameras)}")

    def reset(self, task: str, instruction: str) -> None:
        del task
        self._task = self.model.create_tasks(texts=[instruction])
        self._cache = self.new_cache(self._task)

    def new_cache(self, task: Mapping):
        """An episode cache of `task` (octo_like/policy/episode_cache.py), or None where the model
        has none or `use_cache` is off."""
        return self.model.episode_cache(task) if self.use_cache else None

    def model_observation(self, observation_window) -> dict:
        """An environment observation window -> the model's batch of one: images resized as in
        training, the proprio read from `proprio_key` and normalized, pad masks."""
        from octo_like.utils.normalization import normalize

        observation = {
            "timestep_pad_mask": observation_window["timestep_pad_mask"][None],
            "timestep": observation_window["timestep"][None],
        }
        for camera, size in self.image_sizes.items():
            observation[f"image_{camera}"] = resize_like_training(observation_window[f"image_{camera}"], size)[None]
        if "proprio" in self.model.example_batch["observation"]:
            stats = self.statistics["proprio"]
            mask = stats.get("mask")
            observation["proprio"] = normalize(
                observation_window[self.proprio_key],
                stats,
                str(stats.get("normalization_type", "normal")),
                None if mask is None else np.asarray(mask, bool),
            ).astype(np.float32)[None]
        observation["pad_mask_dict"] = {
            key: np.ones_like(observation["timestep_pad_mask"])
            for key in observation
            if key.startswith(("image_", "proprio"))
        }
        return observation

    def __call__(self, observation_window, rng):
        return self.sample(observation_window, int(rng.integers(2**31)))

    def sample(self, observation_window, seed: int, task: Mapping | None = None, cache=None) -> np.ndarray:
        """The unnormalized chunk [H, A] for `task` (default: the episode's, from `reset`, with its
        cache) with the sampling key of `seed`: what `__call__` draws from its generator, and what a
        client of the policy server sends, so both give the same actions. `cache` is `task`'s
        episode cache (`new_cache(task)`), if any."""
        import jax

        if task is None:
            task, cache = self._task, self._cache
        actions_BHA = self.model.sample_actions(
            self.model_observation(observation_window),
            task,
            rng=jax.random.key(seed),
            unnormalization_statistics=self.statistics["action"],
            **({} if cache is None else {"cache": cache}),
            **self.sampling,
        )
        return np.asarray(actions_BHA[0], np.float32)


DEFAULT_RENDER_SIZE = 128


def render_size_of_release(run_dir: str) -> int:
    """The size to render cameras at for a release: its largest input image, so the primary camera
    is rendered at the size it was trained on rather than rendered larger and resized down."""
    from octo_like.policy.release import image_sizes, read_example_batch

    sizes = image_sizes(read_example_batch(run_dir)).values()
    return max((max(size) for size in sizes), default=DEFAULT_RENDER_SIZE)


def env_proprio_key(statistics: Mapping) -> str:
    """The Meta-World observation key that feeds a release's proprio: its dataset statistics name
    the dataset observation it was read from (`proprio.obs_key`, e.g. "full_state" for the 39-d
    state; releases without one read the hand proprio)."""
    dataset_key = str(statistics.get("proprio", {}).get("obs_key", "proprio"))
    if dataset_key not in ENV_PROPRIO_KEYS:
        raise InputError(
            f"the checkpoint's proprio was read from the dataset key '{dataset_key}'; "
            f"a Meta-World environment provides one of {', '.join(ENV_PROPRIO_KEYS)}"
        )
    return ENV_PROPRIO_KEYS[dataset_key]


def policy_from_model(model: Any, dataset_name: str | None = None) -> CheckpointPolicy:
    """The CheckpointPolicy of a loaded release (`PolicyModel.load_pretrained`), reading its proprio
    from the observation the release's dataset recorded it from."""
    policy = CheckpointPolicy(model, dataset_name=dataset_name)
    policy.proprio_key = env_proprio_key(policy.statistics)
    return policy


def load_checkpoint_policy(run_dir: str, step: int | None = None, dataset_name: str | None = None) -> CheckpointPolicy:
    """The CheckpointPolicy of a run directory (the release format of `PolicyModel.save_pretrained`)."""
    from octo_like.policy.model import PolicyModel

    return policy_from_model(PolicyModel.load_pretrained(run_dir, step=step), dataset_name)
