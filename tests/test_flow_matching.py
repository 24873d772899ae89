"""Flow matching written once (octo_like/model/flow_matching.py): the time draw, the loss's target and
Euler sampling, checked against the closed-form flow of a single data point."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from octo_like.model.flow_matching import euler_sample, flow_matching_error, sample_flow_time
from octo_like.utils.errors import InputError


def test_training_times_follow_pi0s_beta_and_never_reach_zero():
    times = np.asarray(sample_flow_time(jax.random.key(0), (10000,)))
    assert times.shape == (10000,) and 0.001 <= times.min() and times.max() <= 1.0
    assert abs(times.mean() - (0.6 * 0.999 + 0.001)) < 0.01  # Beta(1.5, 1) has mean 0.6
    uniform = np.asarray(sample_flow_time(jax.random.key(0), (10000,), beta=(1.0, 1.0)))
    assert abs(uniform.mean() - 0.5) < 0.01


def test_the_error_is_zero_for_the_true_velocity_and_its_square_otherwise():
    actions, noise = jax.random.normal(jax.random.key(0), (2, 4, 3)), jax.random.normal(jax.random.key(1), (2, 4, 3))
    time = jnp.array([0.2, 0.9])[:, None, None]
    seen = []

    def true_velocity(noisy):
        seen.append(noisy)
        return noise - actions

    np.testing.assert_array_equal(flow_matching_error(true_velocity, actions, noise, time), 0)
    np.testing.assert_allclose(seen[0], time * noise + (1 - time) * actions, rtol=1e-6)  # x_t
    error = flow_matching_error(jnp.zeros_like, actions, noise, time)
    np.testing.assert_allclose(error, (noise - actions) ** 2, rtol=1e-6)


@pytest.mark.parametrize("num_steps", [1, 3, 10])
def test_euler_steps_follow_the_straight_path_to_the_data_point(num_steps):
    # The flow that carries noise to one point: v(x_t, t) = (x_t - target) / t, constant along the
    # straight path, so Euler steps land on the target whatever their count.
    target = jnp.array([[0.5, -1.0, 2.0]])
    noise = jax.random.normal(jax.random.key(0), (1, 3))

    def velocity(noisy, time, step_input):
        del step_input  # e.g. a dropout key per step
        return (noisy - target) / time

    np.testing.assert_allclose(euler_sample(velocity, noise, num_steps), target, atol=1e-5)
    step_inputs = jnp.arange(num_steps)
    np.testing.assert_allclose(euler_sample(velocity, noise, num_steps, step_inputs), target, atol=1e-5)


def test_a_non_positive_step_count_fails_in_one_line():
    with pytest.raises(InputError, match="num_steps=0; expected a positive number of Euler steps"):
        euler_sample(lambda x, t, _: x, jnp.zeros(3), 0)
