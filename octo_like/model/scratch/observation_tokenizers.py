"""Tokenizers: one batch entry (see the batch contract in DESIGN.md) -> a TokenGroup.

Observation tokenizers give timestep groups (tokens [B, T, N, C], mask [B, T, N]); task tokenizers
give task groups (tokens [B, N, C], mask [B, N]). A token's mask is False where its key is missing
(`pad_mask_dict`) and, for observations, where the timestep is padding (`timestep_pad_mask`), so
the transformer never attends to tokens made from padding.

All tokenizers are called the same way, so the model can loop over them:

    tokenizer(observation, task, *, train, language_embedding_BC=None) -> TokenGroup

`language_embedding_BC` (pooled language tokens, computed by the caller) is only read by FiLM
image tokenizers. The language tokenizer itself lives in `octo_like.model.language`; `language_mask`
here is the mask its tokens get.
"""

from collections.abc import Mapping
from typing import Any

import flax.core
import flax.linen as nn
import jax
import jax.numpy as jnp

from octo_like.model.tokens import TokenGroup
from octo_like.model.vision.stems import STEMS
from octo_like.utils.errors import InputError

Tree = Mapping[str, Any]  # an observation or task dict of the batch


def _entry(tree: Tree, key: str, where: str) -> Any:
    """tree[key], or an InputError naming the key and what `where` does hold."""
    if key not in tree:
        raise InputError(f"{where} has no '{key}'; available keys: {', '.join(sorted(tree)) or '(none)'}")
    return tree[key]


def _check_shape(x: jax.Array, key: str, expected: str, ndim: int) -> None:
    if x.ndim != ndim:
        raise InputError(f"{key} has shape {tuple(x.shape)}; expected {expected}")


def _present(tree: Tree, key: str, where: str) -> jax.Array:
    """`pad_mask_dict[key]` of an observation or task: bool, True where `key` exists."""
    pad_mask_dict = _entry(tree, "pad_mask_dict", where)
    return jnp.asarray(_entry(pad_mask_dict, key, f"{where}['pad_mask_dict']"), bool)


def observation_mask_BT(observation: Tree, key: str) -> jax.Array:
    """True where `key` exists and the timestep is real."""
    timestep_pad_mask_BT = jnp.asarray(_entry(observation, "timestep_pad_mask", "observation"), bool)
    return _present(observation, key, "observation") & timestep_pad_mask_BT


def checked_images(tree: Tree, key: str, where: str, ndim: int, image_size: tuple[int, int] | None) -> jax.Array:
    """`tree[key]`, checked to be images [B, (T,) H, W, 3] of `image_size` (when set)."""
    images = _entry(tree, key, where)
    label = key if where == "observation" else f"{where} {key}"
    _check_shape(images, label, "uint8 [B, T, H, W, 3]" if ndim == 5 else "uint8 [B, H, W, 3]", ndim)
    # Flax would also fail on a new size, but deep inside a layer with an unrelated-looking shape.
    if image_size is not None and tuple(images.shape[-3:-1]) != tuple(image_size):
        height, width = images.shape[-3:-1]
        raise InputError(f"{label} has size {height}x{width}; the model was built for {image_size[0]}x{image_size[1]}")
    return images


def _make_stem(name: str, stem_kwargs: Mapping[str, Any], use_film: bool) -> nn.Module:
    if name not in STEMS:
        raise InputError(f"unknown stem '{name}'; expected one of {', '.join(STEMS)}")
    return STEMS[name](**stem_kwargs, use_film=use_film, name="stem")


class ImageTokenizer(nn.Module):
    """`observation["image_<camera>"]` uint8 [B, T, H, W, 3] -> tokens [B, T, h*w, C], one per
    stem output position. With `use_film` the stem is conditioned on `language_embedding_BC`.
    `image_size` (H, W), when set, is checked so a wrong resolution fails with a clear message.

    With `fuse_goal` the goal image of the same camera (`task["image_<camera>"]`, uint8 [B, H, W, 3])
    is stacked on every frame's channels before the stem (early fusion, as Octo does): the goal
    costs no tokens of its own. A task without that goal (`pad_mask_dict` False) gets a black goal.
    Each frame's tokens still depend on that frame (and the episode's task) alone."""

    camera: str
    stem: str = "small_stem"
    stem_kwargs: Mapping[str, Any] = flax.core.FrozenDict()
    use_film: bool = False
    image_size: tuple[int, int] | None = None
    fuse_goal: bool = False

    @nn.compact
    def __call__(
        self, observation: Tree, task: Tree, *, train: bool, language_embedding_BC: jax.Array | None = None
    ) -> TokenGroup:
        key = f"image_{self.camera}"
        images_BTHWC = checked_images(observation, key, "observation", 5, self.image_size)
        batch, window = images_BTHWC.shape[:2]
        cond_NC = None
        if self.use_film:
            if language_embedding_BC is None:
                raise InputError(f"ImageTokenizer for {key} has use_film=True but got no language_embedding_BC")
            # Images are flattened batch-major below, so each of a sample's T frames gets its embedding.
            cond_NC = jnp.repeat(language_embedding_BC, window, axis=0)
        if self.fuse_goal:
            goal_BHWC = checked_images(task, key, "task", 4, self.image_size)
            frame_shape = list(images_BTHWC.shape[2:])
            if list(goal_BHWC.shape[1:]) != frame_shape:
                raise InputError(
                    f"task {key} has shape {tuple(goal_BHWC.shape)}; expected the frames' [B, *{frame_shape}]"
                )
            goal_BHWC = jnp.where(
                _present(task, key, "task")[:, None, None, None], goal_BHWC, jnp.zeros_like(goal_BHWC)
            )
            goal_BTHWC = jnp.broadcast_to(goal_BHWC[:, None], images_BTHWC.shape)
            images_BTHWC = jnp.concatenate([images_BTHWC, goal_BTHWC], axis=-1)
        stem = _make_stem(self.stem, self.stem_kwargs, self.use_film)
        features_NhwC = stem(images_BTHWC.reshape(batch * window, *images_BTHWC.shape[2:]), cond_NC, train=train)
        tokens_BTNC = features_NhwC.reshape(batch, window, -1, features_NhwC.shape[-1])
        mask_BTN = jnp.broadcast_to(observation_mask_BT(observation, key)[:, :, None], tokens_BTNC.shape[:3])
        return TokenGroup(tokens_BTNC, mask_BTN)


class GoalImageTokenizer(nn.Module):
    """Goal image `task["image_<camera>"]` uint8 [B, H, W, 3] -> task tokens [B, h*w, C]."""

    camera: str
    stem: str = "small_stem"
    stem_kwargs: Mapping[str, Any] = flax.core.FrozenDict()
    image_size: tuple[int, int] | None = None

    @nn.compact
    def __call__(
        self, observation: Tree, task: Tree, *, train: bool, language_embedding_BC: jax.Array | None = None
    ) -> TokenGroup:
        key = f"image_{self.camera}"
        images_BHWC = checked_images(task, key, "task", 4, self.image_size)
        features_BhwC = _make_stem(self.stem, self.stem_kwargs, use_film=False)(images_BHWC, train=train)
        tokens_BNC = features_BhwC.reshape(features_BhwC.shape[0], -1, features_BhwC.shape[-1])
        mask_BN = jnp.broadcast_to(_present(task, key, "task")[:, None], tokens_BNC.shape[:2])
        return TokenGroup(tokens_BNC, mask_BN)


class ProprioTokenizer(nn.Module):
    """`observation["proprio"]` float [B, T, P] -> tokens.

    linear: one token per timestep, Dense(P -> token_dim): tokens [B, T, 1, C].
    binned: one token per proprio dimension: tokens [B, T, P, C]. Each (normalized) value is clipped
      to [low, high] and put in one of `n_bins` equal-width bins; dimension p, bin k is embedded as
      row k of dimension p's own learned table, so the token says which dimension it is as well.
    """

    mode: str = "linear"
    n_bins: int = 256
    low: float = -2.0
    high: float = 2.0
    token_dim: int = 256

    @nn.compact
    def __call__(
        self, observation: Tree, task: Tree, *, train: bool, language_embedding_BC: jax.Array | None = None
    ) -> TokenGroup:
        proprio_BTP = jnp.asarray(_entry(observation, "proprio", "observation"), jnp.float32)
        _check_shape(proprio_BTP, "proprio", "float32 [B, T, P]", ndim=3)
        if self.mode == "linear":
            tokens_BTNC = nn.Dense(self.token_dim, name="projection")(proprio_BTP)[:, :, None, :]
        elif self.mode == "binned":
            tokens_BTNC = self._binned_tokens(proprio_BTP)
        else:
            raise InputError(f"unknown ProprioTokenizer mode '{self.mode}'; expected 'linear' or 'binned'")
        mask_BTN = jnp.broadcast_to(observation_mask_BT(observation, "proprio")[:, :, None], tokens_BTNC.shape[:3])
        return TokenGroup(tokens_BTNC, mask_BTN)

    def _binned_tokens(self, proprio_BTP: jax.Array) -> jax.Array:
        dims = proprio_BTP.shape[-1]
        shape_PKC = (dims, self.n_bins, self.token_dim)
        table_PKC = self.param("bin_embedding", nn.initializers.normal(stddev=0.02), shape_PKC)
        unit_BTP = (jnp.clip(proprio_BTP, self.low, self.high) - self.low) / (self.high - self.low)
        # `high` itself would land in bin n_bins; it belongs to the last bin.
        bins_BTP = jnp.minimum(jnp.floor(unit_BTP * self.n_bins).astype(jnp.int32), self.n_bins - 1)
        return table_PKC[jnp.arange(dims), bins_BTP]


def language_mask(task: Tree) -> jax.Array:
    """bool [B, L]: the real (not padding) tokens of instructions that exist."""
    language = _entry(task, "language_instruction", "task")
    attention_mask_BL = jnp.asarray(_entry(language, "attention_mask", "task['language_instruction']"), bool)
    return attention_mask_BL & _present(task, "language_instruction", "task")[:, None]


TOKENIZERS = {"image": ImageTokenizer, "goal_image": GoalImageTokenizer, "proprio": ProprioTokenizer}
