"""Compute in the dtype of the parameters: how the train step's `compute_dtype` reaches the model.

The step casts the parameters to bf16 (octo_like/train/step.py), but flax promotes a bf16 kernel
applied to a float32 input to float32, so a model fed float32 pixels or tokens would still compute
in float32. The entry points of the heavy parts (image stems, the block transformer) therefore
convert their inputs to the dtype their own parameters arrive in; everything downstream follows.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


def parameter_dtype(module: nn.Module, default=jnp.float32):
    """The floating dtype of `module`'s bound parameters (`default` while `init` creates them)."""
    for leaf in jax.tree_util.tree_leaves(module.variables.get("params", {})):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.dtype
    return default
