"""MetaWorldEnv: observations in the batch contract, reproducible episodes, the scripted expert.

The checks render, and MuJoCo's EGL rendering crashes in a process that has loaded TensorFlow (as
this test process has, from the data tests): each runs in a freshly spawned process.
"""

import numpy as np
import pytest

from octo_like.utils.errors import InputError
from octo_like.utils.parallel import run_in_spawned_process


def make_env(**kwargs):
    from octo_like.eval.envs.metaworld import MetaWorldEnv

    return MetaWorldEnv(**{"task": "drawer-close", "image_size": 48, "max_episode_steps": 150, **kwargs})


def check_observations_follow_the_declared_space():
    env = make_env()
    observation, info = env.reset(seed=0)
    assert info["task"] == "drawer-close-v3" and 0 <= info["variation"] < 50
    assert env.observation_space.contains(observation)
    assert observation["image_primary"].shape == (48, 48, 3) and observation["image_primary"].dtype == np.uint8
    assert observation["image_wrist"].shape == (48, 48, 3)
    np.testing.assert_array_equal(observation["proprio"], observation["state"][:4])
    assert observation["image_primary"].std() > 10  # a rendered scene, not a blank frame
    for key, image in env.render_cameras().items():
        np.testing.assert_array_equal(image, observation[key])
    env.close()


def check_same_seed_same_episode_other_seed_other_start():
    env = make_env()
    action = np.array([0.5, 0.0, 0.0, 1.0])
    first, first_info = env.reset(seed=7)
    after_step = env.step(action)[0]
    again, again_info = env.reset(seed=7)
    assert first_info == again_info
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    np.testing.assert_array_equal(after_step["image_primary"], env.step(action)[0]["image_primary"])
    starts = {tuple(np.round(env.reset(seed=seed)[0]["state"][4:7], 4)) for seed in range(5)}
    assert len(starts) > 1  # seeds pick different task variations (object placements)
    env.close()


def check_scripted_expert_succeeds_and_the_episode_terminates():
    env = make_env()
    env.reset(seed=3)
    for _ in range(env.max_episode_steps):
        _, _, terminated, truncated, info = env.step(env.expert_action())
        if terminated or truncated:
            break
    assert terminated and not truncated and info["success"]
    assert env.num_steps < env.max_episode_steps
    env.close()


def check_episode_is_truncated_at_max_steps():
    env = make_env(task="reach", cameras={}, max_episode_steps=5)
    observation, _ = env.reset(seed=0)
    assert set(observation) == {"proprio", "state"}  # no camera, no rendering
    results = [env.step(np.zeros(4)) for _ in range(5)]
    assert [r[3] for r in results] == [False] * 4 + [True] and not any(r[2] for r in results)
    env.close()


@pytest.mark.parametrize(
    "check",
    [
        check_observations_follow_the_declared_space,
        check_same_seed_same_episode_other_seed_other_start,
        check_scripted_expert_succeeds_and_the_episode_terminates,
        check_episode_is_truncated_at_max_steps,
    ],
)
def test_env(check):
    run_in_spawned_process(check)


def test_unknown_camera_and_task_fail_in_one_line():
    with pytest.raises(
        InputError, match=r"unknown Meta-World camera\(s\) \['frontview'\]; expected some of topview, corner"
    ):
        run_in_spawned_process(make_env, cameras={"primary": "frontview"})
    with pytest.raises(InputError, match="unknown Meta-World task 'fly-v3'"):
        run_in_spawned_process(make_env, task="fly-v3")
