"""The optimizer of a config: AdamW, warm-up then cosine or rsqrt decay, clipping, frozen parameters.

optimizer:
  learning_rate: 3e-4        peak, reached after warmup_steps
  warmup_steps: 1000
  decay: "cosine"            "cosine" (to final_lr_fraction at num_steps), "rsqrt" or "constant"
  weight_decay: 0.01
  clip_gradient: 1.0         global-norm clipping (0 or None: off)
  frozen_keys: ("language_encoder/*",)   glob patterns on "/"-joined parameter paths
  trainable_keys: None       when set, only parameters matching one of these patterns train
                             (finetuning modes); frozen_keys still apply on top
"""

import fnmatch
from collections.abc import Mapping, Sequence

import jax
import optax

from octo_like.utils.errors import InputError

DECAYS = ("cosine", "rsqrt", "constant")


def learning_rate_schedule(
    learning_rate: float, warmup_steps: int, num_steps: int, decay: str = "cosine", final_lr_fraction: float = 0.0
) -> optax.Schedule:
    if decay not in DECAYS:
        raise InputError(f"optimizer.decay='{decay}'; expected one of {', '.join(DECAYS)}")
    warmup = optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
    if decay == "cosine":
        after = optax.cosine_decay_schedule(learning_rate, max(num_steps - warmup_steps, 1), alpha=final_lr_fraction)
    elif decay == "rsqrt":
        # learning_rate * sqrt(warmup / step): continuous with the warm-up, as in Octo.
        after = lambda step: learning_rate * jax.lax.rsqrt((step + max(warmup_steps, 1)) / max(warmup_steps, 1))  # noqa: E731
    else:
        after = optax.constant_schedule(learning_rate)
    return optax.join_schedules([warmup, after], [warmup_steps])


def parameter_path(path: Sequence) -> str:
    return "/".join(str(getattr(key, "key", getattr(key, "name", key))) for key in path)


def frozen_mask(params, frozen_keys: Sequence[str], trainable_keys: Sequence[str] | None = None):
    """A pytree of bools over `params`: True where the "/"-joined path is frozen, i.e. matches a
    frozen pattern, or (when `trainable_keys` is given) matches none of the trainable patterns."""

    def frozen(path, _):
        name = parameter_path(path)
        if trainable_keys is not None and not any(fnmatch.fnmatch(name, pattern) for pattern in trainable_keys):
            return True
        return any(fnmatch.fnmatch(name, pattern) for pattern in frozen_keys)

    return jax.tree_util.tree_map_with_path(frozen, params)


def make_optimizer(
    params, config: Mapping, num_steps: int, always_frozen: Sequence[str] = ()
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, learning-rate schedule) for `params`; frozen parameters get no update at all.

    `always_frozen` (the model's frozen encoders, `PolicyModel.frozen_keys`) is frozen whatever the
    config says: a zero gradient alone would still let weight decay shrink a frozen encoder."""
    schedule = learning_rate_schedule(
        config["learning_rate"],
        config.get("warmup_steps", 0),
        num_steps,
        config.get("decay", "cosine"),
        config.get("final_lr_fraction", 0.0),
    )
    transforms = []
    if config.get("clip_gradient"):
        transforms.append(optax.clip_by_global_norm(config["clip_gradient"]))
    transforms.append(
        optax.adamw(
            schedule, b1=config.get("b1", 0.9), b2=config.get("b2", 0.999), weight_decay=config.get("weight_decay", 0.0)
        )
    )
    optimizer = optax.chain(*transforms)
    mask = frozen_parameters(params, config, always_frozen)
    if mask is not None:
        labels = jax.tree_util.tree_map(lambda frozen: "frozen" if frozen else "trained", mask)
        optimizer = optax.multi_transform({"trained": optimizer, "frozen": optax.set_to_zero()}, labels)
    return optimizer, schedule


def frozen_parameters(params, config: Mapping, always_frozen: Sequence[str] = ()):
    """The frozen mask (`frozen_mask`) of an optimizer config's `frozen_keys` and `trainable_keys`
    plus `always_frozen`, or None when every parameter trains: what `make_optimizer` leaves
    un-updated, and what `step.make_train_step(frozen=...)` leaves out of differentiation."""
    frozen_keys = (*config.get("frozen_keys", ()), *always_frozen)
    trainable_keys = config.get("trainable_keys")
    if not frozen_keys and trainable_keys is None:
        return None
    return frozen_mask(params, frozen_keys, None if trainable_keys is None else tuple(trainable_keys))
