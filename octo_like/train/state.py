"""What a training step carries from one step to the next."""

import flax.struct
import jax
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    opt_state: optax.OptState
    rng: jax.Array

    @classmethod
    def create(cls, params: dict, optimizer: optax.GradientTransformation, rng: jax.Array) -> "TrainState":
        return cls(step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=optimizer.init(params), rng=rng)
