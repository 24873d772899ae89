"""compute_dataset_statistics: exact numbers (vs numpy), cache behaviour, and its JSON files."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from octo_like.data import statistics as statistics_lib
from octo_like.data.dlataset import DLataset
from octo_like.utils.errors import InputError

ACTION_DIM, PROPRIO_DIM = 4, 3
LENGTHS = (3, 9, 5, 7, 4)


def make_trajectories(lengths=LENGTHS, proprio_dim=PROPRIO_DIM, seed=0) -> list[dict]:
    rng = np.random.default_rng(seed)
    trajs = []
    for length in lengths:
        action = rng.normal(size=(length, ACTION_DIM)) * [1.0, 10.0, 0.1, 0.0] + [0.0, -5.0, 2.0, 1.5]
        trajs.append(
            {
                "action": action.astype(np.float32),  # last dim constant
                "observation": {
                    "proprio": rng.uniform(-3, 3, size=(length, proprio_dim)).astype(np.float32),
                    "image_primary": np.array([b"\x89PNG fake image bytes"] * length),
                },
            }
        )
    return trajs


class CountingDataset:
    """A DLataset over `trajs` built from a generator that counts how often it is iterated."""

    def __init__(self, trajs: list[dict], fail: bool = False):
        self.trajs, self.fail, self.calls = trajs, fail, 0

    def _generate(self):
        self.calls += 1
        if self.fail:
            raise RuntimeError("the dataset must not be iterated")
        yield from self.trajs

    def dlataset(self) -> DLataset:
        proprio_dim = self.trajs[0]["observation"]["proprio"].shape[1] if self.trajs else PROPRIO_DIM
        signature = {
            "action": tf.TensorSpec([None, ACTION_DIM], tf.float32),
            "observation": {
                "proprio": tf.TensorSpec([None, proprio_dim], tf.float32),
                "image_primary": tf.TensorSpec([None], tf.string),
            },
        }
        return DLataset(tf.data.Dataset.from_generator(self._generate, output_signature=signature))


def numpy_statistics(values: np.ndarray) -> dict:
    values = values.astype(np.float64)
    return {
        "mean": np.mean(values, 0),
        "std": np.std(values, 0),
        "min": np.min(values, 0),
        "max": np.max(values, 0),
        "q01": np.quantile(values, 0.01, 0),
        "q99": np.quantile(values, 0.99, 0),
    }


def assert_statistics_equal(a: dict, b: dict) -> None:
    assert a["num_transitions"] == b["num_transitions"]
    assert a["num_trajectories"] == b["num_trajectories"]
    for feature in ("action", "proprio"):
        assert set(a[feature]) == set(b[feature]) == set(statistics_lib.STAT_KEYS)
        for key in statistics_lib.STAT_KEYS:
            np.testing.assert_array_equal(a[feature][key], b[feature][key])


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """The fallback cache (~/.cache/octo_like) is also searched: keep it per test, never the real one."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture
def trajs():
    return make_trajectories()


def test_statistics_match_numpy(tmp_path, trajs):
    source = CountingDataset(trajs)
    stats = statistics_lib.compute_dataset_statistics(
        source.dlataset(), ["toy", "v1"], str(tmp_path), show_progress=False
    )
    assert source.calls == 1
    assert stats["num_trajectories"] == len(LENGTHS)
    assert stats["num_transitions"] == sum(LENGTHS)
    for feature, values in (
        ("action", np.concatenate([t["action"] for t in trajs])),
        ("proprio", np.concatenate([t["observation"]["proprio"] for t in trajs])),
    ):
        expected = numpy_statistics(values)
        for key in statistics_lib.STAT_KEYS:
            got = stats[feature][key]
            assert got.dtype == np.float32 and got.shape == (values.shape[1],), (feature, key)
            np.testing.assert_allclose(got, expected[key], rtol=1e-5, atol=1e-7, err_msg=f"{feature}/{key}")
    # The constant action dimension has zero spread.
    assert stats["action"]["std"][3] == 0 and stats["action"]["min"][3] == stats["action"]["max"][3] == 1.5


def test_proprio_may_have_zero_dims(tmp_path):
    trajs = make_trajectories(proprio_dim=0)
    stats = statistics_lib.compute_dataset_statistics(
        CountingDataset(trajs).dlataset(), ["no proprio"], str(tmp_path), show_progress=False
    )
    for key in statistics_lib.STAT_KEYS:
        assert stats["proprio"][key].shape == (0,)
    reloaded = statistics_lib.compute_dataset_statistics(
        CountingDataset(trajs, fail=True).dlataset(), ["no proprio"], str(tmp_path), show_progress=False
    )
    assert_statistics_equal(stats, reloaded)


def test_cache_is_reused_without_iterating(tmp_path, trajs):
    deps = ["dataset=toy", "version=1.0.0", "split=train"]
    first = statistics_lib.compute_dataset_statistics(
        CountingDataset(trajs).dlataset(), deps, str(tmp_path), show_progress=False
    )
    path = tmp_path / statistics_lib.cache_filename(deps)
    assert path.is_file()
    assert path.name.startswith("dataset_statistics_") and len(path.stem) == len("dataset_statistics_") + 16
    assert os.listdir(tmp_path) == [path.name]  # no temp files left behind

    content = json.loads(path.read_text())
    assert content["hash_dependencies"] == deps
    assert content["num_transitions"] == sum(LENGTHS)
    assert content["action"]["mean"] == pytest.approx(first["action"]["mean"].tolist())

    untouchable = CountingDataset(trajs, fail=True)
    second = statistics_lib.compute_dataset_statistics(untouchable.dlataset(), deps, str(tmp_path), show_progress=False)
    assert untouchable.calls == 0
    assert "hash_dependencies" not in second
    assert_statistics_equal(first, second)


def test_different_deps_or_force_recompute_recompute(tmp_path, trajs):
    statistics_lib.compute_dataset_statistics(
        CountingDataset(trajs).dlataset(), ["a"], str(tmp_path), show_progress=False
    )

    other = CountingDataset(trajs[:2])
    stats_b = statistics_lib.compute_dataset_statistics(other.dlataset(), ["b"], str(tmp_path), show_progress=False)
    assert other.calls == 1
    assert stats_b["num_trajectories"] == 2 and stats_b["num_transitions"] == sum(LENGTHS[:2])
    # Joining must be unambiguous: ["a", "b"] and ["ab"] are different keys.
    assert statistics_lib.cache_key(["a", "b"]) != statistics_lib.cache_key(["ab"])

    forced = CountingDataset(trajs[:3])
    stats_forced = statistics_lib.compute_dataset_statistics(
        forced.dlataset(), ["a"], str(tmp_path), force_recompute=True, show_progress=False
    )
    assert forced.calls == 1
    assert stats_forced["num_trajectories"] == 3
    # The forced result replaced the cached one.
    reloaded = statistics_lib.compute_dataset_statistics(
        CountingDataset(trajs, fail=True).dlataset(), ["a"], str(tmp_path), show_progress=False
    )
    assert_statistics_equal(stats_forced, reloaded)
    assert sorted(os.listdir(tmp_path)) == sorted(statistics_lib.cache_filename(d) for d in (["a"], ["b"]))


def test_unwritable_cache_dir_falls_back_to_home(tmp_path, monkeypatch, trajs):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache dir should be")
    cache_dir = str(blocker / "stats")
    stats = statistics_lib.compute_dataset_statistics(
        CountingDataset(trajs).dlataset(), ["fallback"], cache_dir, show_progress=False
    )
    fallback = tmp_path / "home" / ".cache" / "octo_like" / statistics_lib.cache_filename(["fallback"])
    assert fallback.is_file()
    reloaded = statistics_lib.compute_dataset_statistics(
        CountingDataset(trajs, fail=True).dlataset(), ["fallback"], cache_dir, show_progress=False
    )
    assert_statistics_equal(stats, reloaded)


def test_corrupt_cache_is_recomputed(tmp_path, trajs):
    path = tmp_path / statistics_lib.cache_filename(["x"])
    path.write_text("{not json")
    source = CountingDataset(trajs)
    stats = statistics_lib.compute_dataset_statistics(source.dlataset(), ["x"], str(tmp_path), show_progress=False)
    assert source.calls == 1
    assert_statistics_equal(stats, statistics_lib.load_statistics(str(path)))


def test_empty_dataset_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no trajectories"):
        statistics_lib.compute_dataset_statistics(
            CountingDataset([]).dlataset(), ["empty"], str(tmp_path), show_progress=False
        )
    assert os.listdir(tmp_path) == []


def test_save_load_round_trip(tmp_path, trajs):
    stats = statistics_lib.compute_dataset_statistics(
        CountingDataset(trajs).dlataset(), ["rt"], str(tmp_path / "cache"), show_progress=False
    )
    path = str(tmp_path / "run" / "dataset_statistics.json")
    statistics_lib.save_statistics(stats, path)
    assert_statistics_equal(stats, statistics_lib.load_statistics(path))  # float32 survives JSON exactly
    # Nested (per-dataset) layouts, as a mixture's run directory holds them, round trip too.
    statistics_lib.save_statistics({"toy": stats}, path)
    assert_statistics_equal(stats, statistics_lib.load_statistics(path)["toy"])


def test_load_statistics_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        statistics_lib.load_statistics(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(InputError, match="not valid JSON"):
        statistics_lib.load_statistics(str(bad))


@pytest.mark.parametrize(
    "feature, trajectory, step, dims, value, message",
    [
        (
            "action",
            1,
            4,
            (3, 2),
            np.nan,
            "action dimension 2 has 1 non-finite value(s) in 28 steps "
            "(first: nan at step 4 of trajectory 1 in reading order)",
        ),
        (
            "proprio",
            2,
            0,
            (1,),
            np.inf,
            "proprio dimension 1 has 1 non-finite value(s) in 28 steps "
            "(first: inf at step 0 of trajectory 2 in reading order)",
        ),
    ],
)
def test_non_finite_data_fails_with_one_line_and_caches_nothing(
    tmp_path, trajs, feature, trajectory, step, dims, value, message
):
    values = trajs[trajectory]["action"] if feature == "action" else trajs[trajectory]["observation"]["proprio"]
    for dim in dims:
        values[step, dim] = value
    with pytest.raises(InputError) as error:
        statistics_lib.compute_dataset_statistics(
            CountingDataset(trajs).dlataset(), ["nan"], str(tmp_path), show_progress=False
        )
    assert str(error.value) == f"cannot compute statistics of the dataset: {message}; fix or filter those steps"
    assert os.listdir(tmp_path) == []
    assert not os.path.exists(statistics_lib.fallback_cache_dir())


def test_cached_non_finite_statistics_are_refused_and_replaced(tmp_path, trajs):
    stats = statistics_lib.compute_dataset_statistics(
        CountingDataset(trajs).dlataset(), ["cached"], str(tmp_path), show_progress=False
    )
    # What an older version cached for NaN data: Python's json writes NaN as a bare token.
    path = tmp_path / statistics_lib.cache_filename(["cached"])
    content = json.loads(path.read_text())
    content["action"]["mean"][1] = float("nan")
    path.write_text(json.dumps(content))
    assert "NaN" in path.read_text()

    with pytest.raises(InputError) as error:
        statistics_lib.load_statistics(str(path))
    assert str(error.value) == f"dataset statistics file '{path}' holds a non-finite value (action.mean[1] = nan)"

    source = CountingDataset(trajs)
    recomputed = statistics_lib.compute_dataset_statistics(
        source.dlataset(), ["cached"], str(tmp_path), show_progress=False
    )
    assert source.calls == 1
    assert_statistics_equal(stats, recomputed)
    assert "NaN" not in path.read_text()


def test_non_finite_statistics_are_never_written(tmp_path, trajs):
    stats = statistics_lib.compute_dataset_statistics(
        CountingDataset(trajs).dlataset(), ["w"], str(tmp_path / "cache"), show_progress=False
    )
    stats["proprio"]["q99"] = np.array([0.0, 1.0, -np.inf], np.float32)
    path = tmp_path / "run" / "dataset_statistics.json"
    with pytest.raises(InputError, match=r"non-finite dataset statistics to '.*': toy\.proprio\.q99\[2\] = -inf$"):
        statistics_lib.save_statistics({"toy": stats}, str(path))
    assert not path.exists()
