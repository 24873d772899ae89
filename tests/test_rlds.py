import os

import numpy as np
import pytest

from data_pipelines.synthetic import builder as synthetic
from octo_like.data.dlataset import DLataset
from octo_like.data.rlds import load_builder, make_dataset_from_rlds
from octo_like.utils.errors import InputError

DEFAULT_CONFIG = synthetic.SyntheticRlds.BUILDER_CONFIGS[0]
KEYS = dict(
    image_obs_keys={"primary": "image", "wrist": "wrist_image"},
    proprio_obs_key="state",
    language_key="language_instruction",
)


def test_from_rlds_reads_every_episode_with_values_of_its_steps(synthetic_data_dir):
    builder = load_builder("synthetic_rlds/default", synthetic_data_dir)
    trajs = list(DLataset.from_rlds(builder, "train", shuffle=False).iterator())
    assert len(trajs) == DEFAULT_CONFIG.num_episodes
    for traj in trajs:
        episode = int(traj["traj_metadata"]["episode_id"][0])
        length = synthetic.episode_length(DEFAULT_CONFIG, episode)
        assert traj["action"].shape == (length, DEFAULT_CONFIG.action_dim)
        for step in range(length):
            np.testing.assert_array_equal(traj["action"][step], synthetic.action_at(DEFAULT_CONFIG, episode, step))
        assert traj["observation"]["image"].dtype == object  # still encoded: decoded per frame later
        np.testing.assert_array_equal(traj["traj_metadata"]["episode_id"], episode)


def test_host_shards_are_disjoint_and_cover_the_split(synthetic_data_dir):
    builder = load_builder("synthetic_rlds/default", synthetic_data_dir)
    episodes = []
    for shard in range(3):
        dataset = DLataset.from_rlds(builder, "train", shuffle=False, shard_index=shard, num_shards=3)
        episodes.append({int(t["traj_metadata"]["episode_id"][0]) for t in dataset.iterator()})
    assert all(a.isdisjoint(b) for i, a in enumerate(episodes) for b in episodes[i + 1 :])
    assert set.union(*episodes) == set(range(DEFAULT_CONFIG.num_episodes))


def test_a_split_smaller_than_the_process_count(synthetic_data_dir):
    def episodes(train, shard_index, num_shards):
        dataset, _ = make_dataset_from_rlds(
            "synthetic_rlds/default",
            synthetic_data_dir,
            train=train,
            shuffle=False,
            shard_index=shard_index,
            num_shards=num_shards,
            **KEYS,
        )
        return [t["action"].tobytes() for t in dataset.iterator()]  # a trajectory by its actions

    # The val split (the last 5% of train) holds one trajectory: each of 2 processes reads it whole.
    assert len(episodes(False, 0, 1)) == 1
    assert episodes(False, 0, 2) == episodes(False, 1, 2) == episodes(False, 0, 1)
    # Training cannot give each of 30 processes its own trajectory: one clear line.
    with pytest.raises(InputError) as excinfo:
        episodes(True, 0, 30)
    assert str(excinfo.value) == (
        "dataset 'synthetic_rlds/default' split 'train[:95%]' holds 23 trajectories, "
        "fewer than num_shards=30 (one shard per process); expected at least one per process"
    )


def test_restructure_normalize_and_pad_missing_camera(synthetic_data_dir):
    dataset, stats = make_dataset_from_rlds(
        "synthetic_rlds/no_wrist",
        synthetic_data_dir,
        train=True,
        shuffle=False,
        image_obs_keys={"primary": "image", "wrist": None},
        proprio_obs_key="state",
        language_key="language_instruction",
        action_proprio_normalization_type="bounds",
        action_normalization_mask=[True, False],
    )
    traj = next(dataset.iterator())
    observation = traj["observation"]
    assert set(observation) == {"image_primary", "image_wrist", "proprio", "timestep", "pad_mask_dict"}
    assert observation["pad_mask_dict"]["image_primary"].all()
    assert not observation["pad_mask_dict"]["image_wrist"].any()
    assert (observation["image_wrist"] == b"").all()
    np.testing.assert_array_equal(observation["timestep"], np.arange(len(traj["action"])))
    assert traj["dataset_name"][0] == b"synthetic_rlds/no_wrist"
    # bounds: dim 0 (the step) maps into [-1, 1]; dim 1 is masked, so it stays the raw episode id.
    assert np.all(np.abs(traj["action"][:, 0]) <= 1)
    assert stats["action"]["max"][0] == synthetic.SyntheticRlds.BUILDER_CONFIGS[1].max_length - 1


def test_train_and_val_splits_are_disjoint(synthetic_data_dir):
    def episodes(train):
        dataset, _ = make_dataset_from_rlds(
            "synthetic_rlds/default",
            synthetic_data_dir,
            train=train,
            val_percent=25,
            proprio_normalization_mask=[False] * DEFAULT_CONFIG.proprio_dim,
            **KEYS,
        )
        return {int(traj["observation"]["proprio"][0, 1]) for traj in dataset.iterator()}  # state[1] = episode

    train, val = episodes(True), episodes(False)
    assert len(train) == 18 and len(val) == 6
    assert train | val == set(range(DEFAULT_CONFIG.num_episodes))


def test_skip_unlabeled_drops_episodes_without_instruction(synthetic_data_dir):
    dataset, stats = make_dataset_from_rlds(
        "synthetic_rlds/default", synthetic_data_dir, train=True, skip_unlabeled=True, val_percent=1, **KEYS
    )
    trajs = list(dataset.iterator())
    assert all(t["task"]["pad_mask_dict"]["language_instruction"].all() for t in trajs)
    unlabeled = sum(synthetic.instruction(e) == "" for e in range(DEFAULT_CONFIG.num_episodes))
    assert len(trajs) == stats["num_trajectories"] == DEFAULT_CONFIG.num_episodes - unlabeled


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(data_dir="/nonexistent/tfds"), "data_dir '/nonexistent/tfds' does not exist"),
        (dict(name="no_such_dataset"), "unknown dataset name 'no_such_dataset'"),
        (dict(name="synthetic_rlds/default:9.9.9"), "no version '9.9.9'"),
        (dict(proprio_obs_key="joint_state"), "no key 'joint_state'"),
        (dict(image_obs_keys={"primary": "rgb"}), "no key 'rgb'"),
        (dict(action_proprio_normalization_type="zscore"), "unknown normalization type 'zscore'"),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(synthetic_data_dir, overrides, message):
    before = sorted(os.walk(synthetic_data_dir))
    kwargs = dict(name="synthetic_rlds/default", data_dir=synthetic_data_dir, train=True, **KEYS)
    kwargs.update(overrides)
    with pytest.raises(InputError, match=message) as error:
        make_dataset_from_rlds(**kwargs)
    assert "\n" not in str(error.value)
    assert sorted(os.walk(synthetic_data_dir)) == before
