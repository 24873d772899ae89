"""The jitted train and eval steps, for any model loss `loss_fn(params, batch, rng, train) -> (loss, metrics)`.

Mixed precision: with `compute_dtype=jnp.bfloat16` the floating-point parameters are cast inside
the differentiated function (the policy's stems and transformer convert their inputs to their
parameters' dtype, octo_like/model/precision.py), so the forward and backward passes run in bf16
while the parameters, their gradients and the optimizer state stay float32. Gradient accumulation
splits the batch into `grad_accumulation_steps` strided micro-batches and averages their
gradients under `lax.scan` (one micro-batch of activations in memory at a time).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from octo_like.train.state import TrainState
from octo_like.utils.errors import InputError
from octo_like.utils.sharding import constrain_batch

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # the config's `compute_dtype` names
LossFn = Callable[[dict, dict, jax.Array, bool], tuple[jax.Array, dict]]


def cast_floats(tree, dtype):
    """Floating-point leaves of `tree` cast to `dtype`; integers, booleans and keys untouched."""
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def split_micro_batches(batch: dict, num_micro_batches: int) -> dict:
    """Every array [B, ...] -> [num_micro_batches, B / num_micro_batches, ...], micro-batch i taking
    rows i, i + n, i + 2n, ... A mesh holds the batch in contiguous blocks of rows per device, so
    strided micro-batches keep every device busy in every micro-step (contiguous ones would each
    sit on a few devices)."""

    def split(x):
        if x.shape[0] % num_micro_batches:
            raise InputError(
                f"batch of {x.shape[0]} is not divisible into grad_accumulation_steps={num_micro_batches} micro-batches"
            )
        return x.reshape(x.shape[0] // num_micro_batches, num_micro_batches, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree_util.tree_map(split, batch)


def _is_none(x) -> bool:
    return x is None


def without_frozen(params, frozen):
    """`params` with None in place of each frozen leaf (`frozen`: a pytree of bools like `params`,
    or None when all train)."""
    if frozen is None:
        return params
    return jax.tree_util.tree_map(lambda param, is_frozen: None if is_frozen else param, params, frozen)


def with_frozen(trained_params, params):
    """`trained_params` with its None leaves filled from `params`."""
    return jax.tree_util.tree_map(
        lambda trained, param: param if trained is None else trained, trained_params, params, is_leaf=_is_none
    )


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    frozen=None,
    compute_dtype=jnp.float32,
    grad_accumulation_steps: int = 1,
    donate: bool = True,
    state_shardings=None,
    batch_sharding=None,
) -> Callable:
    """The jitted step. `frozen` (`optim.frozen_parameters`: a pytree of bools like the parameters,
    True where one does not train) keeps the frozen parameters out of differentiation; their
    gradients are zeros and `grad_norm` is the trained parameters'. With `state_shardings` (a
    pytree of shardings like the state, see `mesh.param_shardings`) and `batch_sharding`, inputs
    and the new state are pinned to them, so the state keeps its layout from step to step (no
    resharding, no recompilation)."""

    def compute_loss(trained_params, params, batch, rng):
        params = with_frozen(trained_params, params)
        loss, metrics = loss_fn(cast_floats(params, compute_dtype), batch, rng, True)
        return loss.astype(jnp.float32), metrics

    # Differentiated with respect to the trained parameters only: the frozen ones enter as
    # constants, so no backward pass runs through a frozen encoder for a gradient that the
    # optimizer would drop.
    grad_fn = jax.value_and_grad(compute_loss, has_aux=True)

    def trained_gradients(params, batch, rng):
        trained_params = without_frozen(params, frozen)
        if grad_accumulation_steps == 1:
            return grad_fn(trained_params, params, batch, rng)
        micro_batches = split_micro_batches(batch, grad_accumulation_steps)

        def accumulate(carry, inputs):
            index, micro_batch = inputs
            micro_batch = jax.tree_util.tree_map(constrain_batch, micro_batch)
            (loss, metrics), grads = grad_fn(trained_params, params, micro_batch, jax.random.fold_in(rng, index))
            carry = jax.tree_util.tree_map(jnp.add, carry, ((loss, metrics), grads))
            return carry, None

        first_micro_batch = jax.tree_util.tree_map(lambda x: x[0], micro_batches)
        zeros = jax.tree_util.tree_map(
            jnp.zeros_like, jax.eval_shape(grad_fn, trained_params, params, first_micro_batch, rng)
        )
        total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accumulation_steps), micro_batches))
        return jax.tree_util.tree_map(lambda x: x / grad_accumulation_steps, total)

    def gradients(params, batch, rng):
        (loss, metrics), trained_grads = trained_gradients(params, batch, rng)
        # Zeros where a parameter is frozen: the optimizer's tree has every parameter.
        grads = jax.tree_util.tree_map(
            lambda grad, param: jnp.zeros_like(param) if grad is None else grad, trained_grads, params, is_leaf=_is_none
        )
        return (loss, metrics), grads

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng, step_rng = jax.random.split(state.rng)
        (loss, metrics), grads = gradients(state.params, batch, step_rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
            "update_norm": optax.global_norm(updates),
        }
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

    donate_argnums = 0 if donate else ()
    if state_shardings is None:
        return jax.jit(train_step, donate_argnums=donate_argnums)
    return jax.jit(
        train_step,
        donate_argnums=donate_argnums,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
    )


def make_eval_step(
    loss_fn: LossFn, extra_metrics_fn: Callable[[dict, dict, jax.Array], dict] | None = None
) -> Callable:
    """Validation: the loss without dropout, plus `extra_metrics_fn(params, batch, rng)` (e.g. action MSE)."""

    def eval_step(params: dict, batch: dict, rng: jax.Array) -> dict:
        loss_rng, extra_rng = jax.random.split(rng)
        loss, metrics = loss_fn(params, batch, loss_rng, False)
        extra = extra_metrics_fn(params, batch, extra_rng) if extra_metrics_fn is not None else {}
        return {**metrics, **extra, "loss": loss}

    return jax.jit(eval_step)
