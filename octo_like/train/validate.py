"""Range checks of a training config's numbers, before any data or model work.

A value out of range would otherwise surface late and unclearly (a ZeroDivisionError after the
model is built for `save_interval=0`, a TensorFlow error for `batch_size=0`) or not at all (an
empty run for `num_steps=-5`): here it is one line naming the key, the value and the range.
Absent keys are left to their defaults; `None` is accepted where the key is optional.
"""

import math
from collections.abc import Callable, Mapping
from typing import Any

from octo_like.utils.errors import InputError


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _at_least(minimum: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: _integer(value) and value >= minimum), f"an integer >= {minimum}"


_POSITIVE = _at_least(1)
_NON_NEGATIVE = _at_least(0)
_POSITIVE_OR_NONE = ((lambda value: value is None or _POSITIVE[0](value)), "an integer >= 1 or None")
_POSITIVE_REAL = ((lambda value: _number(value) and value > 0), "a finite number > 0")
_NON_NEGATIVE_REAL = ((lambda value: _number(value) and value >= 0), "a finite number >= 0")
_FRACTION = ((lambda value: _number(value) and 0 <= value <= 1), "a number in [0, 1]")
_MOMENTUM = ((lambda value: _number(value) and 0 <= value < 1), "a number in [0, 1)")
_CLIP = (
    (lambda value: value is None or value == 0 or (_number(value) and value > 0)),
    "a finite number > 0, or 0/None for no clipping",
)
_MESH_SIZE = (
    (lambda value: _integer(value) and (value >= 1 or value == -1)),
    "an integer >= 1, or -1 for all remaining devices",
)

RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_steps": _POSITIVE,
    "log_interval": _POSITIVE,
    "eval_interval": _POSITIVE,
    "save_interval": _POSITIVE,
    "eval_batches": _NON_NEGATIVE,
    "seed": _NON_NEGATIVE,
    "grad_accumulation_steps": _POSITIVE,
    "max_checkpoints_to_keep": _POSITIVE_OR_NONE,
    "keep_checkpoint_every": _POSITIVE_OR_NONE,
    "dataset.batch_size": _POSITIVE,
    "dataset.shuffle_buffer_size": _POSITIVE,
    "dataset.traj_transform_kwargs.window_size": _POSITIVE,
    "dataset.traj_transform_kwargs.action_horizon": _POSITIVE,
    "optimizer.learning_rate": _POSITIVE_REAL,
    "optimizer.warmup_steps": _NON_NEGATIVE,
    "optimizer.final_lr_fraction": _FRACTION,
    "optimizer.weight_decay": _NON_NEGATIVE_REAL,
    "optimizer.clip_gradient": _CLIP,
    "optimizer.b1": _MOMENTUM,
    "optimizer.b2": _MOMENTUM,
    "mesh.data": _MESH_SIZE,
    "mesh.fsdp": _MESH_SIZE,
    "mesh.tensor": _MESH_SIZE,
    "rollout_eval.episodes": _POSITIVE,
    "rollout_eval.interval": _POSITIVE,
    "rollout_eval.workers": _POSITIVE,
    "rollout_eval.seed": _NON_NEGATIVE,
    "rollout_eval.max_episode_steps": _POSITIVE,
}

_ABSENT = object()


def _lookup(config: Mapping, dotted_key: str) -> Any:
    node = config
    for part in dotted_key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def check_training_config(config: Mapping) -> None:
    """Raises an InputError naming the first key whose value is out of its range."""
    for key, (in_range, expected) in RANGES.items():
        value = _lookup(config, key)
        if value is not _ABSENT and not in_range(value):
            raise InputError(f"config.{key}={value!r} is out of range; expected {expected}")
    if not isinstance(config.get("run_dir"), str) or not config["run_dir"]:
        raise InputError(f"config.run_dir={config.get('run_dir')!r}; expected a directory path")
