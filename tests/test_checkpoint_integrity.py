"""Checkpoint checksums: recorded at save, verified at load and resume; damaged steps skipped and
rewritten; non-finite state never saved; releases written before checksums still load."""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from octo_like.policy import release
from octo_like.policy.model import PolicyModel
from octo_like.train.checkpoint import restore_state
from octo_like.utils import checksums
from octo_like.utils.errors import InputError

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
# Random bytes do not compress: orbax's zstd stores them as a raw block, where one flipped bit
# changes one value and nothing else notices (no error, no NaN): what only the checksums catch.
NOISE = np.random.default_rng(0).integers(np.iinfo(np.int32).min, np.iinfo(np.int32).max, 4096, dtype=np.int32)


def params_of(value: float) -> dict:
    return {
        "dense": {"kernel": jnp.full((64, 32), value, jnp.float32), "bias": jnp.arange(32, dtype=jnp.float32)},
        "noise": jnp.asarray(NOISE),
    }


def flip_bit_in_array_data(step_dir: pathlib.Path) -> pathlib.Path:
    """Flips one bit of the NOISE array's data in the step's files, as a damaged disk would,
    leaving every file's framing intact (orbax still reads it); returns the file."""
    needle = NOISE[1000:1016].tobytes()
    for path in sorted(step_dir.rglob("*")):
        if path.is_file() and needle in (data := path.read_bytes()):
            position = data.index(needle) + 9
            path.write_bytes(data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :])
            return path
    raise AssertionError(f"no raw data of the noise array found under {step_dir}")


def test_checksums_find_one_flipped_bit_and_do_not_depend_on_sharding():
    kernel = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)
    recorded, nonfinite = checksums.tree_checksums(
        {"kernel": kernel, "key": jax.random.key(3), "half": jnp.ones(5, jnp.bfloat16)}
    )
    assert nonfinite == [] and set(recorded) == {"kernel", "key", "half"}
    assert recorded["kernel"].startswith("xxh3_128:")
    damaged = kernel.copy()
    damaged.view(np.uint32)[17, 3] ^= 1 << 30
    assert (
        checksums.first_mismatch(
            recorded,
            checksums.tree_checksums(
                {**{"kernel": damaged}, "key": jax.random.key(3), "half": jnp.ones(5, jnp.bfloat16)}
            )[0],
        )
        == "kernel"
    )
    # The device checksum (arrays split over processes) gives one value whatever the layout.
    mesh = jax.make_mesh((8,), ("x",))
    sharded = jax.device_put(kernel, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x")))
    by_device = checksums.tree_checksums({"kernel": sharded}, {"kernel": "fmix64"})[0]["kernel"]
    assert (
        by_device.startswith("fmix64:")
        and by_device == checksums.tree_checksums({"kernel": kernel}, {"kernel": "fmix64"})[0]["kernel"]
    )
    assert checksums.tree_checksums({"kernel": damaged}, {"kernel": "fmix64"})[0]["kernel"] != by_device
    # Every device checksum of a tree comes from one program, compiled once for the tree, not once per shape.
    tree = {"kernel": sharded, "bias": jnp.arange(7.0), "key": jax.random.key(1), "flag": jnp.ones(3, bool)}
    compiled_before = checksums._fmix64_all._cache_size()
    device_sums = checksums.tree_checksums(tree, dict.fromkeys(tree, "fmix64"))[0]
    assert checksums._fmix64_all._cache_size() == compiled_before + 1 and device_sums["kernel"] == by_device
    assert device_sums == {
        name: checksums.tree_checksums({name: leaf}, {name: "fmix64"})[0][name] for name, leaf in tree.items()
    }
    with pytest.raises(ValueError, match=r"^unknown checksum algorithm 'md5' for kernel; expected one of xxh3_128"):
        checksums.tree_checksums({"kernel": kernel}, {"kernel": "md5"})
    with_inf = {"x": jnp.array([1.0, jnp.inf])}
    assert checksums.tree_checksums(with_inf)[1] == ["x"]
    # Verifying a restore skips the finiteness pass; the checksum is the same.
    assert checksums.tree_checksums(with_inf, check_finite=False) == (checksums.tree_checksums(with_inf)[0], [])


def test_a_bit_flip_in_the_newest_step_is_skipped_with_a_warning_naming_the_step_and_array(tmp_path, caplog):
    manager = release.checkpoint_manager(str(tmp_path))
    release.save(manager, 1, params_of(1.0))
    release.save(manager, 2, params_of(2.0))
    manager.wait_until_finished()
    flip_bit_in_array_data(tmp_path / "2" / "params")
    params, step = release.restore_params(str(tmp_path), jax.eval_shape(lambda: params_of(0.0)))
    assert step == 1
    np.testing.assert_array_equal(params["dense"]["kernel"], np.ones((64, 32)))
    assert "checkpoint step 2 of" in caplog.text and "array 'params/noise' fails its checksum" in caplog.text
    with pytest.raises(
        InputError,
        match=r"checkpoint step 2 of .* cannot be restored: DamagedCheckpointError: "
        r"array 'params/noise' fails its checksum",
    ):
        release.restore_params(str(tmp_path), jax.eval_shape(lambda: params_of(0.0)), step=2)


def test_resume_moves_a_damaged_newest_step_aside_so_that_it_is_saved_again(tmp_path, caplog):
    manager = release.checkpoint_manager(str(tmp_path))
    for step in (5, 6):
        params = params_of(float(step))
        release.save(manager, step, params, {"params": params, "step": jnp.int32(step)})
    manager.wait_until_finished()
    flip_bit_in_array_data(tmp_path / "6" / "state")
    state = restore_state(manager, jax.eval_shape(lambda: {"params": params_of(0.0), "step": jnp.int32(0)}))
    assert int(state["step"]) == 5
    assert manager.all_steps() == [5] and (tmp_path / release.DAMAGED_DIR / "6" / "state").is_dir()
    assert "moved damaged checkpoint step 6" in caplog.text
    # Step 6 is written again and verifies (before, orbax declined it as not newer than step 6).
    params = params_of(6.5)
    release.save(manager, 6, params, {"params": params, "step": jnp.int32(6)})
    release.check_step_saved(manager, 6, params)
    assert manager.all_steps() == [5, 6]


def test_a_step_not_newer_than_the_newest_is_refused_instead_of_reported_saved(tmp_path):
    manager = release.checkpoint_manager(str(tmp_path))
    release.save(manager, 3, params_of(1.0))
    manager.wait_until_finished()
    with pytest.raises(InputError, match=r"checkpoint step 2 was not saved to .*: it already holds step 3"):
        release.save(manager, 2, params_of(1.0))


def test_non_finite_parameters_or_state_are_never_saved(tmp_path):
    manager = release.checkpoint_manager(str(tmp_path))
    release.save(manager, 1, params_of(1.0))
    manager.wait_until_finished()
    bad = params_of(1.0)
    bad["dense"]["bias"] = bad["dense"]["bias"].at[3].set(jnp.nan)
    with pytest.raises(
        release.NonFiniteStateError,
        match=r"refusing to save checkpoint step 2 .*: array 'params/dense/bias' holds NaN or Inf",
    ):
        release.save(manager, 2, bad)
    with pytest.raises(release.NonFiniteStateError, match=r"array 'state/mu' holds NaN or Inf"):
        release.save(manager, 2, params_of(1.0), {"mu": jnp.array([jnp.inf])})
    manager.wait_until_finished()
    assert manager.all_steps() == [1] and sorted(os.listdir(tmp_path)) == ["1"]


def test_a_release_written_before_checksums_loads_with_a_note_and_acts_as_it_did(caplog):
    from test_policy import example_batch  # tests/ is on sys.path

    model = PolicyModel.load_pretrained(str(FIXTURES / "release_a34613f"))
    assert (
        "checkpoint step 1 of" in caplog.text
        and "has no checksums (written before they existed): loaded unverified" in caplog.text
    )
    actions = model.sample_actions(example_batch()["observation"], {"pad_mask_dict": {}}, rng=jax.random.key(0))
    # Recorded at XLA's default optimization level; the tests compile at level 0 (conftest), whose
    # float32 results differ in the last bits.
    np.testing.assert_allclose(
        np.asarray(actions), np.load(FIXTURES / "release_a34613f" / "reference_actions.npy"), rtol=1e-5, atol=1e-6
    )


def test_a_tampered_checksums_file_fails_the_step(tmp_path, caplog):
    manager = release.checkpoint_manager(str(tmp_path))
    release.save(manager, 1, params_of(1.0))
    release.save(manager, 2, params_of(2.0))
    manager.wait_until_finished()
    [checksums_file] = [
        path for path in (tmp_path / "2" / release.CHECKSUMS).rglob("*") if path.is_file() and path.suffix != ".txt"
    ]
    checksums_file.write_text(json.dumps({"format": "other"}))
    _, step = release.restore_params(str(tmp_path), jax.eval_shape(lambda: params_of(0.0)))
    assert step == 1 and "its checksums file is not of format" in caplog.text
