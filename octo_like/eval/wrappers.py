"""Gymnasium wrappers that turn a one-step environment into one a chunking, windowed policy can drive.

    env = MetaWorldEnv("drawer-open-v3")
    env = RecordFramesWrapper(env)                 # a video frame per env step
    env = HistoryWrapper(env, window_size=2)       # observations become windows [T, ...]
    env = RHCWrapper(env, exec_horizon=4)          # or TemporalEnsembleWrapper(env, pred_horizon=4)
    observation_window, info = env.reset(seed=0)
    observation_window, reward, terminated, truncated, info = env.step(actions_HA)

Why this order, from the inside out:
- RecordFramesWrapper sits directly on the env, so it sees single observations and records every
  env step, including the ones an action chunk runs inside RHCWrapper.
- HistoryWrapper sits under the chunk wrappers, so its window holds consecutive env steps even
  when one outer call runs several of them; the window it returns is what the model consumes next.
- RHCWrapper or TemporalEnsembleWrapper is outermost: each takes the model's whole chunk [H, A]
  and decides which single actions reach the env. Use one of the two, not both: the ensemble needs
  a fresh chunk every env step, receding horizon control runs several steps per chunk.

Gymnasium >= 1.0 no longer forwards attributes through wrappers: read the recorded video from the
outermost wrapper with `env.get_wrapper_attr("frames")`.
"""

import collections

import gymnasium as gym
import numpy as np

from octo_like.utils.errors import InputError


def _resize_height_nearest(image_HWC: np.ndarray, height: int) -> np.ndarray:
    """Nearest-neighbour resize to `height`, keeping the aspect ratio."""
    old_height, old_width = image_HWC.shape[:2]
    width = max(1, round(old_width * height / old_height))
    rows = np.arange(height) * old_height // height
    cols = np.arange(width) * old_width // width
    return image_HWC[rows[:, None], cols[None, :]]


class RecordFramesWrapper(gym.Wrapper):
    """Keeps one video frame per observation of the current episode: its images side by side."""

    def __init__(self, env: gym.Env, image_keys: list[str] | None = None):
        super().__init__(env)
        self.image_keys = None if image_keys is None else list(image_keys)
        self._frames = []

    @property
    def frames(self) -> list[np.ndarray]:
        """uint8[H, W_total, 3] frames, from the reset observation to the latest step."""
        return self._frames

    def _frame(self, observation: dict) -> np.ndarray:
        keys = self.image_keys or [key for key in observation if key.startswith("image_")]
        missing = [key for key in keys if key not in observation]
        if missing or not keys:
            raise InputError(
                f"RecordFramesWrapper: image keys {missing or keys} not in observation keys {sorted(observation)}; "
                "expected at least one image key present in every observation"
            )
        images = [np.asarray(observation[key]) for key in keys]
        height = images[0].shape[0]
        images = [image if image.shape[0] == height else _resize_height_nearest(image, height) for image in images]
        return np.concatenate(images, axis=1)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        observation, info = self.env.reset(seed=seed, options=options)
        self._frames = [self._frame(observation)]
        return observation, info

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._frames.append(self._frame(observation))
        return observation, reward, terminated, truncated, info


class HistoryWrapper(gym.Wrapper):
    """Observations become windows of the last `window_size` ones, stacked on a leading T axis.

    At the episode start the window is padded by repeating the first observation; `timestep_pad_mask`
    bool[T] is False on those entries and `timestep` int32[T] holds each entry's env step (0 if padded),
    as in the batch the model was trained on.
    """

    def __init__(self, env: gym.Env, window_size: int):
        super().__init__(env)
        if window_size < 1:
            raise InputError(f"HistoryWrapper: window_size={window_size}; expected an integer >= 1")
        space = env.observation_space
        if not isinstance(space, gym.spaces.Dict) or not all(isinstance(s, gym.spaces.Box) for s in space.values()):
            raise InputError(f"HistoryWrapper: observation_space is {space}; expected a gymnasium Dict of Box spaces")
        self.window_size = window_size
        windowed = {
            key: gym.spaces.Box(
                np.repeat(box.low[None], window_size, axis=0),
                np.repeat(box.high[None], window_size, axis=0),
                (window_size, *box.shape),
                box.dtype,
            )
            for key, box in space.items()
        }
        windowed["timestep_pad_mask"] = gym.spaces.Box(0, 1, (window_size,), bool)
        windowed["timestep"] = gym.spaces.Box(0, np.iinfo(np.int32).max, (window_size,), np.int32)
        self.observation_space = gym.spaces.Dict(windowed)
        self._history = collections.deque(maxlen=window_size)
        self._num_observations = 0

    def _window(self) -> dict[str, np.ndarray]:
        window = {key: np.stack([obs[key] for obs in self._history]) for key in self._history[0]}
        # Env step of each entry; negative steps are the padding before the episode start.
        steps_T = np.arange(self._num_observations - self.window_size, self._num_observations)
        window["timestep_pad_mask"] = steps_T >= 0
        window["timestep"] = np.maximum(steps_T, 0).astype(np.int32)
        return window

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        observation, info = self.env.reset(seed=seed, options=options)
        self._history.extend([observation] * self.window_size)
        self._num_observations = 1
        return self._window(), info

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._history.append(observation)
        self._num_observations += 1
        return self._window(), reward, terminated, truncated, info


class RHCWrapper(gym.Wrapper):
    """Receding horizon control: each step runs the first `exec_horizon` actions of a chunk [H, A].

    The chunk stops early when the episode ends; the step returns the last observation, the summed
    reward and the last info with "num_steps", the number of env steps that ran.
    """

    def __init__(self, env: gym.Env, exec_horizon: int):
        super().__init__(env)
        if exec_horizon < 1:
            raise InputError(f"RHCWrapper: exec_horizon={exec_horizon}; expected an integer >= 1")
        self.exec_horizon = exec_horizon

    def step(self, actions_HA):
        actions_HA = np.asarray(actions_HA)
        if actions_HA.ndim != 2 or len(actions_HA) < self.exec_horizon:
            raise InputError(
                f"RHCWrapper.step: action chunk of shape {actions_HA.shape}; "
                f"expected [H, A] with H >= exec_horizon == {self.exec_horizon}"
            )
        total_reward = 0.0
        for num_steps, action_A in enumerate(actions_HA[: self.exec_horizon], start=1):
            observation, reward, terminated, truncated, info = self.env.step(action_A)
            total_reward += float(reward)
            if terminated or truncated:
                break
        return observation, total_reward, terminated, truncated, {**info, "num_steps": num_steps}


class TemporalEnsembleWrapper(gym.Wrapper):
    """ACT-style temporal ensembling: one env step per chunk [pred_horizon, A], averaging overlapping chunks.

    The action executed now averages the predictions for this step from the last `pred_horizon`
    chunks (the chunk issued k steps ago contributes its action k), weighted exp(-exp_weight * i)
    with i = 0 for the oldest prediction: a positive exp_weight favours older predictions, which
    smooths the motion (the choice of ACT and Octo).
    """

    def __init__(self, env: gym.Env, pred_horizon: int, exp_weight: float = 0.0):
        super().__init__(env)
        if pred_horizon < 1:
            raise InputError(f"TemporalEnsembleWrapper: pred_horizon={pred_horizon}; expected an integer >= 1")
        self.pred_horizon = pred_horizon
        self.exp_weight = exp_weight
        self._chunks = collections.deque(maxlen=pred_horizon)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._chunks.clear()
        return self.env.reset(seed=seed, options=options)

    def step(self, actions_HA):
        actions_HA = np.asarray(actions_HA)
        if actions_HA.ndim != 2 or len(actions_HA) != self.pred_horizon:
            raise InputError(
                f"TemporalEnsembleWrapper.step: action chunk of shape {actions_HA.shape}; "
                f"expected [H, A] with H == pred_horizon == {self.pred_horizon}"
            )
        self._chunks.append(actions_HA)
        num_chunks = len(self._chunks)
        # Oldest chunk first: it was issued num_chunks - 1 steps ago, so its action for now has that index.
        predictions_KA = np.stack([chunk[num_chunks - 1 - k] for k, chunk in enumerate(self._chunks)])
        weights_K = np.exp(-self.exp_weight * np.arange(num_chunks))
        # The float64 weights would upcast the action; env action spaces are float32.
        action_A = np.einsum("k,ka->a", weights_K / weights_K.sum(), predictions_KA).astype(np.float32)
        return self.env.step(action_A)
