"""Inference with an episode cache: over a rollout, the cached actions equal the uncached ones,
and each control step encodes only the frames the cache lacks."""

import jax
import numpy as np
import pytest

from octo_like.eval.wrappers import HistoryWrapper
from octo_like.model.heads import head_spec
from octo_like.model.scratch.observation_tokenizers import GoalImageTokenizer, ImageTokenizer, ProprioTokenizer
from octo_like.policy.model import PolicyModel
from octo_like.utils import spec
from octo_like.utils.errors import InputError

H, A, P, SIZE = 3, 4, 4, 32
STEM = {"features": (8, 16), "num_features": 32, "patch_size": 8}
ROLLOUT_STEPS = 20


def config(history: str, layout: str, head: str, window: int, scan_layers: bool = False) -> dict:
    if layout == "fused_goal":  # Octo's layout: no language, the goal stacked on the frame's channels
        observation = {"primary": spec.create(ImageTokenizer, camera="primary", stem_kwargs=STEM, fuse_goal=True)}
        task, language = {}, None
    else:  # language (FiLM in the stem), a goal image as task tokens, proprio
        observation = {
            "primary": spec.create(ImageTokenizer, camera="primary", stem_kwargs=STEM, use_film=True),
            "proprio": spec.create(ProprioTokenizer, token_dim=16),
        }
        task, language = (
            {"goal": spec.create(GoalImageTokenizer, camera="primary", stem_kwargs=STEM)},
            {"max_length": 8},
        )
    # Scanned layers: two under lax.scan and the last apart.
    transformer = {"num_layers": 3 if scan_layers else 2, "token_dim": 32, "num_heads": 2, "mlp_dim": 64}
    transformer.update(history=history, scan_layers=scan_layers)
    return {
        "model": {
            "observation_tokenizers": observation,
            "task_tokenizers": task,
            "language": language,
            "readouts": {"action": 2},
            "transformer": transformer,
            "heads": {"action": head_spec(head, action_horizon=H, action_dim=A)},
        },
        "dataset": {"dataset_kwargs": {"action_proprio_normalization_type": "normal"}},
        "window": window,
    }


def example_batch(window: int, batch: int = 2) -> dict:
    rng = np.random.default_rng(0)
    return {
        "observation": {
            "image_primary": rng.integers(0, 256, (batch, window, SIZE, SIZE, 3), dtype=np.uint8),
            "proprio": rng.normal(size=(batch, window, P)).astype(np.float32),
            "timestep": np.tile(np.arange(window, dtype=np.int32), (batch, 1)),
            "timestep_pad_mask": np.ones((batch, window), bool),
            "pad_mask_dict": {
                "image_primary": np.ones((batch, window), bool),
                "proprio": np.ones((batch, window), bool),
            },
        },
        "task": {
            "language_instruction": {
                "input_ids": rng.integers(1000, 2000, (batch, 8)).astype(np.int32),
                "attention_mask": np.ones((batch, 8), np.int32),
            },
            "image_primary": rng.integers(0, 256, (batch, SIZE, SIZE, 3), dtype=np.uint8),
            "pad_mask_dict": {"language_instruction": np.ones(batch, bool), "image_primary": np.ones(batch, bool)},
        },
        "action": rng.normal(size=(batch, window, H, A)).astype(np.float32),
        "action_pad_mask": np.ones((batch, window, H, A), bool),
        "dataset_name": np.array([b"toy"] * batch, dtype=object),
    }


def make_model(history="readout", layout="language_goal", head="diffusion", window=2, scan_layers=False) -> PolicyModel:
    run_config = config(history, layout, head, window, scan_layers)
    statistics = {
        "toy": {"action": {"mean": np.zeros(A), "std": np.ones(A)}, "proprio": {"mean": np.zeros(P), "std": np.ones(P)}}
    }
    return PolicyModel.create(run_config, example_batch(window), statistics, jax.random.key(0))


class _FrameStream:
    """A gymnasium-like environment whose observations are random frames, for HistoryWrapper."""

    def __init__(self):
        import gymnasium as gym

        self.observation_space = gym.spaces.Dict(
            {
                "image_primary": gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8),
                "proprio": gym.spaces.Box(-np.inf, np.inf, (P,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1, 1, (A,), np.float32)
        self._rng = np.random.default_rng(1)

    def _observation(self):
        return {
            "image_primary": self._rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
            "proprio": self._rng.normal(size=P).astype(np.float32),
        }

    def reset(self, *, seed=None, options=None):
        return self._observation(), {}

    def step(self, action):
        return self._observation(), 0.0, False, False, {}


def rollout_windows(window: int, steps: int):
    """The observation windows of a rollout, as HistoryWrapper gives them (padded at the start)."""
    import gymnasium as gym

    class Env(gym.Env):
        def __init__(self):
            stream = _FrameStream()
            self.observation_space, self.action_space = stream.observation_space, stream.action_space
            self.reset, self.step = stream.reset, stream.step

    env = HistoryWrapper(Env(), window)
    observation, _ = env.reset()
    windows = [observation]
    for _ in range(steps - 1):
        observation, *_ = env.step(np.zeros(A, np.float32))
        windows.append(observation)
    return windows


def model_observation(window_observation: dict) -> dict:
    observation = {key: value[None] for key, value in window_observation.items()}
    observation["pad_mask_dict"] = {
        key: np.ones_like(observation["timestep_pad_mask"]) for key in ("image_primary", "proprio")
    }
    return observation


# (history, layout, head, window, every, scan_layers): the policy asked at every environment step,
# or at every other one (receding horizon control: the frame between two calls was never seen).
CASES = [
    ("readout", "language_goal", "flow", 2, 1, False),
    ("causal", "language_goal", "l1", 2, 1, True),
    ("readout", "language_goal", "diffusion", 2, 2, False),
    ("readout", "fused_goal", "flow", 3, 1, True),
    ("causal", "fused_goal", "diffusion", 3, 2, False),
]


def readouts(model, method, *args, **kwargs):
    out = model.module.apply({"params": model.params}, *args, method=method, **kwargs)
    return np.asarray((out[0] if isinstance(out, tuple) else out)["readout_action"].tokens[:, -1])


@pytest.mark.parametrize("history, layout, head, window, every, scan_layers", CASES)
def test_cached_actions_equal_uncached_over_a_rollout(history, layout, head, window, every, scan_layers):
    model = make_model(history, layout, head, window, scan_layers)
    goals = {"image_primary": example_batch(window)["task"]["image_primary"][:1]}
    task = model.create_tasks(texts=["open the drawer"], goals=goals)
    cache = model.episode_cache(task)
    encoded = []
    for step, window_observation in enumerate(rollout_windows(window, ROLLOUT_STEPS)):
        if step % every:
            continue
        observation = model_observation(window_observation)
        frames, new_observation, _ = cache.split(observation)
        encoded.append(new_observation["timestep"].shape[1])
        np.testing.assert_allclose(
            readouts(model, "readouts_step", task, cache.context, frames, new_observation),
            readouts(model, "readout_groups", observation, task, train=False),
            atol=1e-5,
            rtol=0,
        )
        rng = jax.random.key(step)
        uncached = model.sample_actions(observation, task, rng=rng)
        cached = model.sample_actions(observation, task, rng=rng, cache=cache)
        # DDPM from an untrained head amplifies float32 rounding (the readouts differ by ~1e-6,
        # as the shapes of the matrix products differ) about a hundredfold over its 20 steps.
        np.testing.assert_allclose(np.asarray(cached), np.asarray(uncached), atol=1e-3 if head == "diffusion" else 1e-5)
        assert len(cache.frames) <= window
    if every == 1:
        # Once the window holds no padding, each step encodes one frame: the newest.
        assert encoded[window - 1 :] == [1] * (len(encoded) - window + 1)
    else:
        # The frame between two calls was never seen, so it is encoded with the newest.
        assert encoded[window:] == [2] * (len(encoded) - window)


def test_a_frames_keys_and_values_depend_on_neither_its_slot_nor_the_frames_before_it():
    """With history="readout", frame 1's entry computed as the newest of window [pad, 0, 1] equals
    the one computed in the middle slot of window [0, 1, 2] with nothing cached."""
    model = make_model("readout", window=3)
    task = model.create_tasks(texts=["open the drawer"])
    windows = rollout_windows(3, 3)
    newest, middle = model.episode_cache(task), model.episode_cache(task)
    model.sample_actions(model_observation(windows[1]), task, rng=jax.random.key(0), cache=newest)
    model.sample_actions(model_observation(windows[2]), task, rng=jax.random.key(0), cache=middle)
    assert sorted(newest.frames) == [(0,), (1,)] and sorted(middle.frames) == [(0,), (1,), (2,)]
    for got, want in zip(jax.tree.leaves(middle.frames[(1,)]), jax.tree.leaves(newest.frames[(1,)])):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_a_cache_belongs_to_its_task():
    model = make_model()
    task, other = model.create_tasks(texts=["open the drawer"]), model.create_tasks(texts=["close the drawer"])
    cache = model.episode_cache(task)
    observation = model_observation(rollout_windows(2, 1)[0])
    with pytest.raises(InputError, match="another task"):
        model.sample_actions(observation, other, rng=jax.random.key(0), cache=cache)


def test_readout_history_needs_timesteps():
    model = make_model("readout")
    task = model.create_tasks(texts=["open the drawer"])
    observation = model_observation(rollout_windows(2, 1)[0])
    del observation["timestep"]
    with pytest.raises(InputError, match="timestep"):
        model.module.apply({"params": model.params}, observation, task, train=False)


def test_the_server_reuses_a_connections_cache_and_restarts_it_per_episode(tmp_path, monkeypatch):
    """Requests that carry their timesteps reuse the connection's cache, which restarts when the
    timesteps start over or the prompt changes; the chunks equal the uncached in-process ones."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from octo_like.eval.policies import load_checkpoint_policy
    from octo_like.serving.server import PolicyServer, ServedPolicy

    make_model("readout", head="flow").save_pretrained(0, str(tmp_path / "release"))
    served = ServedPolicy(load_checkpoint_policy(str(tmp_path / "release")))
    caches = []
    new_cache = served.policy.new_cache
    monkeypatch.setattr(served.policy, "new_cache", lambda task: caches.append(new_cache(task)) or caches[-1])
    episodes = [("open the drawer", 6), ("open the drawer", 4), ("close the drawer", 3)]
    with PolicyServer(served, "127.0.0.1", 0).in_background() as server:
        client = WebsocketClientPolicy(host="127.0.0.1", port=server.port)
        for prompt, steps in episodes:
            for window_observation in rollout_windows(2, steps):
                request = {**window_observation, "prompt": prompt, "seed": 7}
                chunk = client.infer(request)["actions"]
                window, _, seed = served.window(request)
                uncached = served.policy.sample(window, seed, served.policy.model.create_tasks(texts=[prompt]))
                np.testing.assert_allclose(chunk, uncached, atol=1e-5)
        del request["timestep"]  # without timesteps the server cannot tell frames apart: no cache
        client.infer(request)
    assert len(caches) == len(episodes)
    assert [sorted(cache.frames) for cache in caches] == [[(4,), (5,)], [(2,), (3,)], [(1,), (2,)]]
