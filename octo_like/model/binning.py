"""Uniform binning of actions over [low, high]: one implementation for the discrete head (Octo)
and the VLA's bin tokens (RT-2 / OpenVLA). `xp` is numpy or jax.numpy."""

import jax.numpy as jnp


def bin_index(actions, low: float, high: float, n_bins: int, xp=jnp):
    """int32 index of the bin holding each action, after clipping into [low, high]."""
    fraction = (xp.clip(actions, low, high) - low) / (high - low)
    # `high` itself would land in bin n_bins; it belongs to the last bin.
    return xp.minimum(xp.floor(fraction * n_bins), n_bins - 1).astype(xp.int32)


def bin_center(index, low: float, high: float, n_bins: int, xp=jnp):
    """float32 center of each bin `index` (in [0, n_bins))."""
    return (low + (xp.asarray(index) + 0.5) * ((high - low) / n_bins)).astype(xp.float32)
