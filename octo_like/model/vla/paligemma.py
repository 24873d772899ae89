"""PaliGemma in Flax: SigLIP image tokens, projected, in place of the image tokens of a Gemma prefix.

Axis letters: B batch, L tokens, N image tokens, C width, V vocabulary.

`input_ids` hold one `image_token_id` per image patch where the image goes (the PaliGemma processor
puts them first); their embeddings become the projected SigLIP features, the rest are Gemma's
scaled token embeddings. Positions count from 1, as in transformers. The mask is PaliGemma's
prefix-LM mask: with `token_type_ids` (0 on the image and prefix, 1 on the suffix), prefix tokens
see the whole prefix bidirectionally and suffix tokens see the prefix and the suffix causally;
without them, plain causal. Padding (attention_mask 0) is never attended.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from octo_like.model.language.gemma import GemmaConfig, GemmaModel, causal_mask
from octo_like.model.language.inputs import check_text_inputs
from octo_like.model.vision.siglip import SiglipVisionConfig, SiglipVisionTransformer
from octo_like.utils.errors import InputError


@dataclasses.dataclass(frozen=True)
class PaliGemmaConfig:
    vision: SiglipVisionConfig
    text: GemmaConfig
    image_token_id: int

    def __post_init__(self):
        if self.vision.use_head:
            raise InputError("PaliGemma's SigLIP tower has no pooling head (vision_use_head must be False)")


def prefix_lm_mask(attention_mask_BL: jax.Array, token_type_ids_BL: jax.Array | None) -> jax.Array:
    """bool [B, L, L]: causal, plus bidirectional attention among the prefix (token type 0) tokens."""
    mask_BLL = causal_mask(attention_mask_BL)
    if token_type_ids_BL is None:
        return mask_BLL
    prefix_BL = token_type_ids_BL == 0
    return mask_BLL | (prefix_BL[:, :, None] & prefix_BL[:, None, :] & attention_mask_BL.astype(bool)[:, None, :])


def block_mask(attention_mask_BL: jax.Array, blocks_BL: jax.Array) -> jax.Array:
    """bool [B, L, L]: a token attends every valid token of its own block and of the blocks before
    (Octo's block-wise attention): bidirectional within a block, so that appended query tokens (action
    slots, bridge tokens) see each other while the prefix never sees them."""
    seen_BLL = blocks_BL[:, None, :] <= blocks_BL[:, :, None]
    return seen_BLL & attention_mask_BL.astype(bool)[:, None, :]


class MultiModalProjector(nn.Module):
    width: int

    @nn.compact
    def __call__(self, image_BNC: jax.Array) -> jax.Array:
        return nn.Dense(self.width, name="linear")(image_BNC)


def check_image_tokens(input_ids_BL, config: PaliGemmaConfig) -> None:
    """Every row must hold one image token per patch (eager inputs: numpy or concrete arrays)."""
    counts = set(jnp.sum(jnp.asarray(input_ids_BL) == config.image_token_id, axis=1).tolist())
    if counts != {config.vision.num_patches}:
        raise InputError(
            f"input_ids hold {sorted(counts)} image tokens (id {config.image_token_id}) per row; "
            f"expected {config.vision.num_patches}, one per image patch"
        )


class PaliGemma(nn.Module):
    config: PaliGemmaConfig

    def setup(self):
        config = self.config
        self.vision_tower = SiglipVisionTransformer(config.vision)
        self.multi_modal_projector = MultiModalProjector(config.text.hidden_size)
        self.language_model = GemmaModel(config.text)

    def embed(self, pixels_BHWC: jax.Array, input_ids_BL: jax.Array) -> jax.Array:
        """Token embeddings with the image tokens replaced by the projected SigLIP features."""
        config = self.config
        image_BNC = self.multi_modal_projector(self.vision_tower(pixels_BHWC)["last_hidden_state"])
        is_image_BL = input_ids_BL == config.image_token_id
        # An image token id past the vocabulary (PaliGemma's default) has no embedding row.
        text_BLC = self.language_model.embed(jnp.where(is_image_BL, 0, input_ids_BL))
        # The i-th image token of a row takes the i-th image feature.
        image_index_BL = jnp.clip(jnp.cumsum(is_image_BL, axis=1) - 1, 0, image_BNC.shape[1] - 1)
        image_BLC = jnp.take_along_axis(image_BNC, image_index_BL[..., None], axis=1).astype(text_BLC.dtype)
        return jnp.where(is_image_BL[..., None], image_BLC, text_BLC)

    def __call__(self, pixels_BHWC, input_ids_BL, attention_mask_BL, token_type_ids_BL=None) -> jax.Array:
        """Logits [B, L, V] (tied embeddings)."""
        check_text_inputs(input_ids_BL, attention_mask_BL, self.config.text.max_position_embeddings)
        positions_BL = jnp.broadcast_to(jnp.arange(input_ids_BL.shape[1]) + 1, input_ids_BL.shape)
        hidden_BLC, _ = self.language_model(
            self.embed(pixels_BHWC, input_ids_BL), positions_BL, prefix_lm_mask(attention_mask_BL, token_type_ids_BL)
        )
        return self.language_model.embed_tokens.attend(hidden_BLC)
