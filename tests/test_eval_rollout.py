"""Closed-loop evaluation: parallel reproducible episodes, policies, and the checkpoint adapter."""

import numpy as np
import pytest

from octo_like.eval.policies import CheckpointPolicy, RandomPolicy, ScriptedPolicy, resize_like_training
from octo_like.eval.rollout import EvalSettings, evaluate
from octo_like.utils import spec
from octo_like.utils.errors import InputError


def outcome(results):
    return [(r.task, r.index, r.seed, r.instruction, r.success, r.length) for r in results]


def test_scripted_expert_succeeds_with_videos_of_the_first_episodes_only():
    settings = EvalSettings(tasks="reach,drawer-close", episodes_per_task=2, videos_per_task=1, image_size=32)
    results = evaluate(spec.create(ScriptedPolicy), settings, num_workers=2, show_progress=False)
    assert [(r.task, r.index) for r in results] == [
        ("reach-v3", 0),
        ("reach-v3", 1),
        ("drawer-close-v3", 0),
        ("drawer-close-v3", 1),
    ]
    assert all(r.success and 0 < r.length < 500 for r in results)
    for result in results:
        if result.index == 0:  # reset + one frame per step, both cameras side by side
            assert len(result.frames) == result.length + 1 and result.frames[0].shape == (32, 64, 3)
        else:
            assert result.frames is None
    # The same episodes whatever the number of workers.
    again = evaluate(spec.create(ScriptedPolicy), settings, num_workers=1, show_progress=False)
    assert outcome(again) == outcome(results)


def test_random_policy_runs_to_the_step_limit_and_instructions_can_be_replaced():
    settings = EvalSettings(
        tasks="reach",
        episodes_per_task=3,
        max_episode_steps=25,
        instructions={"reach-v3": ["touch the red dot", "go to the target"]},
    )
    results = evaluate(spec.create(RandomPolicy, action_horizon=4), settings, num_workers=1, show_progress=False)
    assert [(r.success, r.length) for r in results] == [(False, 25)] * 3
    assert [r.instruction for r in results] == ["touch the red dot", "go to the target", "touch the red dot"]


def test_settings_and_policy_mismatches_fail_in_one_line():
    with pytest.raises(InputError, match=r"the instructions have none for task\(s\) \['push-v3'\]"):
        EvalSettings(tasks="reach,push", instructions={"reach-v3": ["reach"]})
    with pytest.raises(InputError, match="exec_horizon and temporal_ensemble exclude each other"):
        EvalSettings(tasks="reach", exec_horizon=2, temporal_ensemble=True)
    settings = EvalSettings(tasks="reach", episodes_per_task=1, exec_horizon=3)
    with pytest.raises(InputError, match="exec_horizon=3 exceeds the policy's action chunk of 1"):
        evaluate(spec.create(ScriptedPolicy), settings, num_workers=1, show_progress=False)


class FakeModel:
    """Stands in for PolicyModel: the attributes CheckpointPolicy reads, and a record of its calls."""

    def __init__(self, dataset_names=("metaworld/mt10",)):
        self.example_batch = {
            "observation": {
                "image_primary": np.zeros((1, 2, 32, 32, 3), np.uint8),
                "proprio": np.zeros((1, 2, 4), np.float32),
                "timestep_pad_mask": np.ones((1, 2), bool),
            },
            "action": np.zeros((1, 2, 3, 4), np.float32),
        }
        stats = {"mean": np.array([1.0, 2.0, 3.0, 4.0]), "std": np.array([2.0, 2.0, 4.0, 4.0])}
        self.dataset_statistics = {
            name: {"action": {"mean": np.full(4, 0.5)}, "proprio": stats} for name in dataset_names
        }
        self.calls = []

    def create_tasks(self, texts):
        return {"texts": list(texts)}

    def episode_cache(self, task):
        return ("cache of", task["texts"])

    def sample_actions(self, observation, task, *, rng, unnormalization_statistics, cache=None):
        self.calls.append((observation, task, cache))
        return np.tile(unnormalization_statistics["mean"], (1, 3, 1))


def test_checkpoint_policy_feeds_the_model_as_in_training():
    model = FakeModel()
    policy = CheckpointPolicy(model)
    assert (policy.window_size, policy.action_horizon, policy.cameras) == (2, 3, ("primary",))
    policy.check_fits(("primary", "wrist"), 4)
    policy.reset("reach-v3", "reach the goal")
    rng = np.random.default_rng(0)
    window = {
        "image_primary": np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8),
        "image_wrist": np.zeros((2, 64, 64, 3), np.uint8),
        "proprio": np.array([[1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 7.0, 8.0]], np.float32),
        "state": np.zeros((2, 39), np.float32),
        "timestep_pad_mask": np.array([False, True]),
        "timestep": np.array([0, 0], np.int32),
    }
    actions_HA = policy(window, rng)
    np.testing.assert_array_equal(actions_HA, np.full((3, 4), 0.5, np.float32))
    observation, task, cache = model.calls[0]
    assert task == {"texts": ["reach the goal"]} and cache == ("cache of", ["reach the goal"])  # the episode's
    assert observation["image_primary"].shape == (1, 2, 32, 32, 3) and observation["image_primary"].dtype == np.uint8
    assert "image_wrist" not in observation  # only the cameras the model was trained on
    np.testing.assert_allclose(observation["proprio"][0], [[0, 0, 0, 0], [1, 1, 1, 1]], atol=1e-6)
    np.testing.assert_array_equal(observation["timestep_pad_mask"], [[False, True]])
    policy.use_cache = False  # every call recomputes the whole window
    policy.reset("reach-v3", "reach the goal")
    policy(window, rng)
    assert model.calls[-1][2] is None


def test_checkpoint_policy_rejects_environments_it_cannot_drive():
    policy = CheckpointPolicy(FakeModel())
    with pytest.raises(InputError, match="the checkpoint predicts 4-d actions; the environment expects 7-d actions"):
        policy.check_fits(("primary",), 7)
    with pytest.raises(
        InputError, match=r"the checkpoint reads camera\(s\) \['primary'\]; the environment renders \['wrist'\]"
    ):
        policy.check_fits(("wrist",), 4)
    with pytest.raises(InputError, match="trained on several datasets .*expected --dataset_name"):
        CheckpointPolicy(FakeModel(("a", "b")))
    assert CheckpointPolicy(FakeModel(("a", "b")), dataset_name="b").dataset_name == "b"


def test_resize_matches_the_data_pipeline():
    from octo_like.data import frame_transforms
    from octo_like.eval import policies

    assert policies.IMAGE_RESIZE_METHOD == frame_transforms.IMAGE_RESIZE_METHOD
    rng = np.random.default_rng(0)
    images = np.clip(np.cumsum(rng.normal(0, 8, (3, 128, 128, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
    ours = resize_like_training(images, (64, 48)).astype(int)
    pipeline = np.asarray(frame_transforms.resize_images(images, (64, 48))).astype(int)
    assert ours.shape == pipeline.shape == (3, 64, 48, 3)
    assert np.abs(ours - pipeline).max() <= 1 and (ours != pipeline).mean() < 1e-3
    np.testing.assert_array_equal(resize_like_training(images, (128, 128)), images)
