"""Mesh axis names shared by the model and the trainer, and the batch sharding hint for activations.

The trainer runs its steps under `jax.set_mesh(mesh)`; inside them, `constrain_batch` pins an
activation's leading (batch) axis to the (data, fsdp) devices, so that XLA keeps activations split
by example through every transformer block instead of choosing a layout from the FSDP-sharded
weights (which would all-gather activations rather than weights). Outside a mesh (inference,
single-device tests) it does nothing. `place_params` puts host values on a mesh slice by slice.
"""

import math

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")


def constrain_batch(x_B: jax.Array) -> jax.Array:
    """`x_B` with its leading axis constrained to the (data, fsdp) axes of the current mesh, if any.

    A batch that does not split evenly over those devices (batch-1 inference under a training
    mesh) is left to XLA's choice.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not all(axis in mesh.axis_names for axis in BATCH_AXES):
        return x_B
    if x_B.shape[0] % math.prod(mesh.shape[axis] for axis in BATCH_AXES):
        return x_B
    return jax.lax.with_sharding_constraint(x_B, PartitionSpec(BATCH_AXES))


def place_params(tree, shardings):
    """`tree` (host values or arrays, the same in every process) placed with `shardings` (a tree
    of NamedSharding like it). A leaf already laid out as asked stays as is; every other one is
    cut from its host copy, so each device receives only its own slice (no device ever holds a
    whole FSDP-sharded array, and each process fills only its own devices)."""
    return jax.tree_util.tree_map(_place, tree, shardings)


def _place(value, sharding: NamedSharding) -> jax.Array:
    if isinstance(value, jax.Array) and value.sharding == sharding:
        return value
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):  # typed keys travel as their raw data
        return jax.random.wrap_key_data(_place(jax.random.key_data(value), sharding), impl=jax.random.key_impl(value))
    host_value = np.asarray(value)
    return jax.make_array_from_callback(host_value.shape, sharding, lambda index: host_value[index])
