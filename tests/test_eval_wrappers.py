import gymnasium as gym
import numpy as np
import pytest

from octo_like.eval.wrappers import HistoryWrapper, RecordFramesWrapper, RHCWrapper, TemporalEnsembleWrapper
from octo_like.utils.errors import InputError

ACTION_DIM = 2
WRIST_PATTERN_HW = np.array([[0, 1], [2, 3]], np.uint8)


class CountingEnv(gym.Env):
    """Every observation encodes how many steps ran; the reward of step n is n; actions are recorded."""

    def __init__(self, terminate_at: int = 100):
        self.terminate_at = terminate_at
        self.observation_space = gym.spaces.Dict(
            {
                "image_primary": gym.spaces.Box(0, 255, (4, 6, 3), np.uint8),
                "image_wrist": gym.spaces.Box(0, 255, (2, 2, 3), np.uint8),
                "proprio": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (ACTION_DIM,), np.float32)
        self.actions = []
        self.num_steps = 0

    def _observation(self) -> dict[str, np.ndarray]:
        wrist_HW = WRIST_PATTERN_HW + 10 * self.num_steps
        return {
            "image_primary": np.full((4, 6, 3), self.num_steps, np.uint8),
            "image_wrist": np.repeat(wrist_HW[..., None], 3, axis=-1),
            "proprio": np.array([self.num_steps], np.float32),
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.num_steps, self.actions = 0, []
        return self._observation(), {}

    def step(self, action):
        self.actions.append(np.asarray(action))
        self.num_steps += 1
        terminated = self.num_steps >= self.terminate_at
        return self._observation(), float(self.num_steps), terminated, False, {"success": terminated}


def test_history_pads_at_episode_start_then_slides():
    env = HistoryWrapper(CountingEnv(), window_size=3)
    expected_windows = [  # (steps held in the window, pad mask, timestep) after 0, 1, ..., 4 env steps
        ([0, 0, 0], [False, False, True], [0, 0, 0]),
        ([0, 0, 1], [False, True, True], [0, 0, 1]),
        ([0, 1, 2], [True, True, True], [0, 1, 2]),
        ([1, 2, 3], [True, True, True], [1, 2, 3]),
        ([2, 3, 4], [True, True, True], [2, 3, 4]),
    ]
    for episode in range(2):  # the second episode checks that reset starts a fresh window
        observation, _ = env.reset(seed=episode)
        for num_steps, (steps, pad_mask, timestep) in enumerate(expected_windows):
            if num_steps:
                observation, *_ = env.step(np.zeros(ACTION_DIM, np.float32))
            assert env.observation_space.contains(observation)
            np.testing.assert_array_equal(observation["proprio"][:, 0], steps)
            np.testing.assert_array_equal(observation["image_primary"][:, 0, 0, 0], steps)
            np.testing.assert_array_equal(observation["timestep_pad_mask"], pad_mask)
            np.testing.assert_array_equal(observation["timestep"], timestep)
            assert observation["timestep_pad_mask"].dtype == bool and observation["timestep"].dtype == np.int32
    assert env.observation_space["image_wrist"].shape == (3, 2, 2, 3)
    assert env.observation_space["timestep"].shape == (3,)


def test_rhc_executes_exec_horizon_actions_and_sums_rewards():
    base = CountingEnv()
    env = RHCWrapper(HistoryWrapper(base, window_size=2), exec_horizon=3)
    env.reset(seed=0)
    actions_HA = np.arange(10, dtype=np.float32).reshape(5, ACTION_DIM)
    observation, reward, terminated, truncated, info = env.step(actions_HA)
    np.testing.assert_array_equal(base.actions, actions_HA[:3])
    assert (reward, terminated, truncated, info["num_steps"]) == (1 + 2 + 3, False, False, 3)
    np.testing.assert_array_equal(observation["timestep"], [2, 3])  # the window holds the steps inside the chunk

    _, reward, *_ = env.step(actions_HA + 100)
    np.testing.assert_array_equal(base.actions[3:], actions_HA[:3] + 100)
    assert reward == 4 + 5 + 6


def test_rhc_stops_early_when_the_episode_ends():
    base = CountingEnv(terminate_at=2)
    env = RHCWrapper(base, exec_horizon=4)
    env.reset(seed=0)
    observation, reward, terminated, truncated, info = env.step(np.ones((4, ACTION_DIM), np.float32))
    assert len(base.actions) == 2
    assert (reward, terminated, truncated, info["num_steps"], info["success"]) == (1 + 2, True, False, 2, True)
    assert observation["proprio"][0] == 2


def expected_ensembled_action(chunks_SHA: np.ndarray, step: int, exp_weight: float) -> np.ndarray:
    """Direct formula: chunk s predicts step t at index t - s; weight exp(-w * i), i = 0 for the oldest chunk."""
    pred_horizon = chunks_SHA.shape[1]
    oldest = max(0, step - pred_horizon + 1)
    issued = range(oldest, step + 1)
    weights = np.array([np.exp(-exp_weight * (s - oldest)) for s in issued])
    predictions = np.array([chunks_SHA[s, step - s] for s in issued])
    return (weights[:, None] * predictions).sum(0) / weights.sum()


@pytest.mark.parametrize("exp_weight", [0.0, 0.7])
def test_temporal_ensemble_averages_overlapping_predictions(exp_weight):
    base = CountingEnv()
    env = TemporalEnsembleWrapper(base, pred_horizon=3, exp_weight=exp_weight)
    chunks_SHA = np.random.default_rng(0).normal(size=(6, 3, ACTION_DIM)).astype(np.float32)
    env.reset(seed=0)
    for step, chunk_HA in enumerate(chunks_SHA):
        _, reward, *_ = env.step(chunk_HA)
        assert reward == step + 1  # one env step per chunk
        np.testing.assert_allclose(base.actions[step], expected_ensembled_action(chunks_SHA, step, exp_weight), 1e-6)

    # Step 3 by hand: chunks 1, 2, 3 predict it with their actions 2, 1, 0; chunk 1 is the oldest.
    weights = np.exp(-exp_weight * np.arange(3))
    weighted_sum_A = weights[0] * chunks_SHA[1, 2] + weights[1] * chunks_SHA[2, 1] + weights[2] * chunks_SHA[3, 0]
    np.testing.assert_allclose(base.actions[3], weighted_sum_A / weights.sum(), rtol=1e-6)

    env.reset(seed=1)  # no chunk from the last episode may leak into the next one
    env.step(chunks_SHA[0])
    np.testing.assert_allclose(base.actions[0], chunks_SHA[0, 0])


def test_frames_put_images_side_by_side_and_reset_clears_them():
    env = RecordFramesWrapper(CountingEnv())
    env.reset(seed=0)
    for _ in range(2):
        env.step(np.zeros(ACTION_DIM, np.float32))
    assert len(env.frames) == 3
    for step, frame in enumerate(env.frames):
        assert frame.shape == (4, 6 + 4, 3) and frame.dtype == np.uint8
        assert (frame[:, :6] == step).all()
        # The 2x2 wrist image is scaled to height 4 by nearest neighbour: each pixel becomes a 2x2 block.
        wrist_HW = np.kron(WRIST_PATTERN_HW + 10 * step, np.ones((2, 2), np.uint8))
        np.testing.assert_array_equal(frame[:, 6:], np.repeat(wrist_HW[..., None], 3, axis=-1))
    env.reset(seed=1)
    assert len(env.frames) == 1

    wrist_only = RecordFramesWrapper(CountingEnv(), image_keys=["image_wrist"])
    wrist_only.reset(seed=0)
    assert wrist_only.frames[0].shape == (2, 2, 3)


def test_frames_recorded_for_every_env_step_under_the_full_stack():
    env = RHCWrapper(HistoryWrapper(RecordFramesWrapper(CountingEnv()), window_size=2), exec_horizon=3)
    env.reset(seed=0)
    env.step(np.zeros((4, ACTION_DIM), np.float32))
    frames = env.get_wrapper_attr("frames")
    assert [int(frame[0, 0, 0]) for frame in frames] == [0, 1, 2, 3]


def started(env: gym.Env) -> gym.Env:
    env.reset(seed=0)
    return env


@pytest.mark.parametrize(
    "trigger, message",
    [
        (lambda: HistoryWrapper(CountingEnv(), 0), "window_size=0"),
        (lambda: RHCWrapper(CountingEnv(), 0), "exec_horizon=0"),
        (lambda: TemporalEnsembleWrapper(CountingEnv(), 0), "pred_horizon=0"),
        (lambda: started(RHCWrapper(CountingEnv(), 3)).step(np.zeros((2, 2))), r"\(2, 2\).*H >= exec_horizon == 3"),
        (lambda: started(RHCWrapper(CountingEnv(), 1)).step(np.zeros(ACTION_DIM)), r"shape \(2,\).*\[H, A\]"),
        (lambda: started(TemporalEnsembleWrapper(CountingEnv(), 3)).step(np.zeros((4, 2))), r"shape \(4, 2\).*== 3"),
        (lambda: started(RecordFramesWrapper(CountingEnv(), ["image_side"])), r"\['image_side'\] not in"),
    ],
)
def test_bad_input_raises_input_error(trigger, message):
    with pytest.raises(InputError, match=message):
        trigger()
