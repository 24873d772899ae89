"""Faulty data on disk fails with one InputError line: NaN actions (naming the dataset, key and
dimension, caching no statistics) and truncated or corrupted TFRecord shards (naming the file)."""

import glob
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from octo_like.data.dlataset import DLataset, RecordFiles
from octo_like.data.rlds import load_builder, make_dataset_from_rlds
from octo_like.utils.errors import InputError

KEYS = dict(image_obs_keys={"primary": "image"}, proprio_obs_key="state", language_key="language_instruction")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Statistics may fall back to ~/.cache/octo_like: keep that per test, never the real one."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


def nan_in_action_dimension_2_at_step_3(traj: dict) -> dict:
    return {**traj, "action": tf.tensor_scatter_nd_update(traj["action"], [[3, 2]], [np.nan])}


def test_nan_action_names_dataset_key_and_dimension_and_caches_nothing(synthetic_data_dir):
    before = sorted(os.walk(synthetic_data_dir))
    with pytest.raises(InputError) as error:
        make_dataset_from_rlds(
            "synthetic_rlds/default",
            synthetic_data_dir,
            train=True,
            standardize_fn=nan_in_action_dimension_2_at_step_3,
            **KEYS,
        )
    # Statistics read the train split (23 of the 24 episodes); each has the NaN at its step 3.
    assert re.fullmatch(
        r"cannot compute statistics of dataset 'synthetic_rlds/default/1\.0\.0': action dimension 2 has 23 non-finite "
        r"value\(s\) in \d+ steps \(first: nan at step 3 of trajectory 0 in reading order\); fix or filter those steps",
        str(error.value),
    )
    assert sorted(os.walk(synthetic_data_dir)) == before
    assert not glob.glob(os.path.join(os.environ["HOME"], "**", "dataset_statistics_*.json"), recursive=True)


def damage(path: str, how: str) -> None:
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    if how == "truncated":
        del data[middle:]
    else:
        data[middle : middle + 8] = bytes(byte ^ 0xFF for byte in data[middle : middle + 8])
    with open(path, "wb") as f:
        f.write(data)


def damaged_copy(synthetic_data_dir: str, tmp_path, config: str, how: str) -> tuple[str, str]:
    """(data dir, damaged shard): a copy of one synthetic config whose first TFRecord shard is damaged."""
    # Without the statistics other tests cached next to the shared data: these must be computed.
    shutil.copytree(
        os.path.join(synthetic_data_dir, "synthetic_rlds", config),
        tmp_path / "synthetic_rlds" / config,
        ignore=shutil.ignore_patterns("dataset_statistics_*.json"),
    )
    shard = sorted(glob.glob(str(tmp_path / "synthetic_rlds" / config / "*" / "*.tfrecord*")))[0]
    damage(shard, how)
    return str(tmp_path), shard


@pytest.mark.parametrize("how, reason", [("truncated", "truncated record at"), ("corrupted", "corrupted record at")])
def test_damaged_shard_is_named_when_computing_statistics_and_iterating(synthetic_data_dir, tmp_path, how, reason):
    data_dir, shard = damaged_copy(synthetic_data_dir, tmp_path, "default", how)
    expected_start = (
        f"TFRecord file '{shard}' of dataset 'synthetic_rlds/default/1.0.0' is truncated or corrupted ({reason}"
    )

    with pytest.raises(InputError) as error:
        make_dataset_from_rlds("synthetic_rlds/default", data_dir, train=True, **KEYS)
    assert str(error.value).startswith(expected_start) and "\n" not in str(error.value)
    assert not glob.glob(os.path.join(data_dir, "**", "dataset_statistics_*.json"), recursive=True)

    builder = load_builder("synthetic_rlds/default", data_dir)
    with pytest.raises(InputError) as error:
        list(DLataset.from_rlds(builder, "train", shuffle=False).flatten().iterator())
    assert str(error.value).startswith(expected_start) and "\n" not in str(error.value)


def test_damaged_shard_is_named_in_a_mixture(synthetic_data_dir, tmp_path):
    data_dir, shard = damaged_copy(synthetic_data_dir, tmp_path, "no_wrist", "corrupted")
    intact = DLataset.from_rlds(load_builder("synthetic_rlds/default", synthetic_data_dir), shuffle=False)
    damaged = DLataset.from_rlds(load_builder("synthetic_rlds/no_wrist", data_dir), shuffle=False)
    # Mixing needs one element structure: keep a feature both configs share.
    frames = [dataset.traj_map(lambda traj: {"reward": traj["reward"]}).flatten() for dataset in (intact, damaged)]
    mixed = DLataset.sample_from_datasets(frames, [0.5, 0.5], seed=0)
    with pytest.raises(InputError, match=f"^TFRecord file '{shard}' of dataset 'synthetic_rlds/no_wrist/1.0.0'"):
        list(mixed.iterator())


def test_read_failure_without_a_damaged_file_names_the_dataset_directory(synthetic_data_dir, tmp_path):
    _, shard = damaged_copy(synthetic_data_dir, tmp_path, "default", "truncated")
    intact = load_builder("synthetic_rlds/default", synthetic_data_dir)
    # The data comes from the damaged copy, but the files it claims to read are intact.
    sources = (
        RecordFiles(
            "synthetic_rlds/default/1.0.0",
            str(intact.data_dir),
            tuple(glob.glob(os.path.join(intact.data_dir, "*.tfrecord*"))),
        ),
    )
    with pytest.raises(InputError) as error:
        list(DLataset(tf.data.TFRecordDataset(shard), sources=sources).iterator())
    assert str(error.value).startswith(
        f"reading dataset 'synthetic_rlds/default/1.0.0' from '{intact.data_dir}' failed (truncated record at"
    )
    assert str(error.value).endswith("though each of its TFRecord files reads back whole")
    assert "\n" not in str(error.value)
