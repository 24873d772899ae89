"""The jitted train and eval steps, for any model loss `loss_fn(params, batch, rng, train) -> (loss, metrics)`."""

from collections.abc import Callable

import jax
import optax

from octo_like.train.state import TrainState

LossFn = Callable[[dict, dict, jax.Array, bool], tuple[jax.Array, dict]]


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation) -> Callable:
    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng, step_rng = jax.random.split(state.rng)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, step_rng, True)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads), "update_norm": optax.global_norm(updates)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

    return jax.jit(train_step, donate_argnums=0)


def make_eval_step(loss_fn: LossFn, extra_metrics_fn: Callable[[dict, dict, jax.Array], dict] | None = None) -> Callable:
    """Validation: the loss without dropout, plus `extra_metrics_fn(params, batch, rng)` (e.g. action MSE)."""

    def eval_step(params: dict, batch: dict, rng: jax.Array) -> dict:
        loss_rng, extra_rng = jax.random.split(rng)
        loss, metrics = loss_fn(params, batch, loss_rng, False)
        extra = extra_metrics_fn(params, batch, extra_rng) if extra_metrics_fn is not None else {}
        return {**metrics, **extra, "loss": loss}

    return jax.jit(eval_step)
