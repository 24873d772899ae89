"""Small convolutional image stems: uint8 images [N, H, W, 3] -> feature maps [N, h, w, C].

Both stems scale uint8 pixels to [-1, 1] themselves (no ImageNet mean/std: they train from scratch,
so a fixed symmetric range is all they need), use GroupNorm (no batch statistics, so train and
eval behave the same and nothing has to be threaded through `mutable`), and share one signature,

    stem(images_NHWC, cond_NC=None, *, train) -> features_NhwC

so tokenizers pick one by name from `STEMS`. With `use_film`, `cond_NC` (e.g. a pooled language
embedding) modulates the features through FiLM layers that start as the identity.

- `SmallStem`: Octo's SmallStem16 layout. 3x3 stride-2 convs, then one patchify conv to
  `num_features`; total stride `patch_size` (64x64 -> 4x4 tokens with the default 16).
- `ResNetStem`: a stride-2 conv, then residual stages that each halve the resolution; output stride
  2 ** (1 + len(stage_features)) (16 by default). FiLM after every residual block.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from octo_like.model.precision import parameter_dtype
from octo_like.utils.errors import InputError


def scale_images(images_NHWC: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [-1, 1]. Anything else is refused: a float image could already be
    scaled, and scaling it again would silently shift the input distribution. Several RGB images
    stacked on the channel axis (an observation with its goal image, early fusion) are accepted."""
    if images_NHWC.dtype != jnp.uint8 or images_NHWC.ndim != 4 or images_NHWC.shape[-1] % 3:
        raise InputError(
            f"stem input has dtype {images_NHWC.dtype} and shape {tuple(images_NHWC.shape)}; "
            "expected uint8 images [N, H, W, 3 * k]"
        )
    return images_NHWC.astype(jnp.float32) / 127.5 - 1.0


def group_norm(features: int) -> nn.GroupNorm:
    # 32 groups as in the ResNet/Octo stems, fewer where the width is not a multiple of 32 (small test models).
    return nn.GroupNorm(num_groups=math.gcd(32, features))


class FiLM(nn.Module):
    """x * (1 + gamma(cond)) + beta(cond), per channel. gamma and beta are zero-initialized, so a
    freshly initialized layer is the identity and conditioning is learned as a perturbation."""

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, cond_NC: jax.Array) -> jax.Array:
        gamma_beta_N2C = nn.Dense(2 * x_NHWC.shape[-1], kernel_init=nn.initializers.zeros)(cond_NC)
        gamma_NC, beta_NC = jnp.split(gamma_beta_N2C, 2, axis=-1)
        return x_NHWC * (1.0 + gamma_NC[:, None, None, :]) + beta_NC[:, None, None, :]


def check_condition(stem: nn.Module, cond_NC: jax.Array | None) -> None:
    """A FiLM stem needs a condition and a plain stem must not get one (it would be ignored)."""
    if stem.use_film and cond_NC is None:
        raise InputError(f"{type(stem).__name__} has use_film=True but got no condition (cond_NC is None)")
    if not stem.use_film and cond_NC is not None:
        raise InputError(f"{type(stem).__name__} has use_film=False but got a condition; set use_film=True to use it")


class SmallStem(nn.Module):
    """Octo's SmallStem: one 3x3 stride-2 conv + GroupNorm + ReLU per entry of `features`, then a
    patchify conv (kernel = stride = patch_size / 2 ** len(features)) to `num_features`. FiLM, when
    used, modulates the final feature map."""

    patch_size: int = 16
    features: tuple[int, ...] = (32, 96, 192, 384)
    num_features: int = 512
    use_film: bool = False

    @nn.compact
    def __call__(self, images_NHWC: jax.Array, cond_NC: jax.Array | None = None, *, train: bool) -> jax.Array:
        del train  # no dropout or batch statistics; taken so every stem is called the same way
        check_condition(self, cond_NC)
        conv_stride = 2 ** len(self.features)
        if self.patch_size % conv_stride:
            raise InputError(
                f"SmallStem patch_size={self.patch_size} is not a multiple of {conv_stride} "
                f"(the stride of its {len(self.features)} stride-2 convs)"
            )
        x = scale_images(images_NHWC).astype(parameter_dtype(self))
        for width in self.features:
            x = nn.Conv(width, (3, 3), strides=(2, 2), padding=1)(x)
            x = nn.relu(group_norm(width)(x))
        patch = self.patch_size // conv_stride
        x = nn.Conv(self.num_features, (patch, patch), strides=(patch, patch), padding="VALID", name="embedding")(x)
        if self.use_film:
            x = FiLM()(x, cond_NC)
        return x


class ResidualBlock(nn.Module):
    """Basic ResNet block (two 3x3 convs), with FiLM on the residual branch before the sum."""

    features: int
    stride: int = 1
    use_film: bool = False

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, cond_NC: jax.Array | None) -> jax.Array:
        y = nn.Conv(self.features, (3, 3), strides=(self.stride, self.stride), padding=1)(x_NHWC)
        y = nn.relu(group_norm(self.features)(y))
        y = nn.Conv(self.features, (3, 3), padding=1)(y)
        y = group_norm(self.features)(y)
        if self.use_film:
            y = FiLM()(y, cond_NC)
        shortcut = x_NHWC
        if self.stride != 1 or x_NHWC.shape[-1] != self.features:
            shortcut = nn.Conv(self.features, (1, 1), strides=(self.stride, self.stride), name="shortcut")(x_NHWC)
            shortcut = group_norm(self.features)(shortcut)
        return nn.relu(y + shortcut)


class ResNetStem(nn.Module):
    """A small ResNet: 3x3 stride-2 conv to `width`, then one stage per entry of `stage_features`
    (`blocks_per_stage` residual blocks, the first with stride 2), then a 1x1 conv to `num_features`.
    Output stride 2 ** (1 + len(stage_features))."""

    width: int = 32
    stage_features: tuple[int, ...] = (32, 64, 128)
    blocks_per_stage: int = 2
    num_features: int = 512
    use_film: bool = False

    @nn.compact
    def __call__(self, images_NHWC: jax.Array, cond_NC: jax.Array | None = None, *, train: bool) -> jax.Array:
        del train  # no dropout or batch statistics; taken so every stem is called the same way
        check_condition(self, cond_NC)
        x = nn.Conv(self.width, (3, 3), strides=(2, 2), padding=1)(
            scale_images(images_NHWC).astype(parameter_dtype(self))
        )
        x = nn.relu(group_norm(self.width)(x))
        for features in self.stage_features:
            for block in range(self.blocks_per_stage):
                x = ResidualBlock(features, stride=2 if block == 0 else 1, use_film=self.use_film)(x, cond_NC)
        return nn.Conv(self.num_features, (1, 1), name="embedding")(x)


STEMS = {"small_stem": SmallStem, "resnet": ResNetStem}
# SmallStem at the width of the tiny transformer (128): the stem of the CPU-sized configs.
TINY_SMALL_STEM_KWARGS = dict(features=(16, 32, 64, 128), num_features=128)
