"""Flow matching over action chunks in pi0's convention, written once for the from-scratch flow head
(heads.FlowMatchingActionHead) and the VLA's action expert (action_expert.PrefixWithExpert).

x_t = t * noise + (1 - t) * actions, so t = 1 is pure noise and t = 0 the data; the network predicts
the velocity noise - actions. Training draws t = 0.001 + 0.999 * Beta(a, b) (pi0's Beta(1.5, 1) puts
more weight on noisy times and never reaches exactly 0); sampling integrates from t = 1 to 0 in equal
Euler steps under `jax.lax.scan` (one compiled step, whatever the step count).
"""

import jax
import jax.numpy as jnp
import numpy as np

from octo_like.utils.errors import InputError

PI0_TIME_BETA = (1.5, 1.0)


def sincos_embedding(time: jax.Array, dim: int) -> jax.Array:
    """Fixed sine-cosine features [..., dim] of times [..., 1] in [0, 1] (pi0's periods, 4e-3 .. 4);
    also the diffusion head's time features."""
    periods = 4e-3 * (4.0 / 4e-3) ** np.linspace(0.0, 1.0, dim // 2)
    angles = time * (2 * np.pi / periods)
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def sample_flow_time(rng: jax.Array, shape: tuple[int, ...], beta: tuple[float, float] = PI0_TIME_BETA) -> jax.Array:
    """Training times t = 0.001 + 0.999 * Beta(*beta), of `shape`."""
    return 0.001 + 0.999 * jax.random.beta(rng, *beta, shape)


def flow_matching_error(predict_velocity, actions: jax.Array, noise: jax.Array, time: jax.Array) -> jax.Array:
    """Squared velocity error, elementwise like `actions` (the caller takes its masked mean).

    `time` broadcasts against `actions` (one t per chunk: [..., 1, 1]); `predict_velocity(noisy)` is
    the network at x_t with that time."""
    noisy = time * noise + (1 - time) * actions
    return jnp.square(predict_velocity(noisy).astype(jnp.float32) - (noise - actions))


def euler_sample(velocity, noise: jax.Array, num_steps: int, step_inputs=None) -> jax.Array:
    """Integrates `noise` at t = 1 to a sample at t = 0: x <- x - velocity(x, t, step_input) / num_steps
    at t = 1, 1 - 1/num_steps, ... `step_inputs` is None or a pytree with a leading axis of
    `num_steps` (e.g. one dropout key per step)."""
    if num_steps < 1:
        raise InputError(f"num_steps={num_steps}; expected a positive number of Euler steps")
    times = 1 - np.arange(num_steps, dtype=np.float32) / num_steps

    def step(noisy, inputs):
        time, step_input = inputs
        return noisy - velocity(noisy, time, step_input).astype(noisy.dtype) / num_steps, None

    sample, _ = jax.lax.scan(step, noise, (times, step_inputs))
    return sample
