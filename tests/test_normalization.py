"""normalize / unnormalize over numpy, tf.experimental.numpy (in a tf.data map) and jax.numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from octo_like.data import statistics as statistics_lib
from octo_like.data.dlataset import DLataset
from octo_like.utils import normalization
from octo_like.utils.errors import InputError
from octo_like.utils.normalization import normalize, unnormalize

TYPES = normalization.NORMALIZATION_TYPES


def stats_of(values: np.ndarray) -> dict:
    values64 = values.astype(np.float64)
    stats = {
        "mean": values64.mean(0),
        "std": values64.std(0),
        "min": values64.min(0),
        "max": values64.max(0),
        "q01": np.quantile(values64, 0.01, 0),
        "q99": np.quantile(values64, 0.99, 0),
    }
    return {k: v.astype(np.float32) for k, v in stats.items()}


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(200, 5)) * [1.0, 20.0, 0.01, 3.0, 1.0] + [0.0, 5.0, -1.0, 100.0, 0.0]
    values[:, 4] = (rng.uniform(size=200) > 0.5).astype(np.float64)  # a gripper in {0, 1}
    values = values.astype(np.float32)
    return values, stats_of(values)


def within(values, stats, normalization_type):
    if normalization_type != "bounds_q99":
        return values
    keep = np.all((values >= stats["q01"]) & (values <= stats["q99"]), axis=-1)
    return values[keep]


@pytest.mark.parametrize("normalization_type", TYPES)
def test_numpy_round_trip(data, normalization_type):
    values, stats = data
    values = within(values, stats, normalization_type)
    assert len(values) > 100
    normalized = normalize(values, stats, normalization_type)
    assert normalized.dtype == np.float32
    restored = unnormalize(normalized, stats, normalization_type)
    scale = np.maximum(np.abs(values).max(0), 1.0)
    np.testing.assert_allclose(restored / scale, values / scale, atol=1e-5)


def test_expected_values(data):
    values, stats = data
    normal = normalize(values, stats, "normal")
    np.testing.assert_allclose(normal.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(normal.std(0), 1, atol=1e-4)
    bounds = normalize(values, stats, "bounds")
    np.testing.assert_allclose(bounds.min(0), -1, atol=1e-6)
    np.testing.assert_allclose(bounds.max(0), 1, atol=1e-6)


def test_bounds_q99_clips_outside_quantiles(data):
    values, stats = data
    normalized = normalize(values, stats, "bounds_q99")
    assert normalized.min() == -1.0 and normalized.max() == 1.0
    below = values < stats["q01"]
    above = values > stats["q99"]
    assert below.any() and above.any()
    assert np.all(normalized[below] == -1.0) and np.all(normalized[above] == 1.0)
    # Far outside the bounds: still clipped.
    far = np.stack([stats["max"] + 1000, stats["min"] - 1000])
    np.testing.assert_array_equal(normalize(far, stats, "bounds"), [[1.0] * 5, [-1.0] * 5])


@pytest.mark.parametrize("normalization_type", TYPES)
def test_constant_dimension_maps_to_zero_and_back(normalization_type):
    values = np.random.default_rng(2).normal(size=(50, 3)).astype(np.float32)
    values[:, 1] = 7.25
    stats = stats_of(values)
    normalized = normalize(values, stats, normalization_type)
    assert np.all(np.isfinite(normalized))
    np.testing.assert_array_equal(normalized[:, 1], 0.0)
    np.testing.assert_array_equal(unnormalize(normalized, stats, normalization_type)[:, 1], 7.25)
    # An off-distribution value in the constant dim does not blow up to ~1e8.
    assert normalize(np.array([[0.0, 8.0, 0.0]], np.float32), stats, normalization_type)[0, 1] == 0.0


@pytest.mark.parametrize("normalization_type", TYPES)
def test_mask_leaves_dims_bit_identical(data, normalization_type):
    values, stats = data
    mask = [True, True, False, True, False]
    normalized = normalize(values, stats, normalization_type, mask=mask)
    np.testing.assert_array_equal(normalized[:, [2, 4]], values[:, [2, 4]])
    np.testing.assert_array_equal(normalized[:, [0, 1, 3]], normalize(values, stats, normalization_type)[:, [0, 1, 3]])
    restored = unnormalize(normalized, stats, normalization_type, mask=mask)
    np.testing.assert_array_equal(restored[:, [2, 4]], values[:, [2, 4]])


def test_unknown_type_is_a_one_line_input_error(data):
    values, stats = data
    with pytest.raises(InputError) as info:
        normalization.check_normalization_type("foo")
    assert str(info.value) == (
        "unknown normalization type 'foo' for action_proprio_normalization_type; "
        "expected one of normal, bounds, bounds_q99"
    )
    with pytest.raises(InputError, match="for my_key;"):
        normalization.check_normalization_type("l2", key="my_key")
    for fn in (normalize, unnormalize):
        with pytest.raises(InputError, match="action_proprio_normalization_type") as info:
            fn(values, stats, "minmax")
        assert "\n" not in str(info.value)


def test_wrong_mask_length_is_an_input_error(data):
    values, stats = data
    with pytest.raises(InputError, match="expected length 5") as info:
        normalize(values, stats, "normal", mask=[True, False])
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="expected length 5"):
        unnormalize(values, stats, "bounds", mask=[True] * 6)
    with pytest.raises(InputError, match="last dimension 4"):
        normalize(values[:, :4], stats, "normal")
    with pytest.raises(InputError, match="lack 'q01'"):
        normalize(values, {k: v for k, v in stats.items() if k != "q01"}, "bounds_q99")


@pytest.mark.parametrize("normalization_type", TYPES)
def test_jax_matches_numpy_under_jit(data, normalization_type):
    values, stats = data
    mask = [True, True, True, True, False]
    expected = normalize(values, stats, normalization_type, mask=mask)
    jax_stats = {k: jnp.asarray(v) for k, v in stats.items()}
    got = jax.jit(lambda x, s: normalize(x, s, normalization_type, mask=mask, xp=jnp))(jnp.asarray(values), jax_stats)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-6)
    back = jax.jit(lambda y: unnormalize(y, stats, normalization_type, mask=mask, xp=jnp))(got)
    np.testing.assert_allclose(
        np.asarray(back), unnormalize(expected, stats, normalization_type, mask=mask), rtol=1e-5, atol=1e-5
    )


def make_trajectory_dataset(lengths=(3, 6, 4), seed=3) -> tuple[list[dict], DLataset]:
    rng = np.random.default_rng(seed)
    trajs = [
        {
            "action": (rng.normal(size=(n, 5)) * [1, 20, 0.01, 3, 1]).astype(np.float32),
            "observation": {
                "proprio": rng.uniform(-2, 2, size=(n, 3)).astype(np.float32),
                "image_primary": np.array([b"img"] * n),
            },
        }
        for n in lengths
    ]
    signature = {
        "action": tf.TensorSpec([None, 5], tf.float32),
        "observation": {
            "proprio": tf.TensorSpec([None, 3], tf.float32),
            "image_primary": tf.TensorSpec([None], tf.string),
        },
    }
    return trajs, DLataset(tf.data.Dataset.from_generator(lambda: iter(trajs), output_signature=signature))


@pytest.mark.parametrize("normalization_type", TYPES)
def test_normalize_action_and_proprio_in_tf_data_matches_numpy(normalization_type):
    trajs, dataset = make_trajectory_dataset()
    statistics = {
        "action": stats_of(np.concatenate([t["action"] for t in trajs])),
        "proprio": stats_of(np.concatenate([t["observation"]["proprio"] for t in trajs])),
        "num_transitions": 13,
        "num_trajectories": 3,
    }
    action_mask = [True, True, True, True, False]
    proprio_mask = [False, True, True]
    normalized = dataset.traj_map(
        lambda traj: statistics_lib.normalize_action_and_proprio(
            traj, statistics, normalization_type, action_mask=action_mask, proprio_mask=proprio_mask
        )
    )
    assert normalized.element_spec["action"].dtype == tf.float32
    assert normalized.element_spec["observation"]["proprio"].dtype == tf.float32
    outputs = list(normalized.iterator())
    assert len(outputs) == len(trajs)
    for traj, out in zip(trajs, outputs, strict=True):
        np.testing.assert_allclose(
            out["action"],
            normalize(traj["action"], statistics["action"], normalization_type, action_mask),
            rtol=1e-6,
            atol=1e-6,
        )
        np.testing.assert_allclose(
            out["observation"]["proprio"],
            normalize(traj["observation"]["proprio"], statistics["proprio"], normalization_type, proprio_mask),
            rtol=1e-6,
            atol=1e-6,
        )
        np.testing.assert_array_equal(out["action"][:, 4], traj["action"][:, 4])
        np.testing.assert_array_equal(out["observation"]["proprio"][:, 0], traj["observation"]["proprio"][:, 0])
        np.testing.assert_array_equal(out["observation"]["image_primary"], traj["observation"]["image_primary"])
        if normalization_type != "bounds_q99":
            restored = unnormalize(out["action"], statistics["action"], normalization_type, action_mask)
            np.testing.assert_allclose(restored, traj["action"], rtol=1e-5, atol=1e-5)


def test_normalize_action_and_proprio_validates_inputs():
    trajs, dataset = make_trajectory_dataset()
    statistics = {
        "action": stats_of(np.concatenate([t["action"] for t in trajs])),
        "proprio": stats_of(np.concatenate([t["observation"]["proprio"] for t in trajs])),
    }
    with pytest.raises(InputError, match="unknown normalization type 'foo' for action_proprio_normalization_type"):
        statistics_lib.normalize_action_and_proprio(trajs[0], statistics, "foo")
    with pytest.raises(InputError, match="action_normalization_mask has shape \\(2,\\); expected length 5"):
        dataset.traj_map(
            lambda t: statistics_lib.normalize_action_and_proprio(t, statistics, "normal", action_mask=[True, False])
        )
    with pytest.raises(InputError, match="proprio_normalization_mask .* expected length 3"):
        statistics_lib.normalize_action_and_proprio(trajs[0], statistics, "bounds", proprio_mask=[True] * 4)


def test_module_does_not_import_tensorflow_or_jax():
    import os
    import subprocess
    import sys

    code = (
        "import sys; import octo_like.utils.normalization; "
        "bad = [m for m in ('tensorflow', 'jax') if m in sys.modules]; "
        "assert not bad, bad"
    )
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root)
