"""Action/proprio normalization, written once over an array namespace `xp`.

No tensorflow or jax import here: the model and eval code (which never import TF) call these with
numpy (the default) or `jax.numpy`; the TF data pipeline passes `tf.experimental.numpy`
(see `statistics.normalize_action_and_proprio`).

`stats` is one entry of the dataset statistics (`statistics["action"]` or `statistics["proprio"]`):
per-dimension arrays (length D = x.shape[-1]) under mean, std, min, max, q01, q99.

Types (eps = 1e-8):
  normal:     y = (x - mean) / (std + eps)                      x = y * (std + eps) + mean
  bounds:     y = clip(2 (x - min) / (max - min + eps) - 1, -1, 1)
              x = (y + 1) / 2 (max - min + eps) + min
  bounds_q99: as bounds with q01 / q99 in place of min / max (values outside the quantiles clip).

Degenerate dimensions: where the scale (std, or the max-min / q99-q01 range) is below eps, the
dimension is (near) constant in the data. Dividing by ~eps there would turn float noise, or any
off-distribution value, into huge numbers (and for bounds a constant would land on -1, not the
middle of the range). Such dimensions normalize to exactly 0, and unnormalize back to the constant
they had in the data (mean for normal, the lower bound — equal to the upper — for bounds types), so
round trips of in-distribution data stay exact.

`mask` (bool per dimension, default all True): False leaves that dimension raw in both directions
(e.g. a gripper already in {0, 1}); masked values pass through bit-identically.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from octo_like.utils.errors import InputError

NORMALIZATION_TYPES = ("normal", "bounds", "bounds_q99")
EPS = 1e-8

# The statistics each type reads: (center or lower bound, scale or upper bound).
_STAT_KEYS = {"normal": ("mean", "std"), "bounds": ("min", "max"), "bounds_q99": ("q01", "q99")}


def check_normalization_type(name: Any, key: str = "action_proprio_normalization_type") -> str:
    """Returns `name` if it is a known normalization type, else raises a one-line InputError."""
    if not isinstance(name, str) or name not in NORMALIZATION_TYPES:
        raise InputError(
            f"unknown normalization type {name!r} for {key}; expected one of {', '.join(NORMALIZATION_TYPES)}"
        )
    return name


def _dim(x) -> int | None:
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) == 0:
        return None
    dim = shape[-1]
    return None if dim is None else int(dim)


def _prepare(x, stats: Mapping[str, Any], normalization_type: str, mask, xp):
    """(x, lo, hi, degenerate, mask or None) as arrays of x's dtype; validates keys and lengths."""
    check_normalization_type(normalization_type)
    lo_key, hi_key = _STAT_KEYS[normalization_type]
    missing = [k for k in (lo_key, hi_key) if k not in stats]
    if missing:
        raise InputError(
            f"dataset statistics lack {', '.join(repr(k) for k in missing)} needed for normalization type "
            f"'{normalization_type}'; have keys {', '.join(sorted(stats))}"
        )
    x = xp.asarray(x)
    dtype = x.dtype
    lo = xp.asarray(stats[lo_key], dtype=dtype)
    hi = xp.asarray(stats[hi_key], dtype=dtype)
    num_dims = _dim(lo)
    if num_dims is None or lo.shape != hi.shape or len(lo.shape) != 1:
        raise InputError(
            f"dataset statistics '{lo_key}' and '{hi_key}' must be 1-D arrays of the same length; "
            f"got shapes {tuple(lo.shape)} and {tuple(hi.shape)}"
        )
    x_dim = _dim(x)
    if x_dim is not None and x_dim != num_dims:
        raise InputError(f"array to normalize has last dimension {x_dim} but the statistics have {num_dims} dimensions")
    if mask is not None:
        mask_shape = np.shape(mask)
        if len(mask_shape) != 1 or mask_shape[0] != num_dims:
            raise InputError(
                f"normalization mask has shape {tuple(mask_shape)}; expected length {num_dims} (one bool per dimension)"
            )
        mask = xp.asarray(np.asarray(mask, dtype=bool))
    eps = xp.asarray(EPS, dtype=dtype)
    scale = hi if normalization_type == "normal" else hi - lo
    degenerate = scale < eps
    return x, lo, hi, degenerate, mask, eps


def normalize(x, stats: Mapping[str, Any], normalization_type: str, mask: Sequence[bool] | None = None, xp=np):
    """Normalizes x [..., D] per dimension (see the module docstring); returns x's dtype."""
    x, lo, hi, degenerate, mask, eps = _prepare(x, stats, normalization_type, mask, xp)
    one = xp.ones_like(lo)
    zero = xp.zeros_like(x)
    if normalization_type == "normal":
        y = (x - lo) / xp.where(degenerate, one, hi + eps)
    else:
        y = 2 * (x - lo) / xp.where(degenerate, one, hi - lo + eps) - one
        y = xp.minimum(xp.maximum(y, -one), one)
    y = xp.where(degenerate, zero, y)
    return y if mask is None else xp.where(mask, y, x)


def unnormalize(y, stats: Mapping[str, Any], normalization_type: str, mask: Sequence[bool] | None = None, xp=np):
    """Inverse of `normalize` (exact up to float rounding, for values the clip left alone)."""
    y, lo, hi, degenerate, mask, eps = _prepare(y, stats, normalization_type, mask, xp)
    if normalization_type == "normal":
        x = y * (hi + eps) + lo
    else:
        x = (y + 1) / 2 * (hi - lo + eps) + lo
    x = xp.where(degenerate, lo + xp.zeros_like(y), x)
    return x if mask is None else xp.where(mask, x, y)


def with_normalization_settings(
    statistics: Mapping,
    normalization_type: str,
    action_mask=None,
    proprio_mask=None,
    proprio_obs_key: str | None = None,
) -> dict:
    """One dataset's statistics plus how the pipeline normalized with them, so that inference
    (un)normalizes identically from the release alone; `proprio["obs_key"]` names the dataset
    observation the proprio was read from, so inference reads the same one."""
    statistics = dict(statistics)
    for key, mask in (("action", action_mask), ("proprio", proprio_mask)):
        statistics[key] = {**statistics[key], "normalization_type": normalization_type}
        if mask is not None:
            statistics[key]["mask"] = [bool(m) for m in mask]
    if proprio_obs_key is not None:
        statistics["proprio"]["obs_key"] = proprio_obs_key
    return statistics
