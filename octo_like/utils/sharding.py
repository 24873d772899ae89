"""Mesh axis names shared by the model and the trainer, and the batch sharding hint for activations.

The trainer runs its steps under `jax.set_mesh(mesh)`; inside them, `constrain_batch` pins an
activation's leading (batch) axis to the (data, fsdp) devices, so that XLA keeps activations split
by example through every transformer block instead of choosing a layout from the FSDP-sharded
weights (which would all-gather activations rather than weights). Outside a mesh (inference,
single-device tests) it does nothing.
"""

import math

import jax
from jax.sharding import PartitionSpec

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
