"""The policy's loss and gradients on a data x fsdp mesh equal the unsharded ones (8 CPU devices)."""

import re

import jax
import numpy as np
import pytest
from distributed_worker import global_batch
from test_policy import STATISTICS, small_config

from octo_like.policy.model import PolicyModel
from octo_like.train.mesh import batch_sharding, make_mesh, param_shardings, replicated, shard_batch, shard_params

# float32 reductions split over devices sum in another order: rounding-level differences only.
TOLERANCE = 1e-5
FSDP_MIN_SIZE = 256  # low enough that the small model's kernels are split


@pytest.fixture(scope="module")
def model_and_batch():
    config = small_config()
    config["model"]["language"] = None
    batch = global_batch(0)
    return PolicyModel.create(config, batch, STATISTICS, jax.random.key(0)), batch


def loss_and_grads(model):
    return jax.value_and_grad(lambda params, batch, rng: model.loss(params, batch, rng, True), has_aux=True)


@pytest.mark.parametrize("data, fsdp", [(1, 8), (8, 1), (2, 4)])
def test_loss_and_gradients_agree_across_mesh_shapes(model_and_batch, data, fsdp):
    model, batch = model_and_batch
    rng = jax.random.key(7)
    (reference_loss, _), reference_grads = jax.jit(loss_and_grads(model))(model.params, batch, rng)

    mesh = make_mesh(data=data, fsdp=fsdp)
    shardings = param_shardings(model.params, mesh, fsdp_min_size=FSDP_MIN_SIZE)
    step = jax.jit(
        loss_and_grads(model),
        in_shardings=(shardings, batch_sharding(mesh), replicated(mesh)),
        out_shardings=((replicated(mesh), None), shardings),
    )
    params = shard_params(model.params, mesh, fsdp_min_size=FSDP_MIN_SIZE)
    with jax.set_mesh(mesh):
        (loss, _), grads = step(params, shard_batch(batch, mesh), rng)

    np.testing.assert_allclose(loss, reference_loss, rtol=0, atol=TOLERANCE)
    for (path, value), (_, expected) in zip(
        jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves_with_path(reference_grads), strict=True
    ):
        np.testing.assert_allclose(value, expected, rtol=0, atol=TOLERANCE, err_msg=jax.tree_util.keystr(path))
    # The MLP kernel (32 x 64) is split along its 64-wide axis over fsdp; its gradient too.
    kernel_grad = grads["block_transformer"]["block_0"]["mlp_hidden"]["kernel"]
    assert kernel_grad.addressable_shards[0].data.shape == (32, 64 // fsdp)


def test_transformer_activations_are_constrained_to_the_batch_axes_under_a_mesh(model_and_batch):
    model, batch = model_and_batch
    mesh = make_mesh(data=2, fsdp=4)
    lower = lambda: jax.jit(loss_and_grads(model)).lower(model.params, batch, jax.random.key(0)).as_text()  # noqa: E731
    without_mesh = lower()
    with jax.set_mesh(mesh):
        with_mesh = lower()
    # On the transformer input and after its (one) block, batch axis over (data, fsdp): in the
    # forward pass and again in its transpose (the backward pass).
    batch_constraint = 'sdy.sharding_constraint %\\w+ <@mesh, \\[\\{"data", "fsdp"\\}'
    assert len(re.findall(batch_constraint, without_mesh)) == 0
    assert len(re.findall(batch_constraint, with_mesh)) == 2 * (1 + model.config["model"]["transformer"]["num_layers"])
