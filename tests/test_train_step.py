"""The train step: gradient accumulation equals one big batch; bf16 compute keeps fp32 state."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from octo_like.train.mesh import batch_sharding, make_mesh, shard_batch, shard_params
from octo_like.train.state import TrainState
from octo_like.train.step import make_train_step, split_micro_batches
from octo_like.utils.errors import InputError


def mlp_loss(params, batch, rng, train):
    del rng, train
    hidden = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    prediction = hidden @ params["w2"]
    loss = jnp.mean((prediction - batch["y"]) ** 2)
    return loss, {"mse": loss}


def setup(seed=0, batch_size=16):
    rng = np.random.default_rng(seed)
    params = {
        "w1": rng.normal(size=(6, 32)).astype(np.float32) * 0.3,
        "b1": np.zeros(32, np.float32),
        "w2": rng.normal(size=(32, 2)).astype(np.float32) * 0.3,
    }
    batch = {
        "x": rng.normal(size=(batch_size, 6)).astype(np.float32),
        "y": rng.normal(size=(batch_size, 2)).astype(np.float32),
    }
    return jax.tree_util.tree_map(jnp.asarray, params), batch


@pytest.mark.parametrize("optimizer", [optax.sgd(0.1), optax.adamw(1e-2)], ids=["sgd", "adamw"])
def test_four_micro_batches_equal_one_big_batch(optimizer):
    params, batch = setup()
    results = []
    for steps in (1, 4):
        state = TrainState.create(params, optimizer, jax.random.key(0))
        step = make_train_step(mlp_loss, optimizer, grad_accumulation_steps=steps, donate=False)
        for _ in range(3):
            state, metrics = step(state, batch)
        results.append((state.params, metrics))
    (big_params, big_metrics), (micro_params, micro_metrics) = results
    # Equal-sized micro-batches of a mean loss: the averaged gradients are the big batch's, up to
    # float32 summation order (tolerance 1e-6 relative, 1e-6 absolute).
    for key in big_params:
        np.testing.assert_allclose(micro_params[key], big_params[key], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(micro_metrics["loss"], big_metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(micro_metrics["grad_norm"], big_metrics["grad_norm"], rtol=1e-5)


def test_accumulation_on_a_mesh_spreads_every_micro_batch_over_all_devices():
    params, batch = setup(batch_size=64)
    optimizer = optax.sgd(0.1)
    reference_state, _ = make_train_step(mlp_loss, optimizer, donate=False)(
        TrainState.create(params, optimizer, jax.random.key(0)), batch
    )

    mesh = make_mesh(data=2, fsdp=4)
    state = shard_params(TrainState.create(params, optimizer, jax.random.key(0)), mesh, fsdp_min_size=64)
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    step = make_train_step(
        mlp_loss,
        optimizer,
        grad_accumulation_steps=4,
        donate=False,
        state_shardings=shardings,
        batch_sharding=batch_sharding(mesh),
    )
    with jax.set_mesh(mesh):
        new_state, _ = step(state, shard_batch(batch, mesh))
        lowered = step.lower(state, shard_batch(batch, mesh)).as_text()
    for key in params:
        np.testing.assert_allclose(new_state.params[key], reference_state.params[key], rtol=1e-6, atol=1e-6)
    # Each 16-row micro-batch is pinned to all 8 (data, fsdp) devices inside the scan.
    assert re.search(r'sdy.sharding_constraint %\w+ <@mesh, \[\{"data", "fsdp"\}, \{\}\]> : tensor<16x6xf32>', lowered)


def test_micro_batches_are_strided():
    micro_batches = split_micro_batches({"x": np.arange(8)}, 4)
    np.testing.assert_array_equal(micro_batches["x"], [[0, 4], [1, 5], [2, 6], [3, 7]])


def test_bf16_compute_keeps_float32_parameters_and_optimizer_state():
    params, batch = setup()
    optimizer = optax.adamw(1e-2)
    state = TrainState.create(params, optimizer, jax.random.key(0))
    step = make_train_step(mlp_loss, optimizer, compute_dtype=jnp.bfloat16, donate=False)
    new_state, metrics = step(state, batch)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(new_state.params))
    assert all(
        x.dtype == jnp.float32
        for x in jax.tree_util.tree_leaves(new_state.opt_state)
        if jnp.issubdtype(x.dtype, jnp.floating)
    )
    reference, _ = make_train_step(mlp_loss, optimizer, donate=False)(state, batch)
    # bf16 has an 8-bit mantissa: the step agrees with fp32 to about 1e-2 relative.
    np.testing.assert_allclose(metrics["loss"], mlp_loss(params, batch, None, True)[0], rtol=2e-2)
    for key in params:
        np.testing.assert_allclose(new_state.params[key], reference.params[key], atol=2e-3)


def test_indivisible_accumulation_fails_in_one_line():
    params, batch = setup()
    step = make_train_step(mlp_loss, optax.sgd(0.1), grad_accumulation_steps=3, donate=False)
    with pytest.raises(InputError, match="batch of 16 is not divisible into grad_accumulation_steps=3 micro-batches"):
        step(TrainState.create(params, optax.sgd(0.1), jax.random.key(0)), batch)


@jax.custom_vjp
def poisoned_backward(x):
    """The identity, whose backward pass gives NaN: it shows whether a gradient is computed."""
    return x


poisoned_backward.defvjp(lambda x: (x, None), lambda _, cotangent: (jnp.full_like(cotangent, jnp.nan),))


def loss_with_an_encoder(params, batch, rng, train):
    """The MLP on inputs passed through an `encoder` matrix, whose backward pass gives NaN."""
    encoded = batch["x"] @ poisoned_backward(params["encoder"])
    return mlp_loss(params, {**batch, "x": encoded}, rng, train)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_frozen_parameters_stay_out_of_differentiation(accumulation):
    params, batch = setup()
    params = {**params, "encoder": jnp.eye(6) * 0.5}
    frozen = {"w1": False, "b1": False, "w2": False, "encoder": True}
    labels = {name: "frozen" if is_frozen else "trained" for name, is_frozen in frozen.items()}
    optimizer = optax.multi_transform({"trained": optax.adamw(1e-2), "frozen": optax.set_to_zero()}, labels)
    state = TrainState.create(params, optimizer, jax.random.key(0))

    # Differentiating everything reaches the encoder's backward pass: its NaN shows in grad_norm.
    _, metrics = make_train_step(loss_with_an_encoder, optimizer, donate=False)(state, batch)
    assert np.isnan(metrics["grad_norm"])

    step = make_train_step(
        loss_with_an_encoder, optimizer, frozen=frozen, grad_accumulation_steps=accumulation, donate=False
    )
    new_state, metrics = step(state, batch)
    # The same step with the encoder applied beforehand, as data: what the trained leaves must get.
    encoded_batch = {**batch, "x": batch["x"] @ np.asarray(params["encoder"])}
    trained = {name: params[name] for name in ("w1", "b1", "w2")}
    trained_optimizer = optax.adamw(1e-2)
    reference, reference_metrics = make_train_step(
        mlp_loss, trained_optimizer, grad_accumulation_steps=accumulation, donate=False
    )(TrainState.create(trained, trained_optimizer, jax.random.key(0)), encoded_batch)
    np.testing.assert_array_equal(new_state.params["encoder"], params["encoder"])
    for name in trained:
        np.testing.assert_allclose(new_state.params[name], reference.params[name], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(metrics["grad_norm"], reference_metrics["grad_norm"], rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], reference_metrics["loss"], rtol=1e-6)
