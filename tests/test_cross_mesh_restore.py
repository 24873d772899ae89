"""A train state saved on one mesh restores onto another (2x4 -> 8x1 and -> one device)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from octo_like.policy import release
from octo_like.train.checkpoint import restore_state
from octo_like.train.mesh import make_mesh, shard_params
from octo_like.train.state import TrainState


def make_state(mesh):
    params = {"dense": {"kernel": jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32) / 100.0, "bias": jnp.ones(32)}}
    return shard_params(TrainState.create(params, optax.adam(1e-3), jax.random.key(3)), mesh, fsdp_min_size=256)


def test_state_saved_on_2x4_restores_on_8x1_and_on_one_device(tmp_path):
    saved = make_state(make_mesh(data=2, fsdp=4))
    assert saved.params["dense"]["kernel"].addressable_shards[0].data.shape == (16, 32)  # really sharded
    manager = release.checkpoint_manager(str(tmp_path))
    release.save(manager, 5, saved.params, saved)
    manager.wait_until_finished()
    for mesh, shard_shape in (
        (make_mesh(data=8, fsdp=1), (64, 32)),
        (make_mesh(data=1, fsdp=1, devices=jax.devices()[:1]), (64, 32)),
    ):
        template = make_state(mesh)
        restored = restore_state(release.checkpoint_manager(str(tmp_path)), template)
        kernel = restored.params["dense"]["kernel"]
        assert kernel.sharding == template.params["dense"]["kernel"].sharding
        assert kernel.addressable_shards[0].data.shape == shard_shape
        np.testing.assert_array_equal(kernel, saved.params["dense"]["kernel"])
        np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(saved.rng))
