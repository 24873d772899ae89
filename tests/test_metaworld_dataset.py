"""Meta-World scripted collection -> TFDS RLDS dataset -> the data pipeline's batches."""

import glob
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines.metaworld.builder import build
from data_pipelines.metaworld.collect import CollectionSettings, EpisodeJob, collect, episode_path, load_episode
from octo_like.data.mixtures import make_named_mixture
from octo_like.data.rlds import make_dataset_from_rlds
from octo_like.eval.envs.metaworld_tasks import train_instructions
from octo_like.utils.errors import InputError

SETTINGS = CollectionSettings(
    tasks=("reach-v3", "drawer-close-v3"), episodes_per_task=3, image_size=32, action_noise=0.1
)


def episode_files(episodes_dir):
    return sorted(glob.glob(os.path.join(episodes_dir, "*", "episode_*.npz")))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The dataset built with 2 workers, and the episodes dir of that collection."""
    data_dir = str(tmp_path_factory.mktemp("tensorflow_datasets"))
    path, counts = build(data_dir, "tiny", SETTINGS, val_fraction=0.34, workers=2)
    return data_dir, path, counts


def test_collection_keeps_successes_with_noisy_execution_and_expert_labels(built):
    data_dir, _, counts = built
    assert counts == {"episodes": 6, "failed_jobs": 0}
    files = episode_files(os.path.join(data_dir, "downloads", "metaworld", "tiny"))
    assert len(files) == 6
    for path in files:
        steps, metadata = load_episode(path)
        length = len(steps["action"])
        assert metadata["success"] and metadata["instruction"] in train_instructions(metadata["task"])
        assert steps["image_primary"].shape == (length, 32, 32, 3) and steps["state"].shape == (length, 39)
        assert np.all(np.abs(steps["action"]) <= 1.0)
        # The executed action is the label plus noise (then clipped): close, never equal.
        difference = steps["executed_action"] - steps["action"]
        assert 0.02 < np.abs(difference).mean() < 0.2


def test_resumed_collection_redoes_only_missing_episodes_and_matches_bitwise(built, tmp_path):
    data_dir, _, _ = built
    reference_dir = os.path.join(data_dir, "downloads", "metaworld", "tiny")
    episodes_dir = str(tmp_path / "episodes")
    settings = CollectionSettings(**{**SETTINGS.to_json(), "tasks": SETTINGS.tasks})
    collect(settings, episodes_dir, num_workers=1)
    # A kill mid-way: two finished episodes missing, a temporary file left behind.
    for job in (EpisodeJob("reach-v3", 2), EpisodeJob("drawer-close-v3", 0)):
        os.remove(episode_path(episodes_dir, job))
    open(os.path.join(episodes_dir, "reach-v3", ".episode_00002.123.tmp.npz"), "wb").write(b"partial")
    kept = {path: os.stat(path).st_mtime_ns for path in episode_files(episodes_dir)}
    assert collect(settings, episodes_dir, num_workers=1) == {"episodes": 6, "failed_jobs": 0}
    assert all(os.stat(path).st_mtime_ns == mtime for path, mtime in kept.items())
    # Same files whatever the worker count (2 for the reference) and however often resumed.
    for ours, reference in zip(episode_files(episodes_dir), episode_files(reference_dir), strict=True):
        (steps, metadata), (reference_steps, reference_metadata) = load_episode(ours), load_episode(reference)
        assert metadata == reference_metadata
        for key in reference_steps:
            np.testing.assert_array_equal(steps[key], reference_steps[key])


def test_resuming_with_other_settings_fails_in_one_line(built):
    data_dir, _, _ = built
    changed = CollectionSettings(**{**SETTINGS.to_json(), "tasks": SETTINGS.tasks, "action_noise": 0.0})
    with pytest.raises(InputError, match=r"holds a collection with other settings \(action_noise: 0.1 -> 0.0\)"):
        collect(changed, os.path.join(data_dir, "downloads", "metaworld", "tiny"))


def test_dataset_is_rlds_with_train_and_val_splits_covering_every_task(built):
    _, path, _ = built
    builder = tfds.builder_from_directory(path)
    assert builder.info.splits["train"].num_examples == 4 and builder.info.splits["val"].num_examples == 2
    val_tasks = set()
    for episode in tfds.as_numpy(builder.as_dataset(split="val")):
        metadata, steps = episode["episode_metadata"], episode["steps"]
        val_tasks.add(metadata["task"].decode())
        assert metadata["episode_index"] == 2 and metadata["success"]
        flags = [(step["is_first"], step["is_last"], step["is_terminal"]) for step in steps]
        assert flags[0][0] and flags[-1][1] and flags[-1][2] and not any(f[1] or f[2] for f in flags[:-1])
    assert val_tasks == {"reach-v3", "drawer-close-v3"}


def test_dataset_loads_through_the_pipeline_into_the_batch_contract(built):
    data_dir, _, _ = built
    trajectories, statistics = make_dataset_from_rlds(
        "metaworld/tiny",
        data_dir,
        train=True,
        image_obs_keys={"primary": "image", "wrist": "wrist_image"},
        proprio_obs_key="proprio",
        language_key="language_instruction",
    )
    assert statistics["num_trajectories"] == 4 and len(statistics["action"]["mean"]) == 4
    trajectory = next(trajectories.iterator())
    assert trajectory["observation"]["proprio"].shape[1] == 4 and trajectory["action"].shape[1] == 4

    batches, _ = make_named_mixture(
        "metaworld/tiny",
        data_dir,
        train=True,
        shuffle_buffer_size=50,
        batch_size=4,
        traj_transform_kwargs=dict(window_size=2, action_horizon=3),
        frame_transform_kwargs=dict(resize_size={"primary": (32, 32), "wrist": (16, 16)}),
    )
    batch = next(batches.iterator())
    assert batch["observation"]["image_primary"].shape == (4, 2, 32, 32, 3)
    assert batch["observation"]["image_wrist"].shape == (4, 2, 16, 16, 3)
    assert batch["observation"]["proprio"].shape == (4, 2, 4)
    assert batch["action"].shape == (4, 2, 3, 4) and batch["action_pad_mask"].shape == (4, 2, 3, 4)
    assert set(batch["dataset_name"]) == {b"metaworld/tiny"}
