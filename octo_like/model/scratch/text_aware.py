"""Text-aware visual tokens (OTTER): the instruction picks the CLIP patch features the policy sees.

Axis letters: B batch, T window, F frames (B * T images), L instruction tokens, N patches, D CLIP's
joint embedding size, K pooled tokens per camera and timestep, W pooler width.

    patches_BND  the last CLIP block's attention output alone, post-LayerNorm'd and projected
                 (`CLIPModel.encode_image(...)["patch_embeds"]`): patches in the text space
    text_BLD     every instruction token through the text tower and its projection
    weights_BLN  = softmax_N(cos(text_l, patch_n) / temperature)
    selected_BLD = sum_n weights_BLN * (patches_BND + position_ND)   fixed 2-D sin-cos positions, so a
                                                                      selected feature says where it is
    tokens_BKW   = learned-query attention pooling of the selected features (instruction tokens only)

Special tokens (BOS, EOS) and padding select nothing: only words do. CLIP is frozen (its outputs
are cut from the gradient here and the optimizer freezes `clip/*`); the temperature and the pooler
are trained.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from octo_like.model.scratch.observation_tokenizers import checked_images, observation_mask_BT
from octo_like.model.tokens import TokenGroup
from octo_like.model.vision.clip import CLIPModel
from octo_like.utils.errors import InputError

SELECTIONS = ("text_aware", "pooled")


def sincos_positions_2d(grid: int, dim: int) -> np.ndarray:
    """float32 [grid * grid, dim]: half the channels encode the row, half the column (row-major patches)."""
    if dim % 4:
        raise InputError(f"2-D sin-cos positions need a dimension divisible by 4, got {dim}")
    frequencies = 1.0 / 10000 ** (np.arange(dim // 4) / (dim // 4))
    angles_GF = np.arange(grid)[:, None] * frequencies[None]
    axis_GE = np.concatenate([np.sin(angles_GF), np.cos(angles_GF)], axis=1)  # E = dim / 2
    rows, columns = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    return np.concatenate([axis_GE[rows.reshape(-1)], axis_GE[columns.reshape(-1)]], axis=1).astype(np.float32)


def _unit(x: jax.Array) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def select_patches(text_BLD, text_mask_BL, patches_BND, position_ND, temperature) -> tuple[jax.Array, jax.Array]:
    """(selected_BLD, weights_BLN): per instruction token, the softmax-weighted sum of its similar patches.

    Masked tokens get zeros (they are also masked in the pooler)."""
    similarity_BLN = jnp.einsum("bld,bnd->bln", _unit(text_BLD), _unit(patches_BND))
    weights_BLN = jax.nn.softmax(similarity_BLN / temperature, axis=-1)
    selected_BLD = jnp.einsum("bln,bnd->bld", weights_BLN, patches_BND + position_ND[None])
    return jnp.where(text_mask_BL[..., None], selected_BLD, 0.0), weights_BLN


class Temperature(nn.Module):
    """The selection temperature: fixed, or learned within [low, high].

    Learned, it is exp of a sigmoid-bounded log: smooth everywhere, so the gradient never vanishes
    the way it does outside a hard clip (OTTER clamps), and it cannot reach 0 (a one-hot softmax)."""

    initial: float = 0.07
    learned: bool = True
    low: float = 0.01
    high: float = 1.0

    @nn.compact
    def __call__(self) -> jax.Array:
        if not self.low < self.initial < self.high:
            raise InputError(
                f"temperature {self.initial} must lie strictly between low {self.low} and high {self.high}"
            )
        if not self.learned:
            return jnp.asarray(self.initial, jnp.float32)
        log_low, log_high = math.log(self.low), math.log(self.high)
        fraction = (math.log(self.initial) - log_low) / (log_high - log_low)
        raw = self.param("raw", nn.initializers.constant(math.log(fraction / (1 - fraction))), ())
        return jnp.exp(log_low + (log_high - log_low) * jax.nn.sigmoid(raw))


class AttentionPooler(nn.Module):
    """K learned queries attend to the (masked) inputs: pre-LayerNorm cross-attention and MLP blocks."""

    num_queries: int
    width: int
    num_heads: int = 4
    num_layers: int = 1

    @nn.compact
    def __call__(self, inputs_BLD: jax.Array, mask_BL: jax.Array) -> jax.Array:
        batch = inputs_BLD.shape[0]
        keys_BLW = nn.Dense(self.width, name="input_projection")(nn.LayerNorm(name="input_norm")(inputs_BLD))
        queries_KW = self.param("queries", nn.initializers.normal(0.02), (self.num_queries, self.width))
        queries_BKW = jnp.broadcast_to(queries_KW.astype(keys_BLW.dtype), (batch, self.num_queries, self.width))
        mask_B1KL = jnp.broadcast_to(mask_BL[:, None, None, :], (batch, 1, self.num_queries, mask_BL.shape[1]))
        for index in range(self.num_layers):
            attention = nn.MultiHeadDotProductAttention(self.num_heads, name=f"attention_{index}")
            queries_BKW = queries_BKW + attention(
                nn.LayerNorm(name=f"query_norm_{index}")(queries_BKW), keys_BLW, mask=mask_B1KL
            )
            hidden_BKF = nn.gelu(
                nn.Dense(4 * self.width, name=f"mlp_hidden_{index}")(
                    nn.LayerNorm(name=f"mlp_norm_{index}")(queries_BKW)
                )
            )
            queries_BKW = queries_BKW + nn.Dense(self.width, name=f"mlp_out_{index}")(hidden_BKF)
        return nn.LayerNorm(name="output_norm")(queries_BKW)


class TextAwareImageTokenizer(nn.Module):
    """`observation["image_<camera>"]` uint8 [B, T, H, W, 3] -> K text-aware tokens [B, T, K, W].

    The images go through the policy's frozen CLIP (passed in as `clip`, with the instruction's
    per-token joint embeddings as `language`); H = W must be CLIP's image size. `selection="pooled"`
    is the ablation: one token per image, CLIP's pooled image embedding, no instruction involved.
    """

    camera: str
    num_tokens: int = 8
    width: int = 256
    num_heads: int = 4
    selection: str = "text_aware"
    temperature_init: float = 0.07
    learn_temperature: bool = True

    reads_clip = True  # the policy passes its CLIP and the language tokens to this tokenizer

    @nn.compact
    def __call__(
        self,
        observation,
        task,
        *,
        train: bool,
        language_embedding_BC=None,
        language: TokenGroup | None = None,
        clip: CLIPModel | None = None,
    ) -> TokenGroup:
        del train, language_embedding_BC
        if self.selection not in SELECTIONS:
            raise InputError(
                f"TextAwareImageTokenizer selection='{self.selection}'; expected one of {', '.join(SELECTIONS)}"
            )
        if clip is None:
            raise InputError(f"TextAwareImageTokenizer for image_{self.camera} needs a CLIP: set model.clip")
        vision = clip.config.vision
        key = f"image_{self.camera}"
        images_BTHWC = checked_images(observation, key, "observation", 5, (vision.image_size, vision.image_size))
        batch, window = images_BTHWC.shape[:2]
        mean_C, std_C = np.asarray(vision.image_mean, np.float32), np.asarray(vision.image_std, np.float32)
        pixels_FHWC = ((images_BTHWC.astype(jnp.float32) / 255.0 - mean_C) / std_C).reshape(-1, *images_BTHWC.shape[2:])
        image = jax.lax.stop_gradient(clip.encode_image(pixels_FHWC))
        mask_BT = observation_mask_BT(observation, key)

        if self.selection == "pooled":
            tokens_BTKW = nn.Dense(self.width, name="pooled_projection")(image["image_embeds"]).reshape(
                batch, window, 1, self.width
            )
            return TokenGroup(tokens_BTKW, mask_BT[:, :, None])

        if language is None or language.tokens.shape[-1] != clip.config.projection_dim:
            raise InputError(
                f"TextAwareImageTokenizer for {key} needs the CLIP text tower's tokens: set "
                "model.language.encoder='clip'"
            )
        ids_BL = jnp.asarray(task["language_instruction"]["input_ids"], jnp.int32)
        special_BL = (ids_BL == clip.config.text.bos_token_id) | (ids_BL == clip.config.text.eos_token_id)
        words_BL = language.mask & ~special_BL
        # Every frame of a sample is selected from by that sample's instruction.
        words_FL = jnp.repeat(words_BL, window, axis=0)
        text_FLD = jnp.repeat(language.tokens, window, axis=0).astype(image["patch_embeds"].dtype)
        position_ND = sincos_positions_2d(vision.image_size // vision.patch_size, clip.config.projection_dim)
        temperature = Temperature(self.temperature_init, self.learn_temperature, name="temperature")()
        selected_FLD, _ = select_patches(text_FLD, words_FL, image["patch_embeds"], position_ND, temperature)
        pooled_FKW = AttentionPooler(self.num_tokens, self.width, self.num_heads, name="pooler")(selected_FLD, words_FL)
        tokens_BTKW = pooled_FKW.reshape(batch, window, self.num_tokens, self.width)
        # An instruction without a single word (missing, or dropped) selects nothing: no tokens.
        has_words_B = words_BL.any(axis=1)
        mask_BTK = jnp.broadcast_to((mask_BT & has_words_B[:, None])[:, :, None], tokens_BTKW.shape[:3])
        return TokenGroup(jnp.where(mask_BTK[..., None], tokens_BTKW, 0.0), mask_BTK)
