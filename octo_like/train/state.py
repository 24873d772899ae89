"""What a training step carries from one step to the next."""

from collections.abc import Callable

import flax.struct
import jax
import optax

from octo_like.utils.sharding import place_params


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    opt_state: optax.OptState
    rng: jax.Array

    @classmethod
    def create(cls, params: dict, optimizer: optax.GradientTransformation, rng: jax.Array) -> "TrainState":
        return cls(step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=optimizer.init(params), rng=rng)

    @classmethod
    def create_sharded(
        cls, params: dict, optimizer: optax.GradientTransformation, rng: jax.Array, shardings_of: Callable
    ) -> "TrainState":
        """The state built on the mesh: the optimizer state is created already laid out as
        `shardings_of(state shapes)` says (it is never whole on one device: Adam's two moments are
        twice the parameters); `params` must already be placed (e.g. by `PolicyModel.create`)."""

        def create(params, rng):
            return cls.create(params, optimizer, rng)

        shardings = shardings_of(jax.eval_shape(create, params, rng))
        rng = place_params(rng, shardings.rng)
        return jax.jit(create, out_shardings=shardings)(params, rng)
