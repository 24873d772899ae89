"""CLIP (vision and text towers with their projections) in Flax, named like transformers' CLIPModel.

Axis letters: B batch, L text tokens, N image tokens (class token first, then patches), C a tower's
width, D the joint embedding size (projection_dim), K heads, H head size, F MLP width.

Both towers are pre-LayerNorm transformers. The vision tower embeds non-overlapping patches with a
bias-free convolution, prepends a class token, adds learned positions and applies `pre_layrnorm`
(transformers' spelling); its pooled output is the class token after `post_layernorm`. The text
tower adds learned positions to token embeddings, runs causally (each token sees itself and the
tokens before it, and never padding), applies `final_layer_norm`, and pools at the first EOS token
(or, for configs written before transformers fixed `eos_token_id`, i.e. eos_token_id == 2, at the
highest token id, which is where the OpenAI tokenizer's EOS sits). Module names follow the
transformers checkpoint so that `octo_like/hf/clip.py` maps tensors one to one.

Besides what transformers returns, `encode_image` gives `patch_embeds`: the last block's attention
output alone (no residual, no MLP: ClearCLIP/OTTER), through `post_layernorm` and the visual
projection, so that every patch lives in the text embedding space (`text_aware.py` reads them).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from octo_like.model.language.inputs import check_text_inputs
from octo_like.model.precision import parameter_dtype
from octo_like.utils.errors import InputError

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
}
# The preprocessing of OpenAI's CLIP checkpoints (a checkpoint's preprocessor_config.json overrides).
OPENAI_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
LEGACY_EOS_TOKEN_ID = 2


@dataclasses.dataclass(frozen=True)
class CLIPTowerConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def check(self, where: str) -> None:
        if self.hidden_act not in ACTIVATIONS:
            raise InputError(f"{where}.hidden_act is '{self.hidden_act}'; expected one of {', '.join(ACTIVATIONS)}")
        if self.hidden_size % self.num_heads:
            raise InputError(
                f"{where}.hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_heads}"
            )


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(CLIPTowerConfig):
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    image_mean: tuple[float, ...] = OPENAI_IMAGE_MEAN
    image_std: tuple[float, ...] = OPENAI_IMAGE_STD

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig(CLIPTowerConfig):
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    bos_token_id: int = 49406
    eos_token_id: int = 49407


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    vision: CLIPVisionConfig
    text: CLIPTextConfig
    projection_dim: int = 512

    def __post_init__(self):
        self.vision.check("vision_config")
        self.text.check("text_config")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "clip config") -> "CLIPConfig":
        """The inverse of `to_dict` (a release's config.json); unknown or missing fields are one InputError."""
        try:
            vision = dict(raw["vision"])
            vision["image_mean"], vision["image_std"] = tuple(vision["image_mean"]), tuple(vision["image_std"])
            return cls(CLIPVisionConfig(**vision), CLIPTextConfig(**raw["text"]), raw["projection_dim"])
        except (KeyError, TypeError) as error:
            raise InputError(
                f"{where} is not a CLIP config ({error}); expected vision, text and projection_dim"
            ) from None


def _tower(size: tuple[int, int, int, int], **kwargs) -> dict:
    width, layers, heads, mlp = size
    return dict(hidden_size=width, num_layers=layers, num_heads=heads, intermediate_size=mlp, **kwargs)


# The OpenAI releases (openai/clip-vit-base-patch32, -base-patch16, -large-patch14), and `tiny`:
# a CPU-sized tower pair for random-init experiments, 64x64 images in 8x8 patches, whose text tower
# reads the ids of the installed all-MiniLM-L6-v2 tokenizer (the data pipeline's default: vocab
# 30522, [CLS] = 101 as BOS, [SEP] = 102 as EOS).
CLIP_SIZES = {
    "tiny": CLIPConfig(
        CLIPVisionConfig(**_tower((128, 4, 4, 512), image_size=64, patch_size=8)),
        CLIPTextConfig(
            **_tower((128, 4, 4, 512), vocab_size=30522, max_position_embeddings=16, bos_token_id=101, eos_token_id=102)
        ),
        projection_dim=128,
    ),
    "B/32": CLIPConfig(
        CLIPVisionConfig(**_tower((768, 12, 12, 3072), patch_size=32)),
        CLIPTextConfig(**_tower((512, 12, 8, 2048))),
        projection_dim=512,
    ),
    "B/16": CLIPConfig(
        CLIPVisionConfig(**_tower((768, 12, 12, 3072), patch_size=16)),
        CLIPTextConfig(**_tower((512, 12, 8, 2048))),
        projection_dim=512,
    ),
    "L/14": CLIPConfig(
        CLIPVisionConfig(**_tower((1024, 24, 16, 4096), patch_size=14)),
        CLIPTextConfig(**_tower((768, 12, 12, 3072))),
        projection_dim=768,
    ),
}


def check_pixels(pixels_BHWC: jax.Array, image_size: int, num_channels: int, family: str) -> None:
    expected = (image_size, image_size, num_channels)
    if pixels_BHWC.ndim != 4 or tuple(pixels_BHWC.shape[1:]) != expected:
        raise InputError(
            f"{family} pixels have shape {tuple(pixels_BHWC.shape)}; expected [B, {', '.join(map(str, expected))}]"
        )


def layer_norm(eps: float, name: str) -> nn.LayerNorm:
    # Two-pass variance, as torch computes it.
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


class CLIPAttention(nn.Module):
    config: CLIPTowerConfig

    @nn.compact
    def __call__(self, hidden_BNC: jax.Array, mask_B1NN: jax.Array | None) -> jax.Array:
        config = self.config
        batch, length, width = hidden_BNC.shape
        head_size = width // config.num_heads

        def heads_BNKH(name: str) -> jax.Array:
            return nn.Dense(width, name=name)(hidden_BNC).reshape(batch, length, config.num_heads, head_size)

        attended_BNKH = jax.nn.dot_product_attention(
            heads_BNKH("q_proj"), heads_BNKH("k_proj"), heads_BNKH("v_proj"), mask=mask_B1NN
        )
        return nn.Dense(width, name="out_proj")(attended_BNKH.reshape(batch, length, width))


class CLIPMLP(nn.Module):
    config: CLIPTowerConfig

    @nn.compact
    def __call__(self, hidden_BNC: jax.Array) -> jax.Array:
        hidden_BNF = ACTIVATIONS[self.config.hidden_act](
            nn.Dense(self.config.intermediate_size, name="fc1")(hidden_BNC)
        )
        return nn.Dense(self.config.hidden_size, name="fc2")(hidden_BNF)


class CLIPEncoderLayer(nn.Module):
    """Pre-LayerNorm block; also returns its attention output (before the residual) for patch_embeds."""

    config: CLIPTowerConfig

    @nn.compact
    def __call__(self, hidden_BNC: jax.Array, mask_B1NN: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        config = self.config
        attention_BNC = CLIPAttention(config, name="self_attn")(
            layer_norm(config.layer_norm_eps, "layer_norm1")(hidden_BNC), mask_B1NN
        )
        hidden_BNC = hidden_BNC + attention_BNC
        normed_BNC = layer_norm(config.layer_norm_eps, "layer_norm2")(hidden_BNC)
        return hidden_BNC + CLIPMLP(config, name="mlp")(normed_BNC), attention_BNC


class CLIPEncoder(nn.Module):
    config: CLIPTowerConfig

    @nn.compact
    def __call__(self, hidden_BNC: jax.Array, mask_B1NN: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """(last hidden states, the last layer's attention output)."""
        attention_BNC = None
        for index in range(self.config.num_layers):
            hidden_BNC, attention_BNC = CLIPEncoderLayer(self.config, name=f"layers_{index}")(hidden_BNC, mask_B1NN)
        return hidden_BNC, attention_BNC


class CLIPVisionEmbeddings(nn.Module):
    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, pixels_BHWC: jax.Array) -> jax.Array:
        config = self.config
        patch = config.patch_size
        patches_BhwC = nn.Conv(
            config.hidden_size,
            (patch, patch),
            strides=(patch, patch),
            padding="VALID",
            use_bias=False,
            name="patch_embedding",
        )(pixels_BHWC)
        batch = patches_BhwC.shape[0]
        patches_BNC = patches_BhwC.reshape(batch, -1, config.hidden_size)
        class_C = self.param("class_embedding", nn.initializers.normal(config.hidden_size**-0.5), (config.hidden_size,))
        class_B1C = jnp.broadcast_to(class_C.astype(patches_BNC.dtype), (batch, 1, config.hidden_size))
        tokens_BNC = jnp.concatenate([class_B1C, patches_BNC], axis=1)
        positions = nn.Embed(config.num_patches + 1, config.hidden_size, name="position_embedding")
        return tokens_BNC + positions(jnp.arange(config.num_patches + 1))[None]


class CLIPVisionTransformer(nn.Module):
    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, pixels_BHWC: jax.Array) -> dict[str, jax.Array]:
        config = self.config
        check_pixels(pixels_BHWC, config.image_size, config.num_channels, "CLIP")
        hidden_BNC = CLIPVisionEmbeddings(config, name="embeddings")(pixels_BHWC)
        hidden_BNC = layer_norm(config.layer_norm_eps, "pre_layrnorm")(hidden_BNC)
        hidden_BNC, attention_BNC = CLIPEncoder(config, name="encoder")(hidden_BNC, None)
        post_layernorm = layer_norm(config.layer_norm_eps, "post_layernorm")
        return {
            "last_hidden_state": hidden_BNC,
            "pooler_output": post_layernorm(hidden_BNC[:, 0]),
            "patch_attention": post_layernorm(attention_BNC[:, 1:]),
        }


class CLIPTextEmbeddings(nn.Module):
    config: CLIPTextConfig

    @nn.compact
    def __call__(self, input_ids_BL: jax.Array) -> jax.Array:
        config = self.config
        tokens = nn.Embed(config.vocab_size, config.hidden_size, name="token_embedding")(input_ids_BL)
        positions = nn.Embed(config.max_position_embeddings, config.hidden_size, name="position_embedding")
        return tokens + positions(jnp.arange(input_ids_BL.shape[1]))[None]


class CLIPTextTransformer(nn.Module):
    config: CLIPTextConfig

    @nn.compact
    def __call__(self, input_ids_BL: jax.Array, attention_mask_BL: jax.Array) -> dict[str, jax.Array]:
        config = self.config
        check_text_inputs(input_ids_BL, attention_mask_BL, config.max_position_embeddings)
        length = input_ids_BL.shape[1]
        hidden_BLC = CLIPTextEmbeddings(config, name="embeddings")(input_ids_BL)
        causal_LL = jnp.tril(jnp.ones((length, length), bool))
        mask_B1LL = causal_LL[None, None] & attention_mask_BL.astype(bool)[:, None, None, :]
        hidden_BLC, _ = CLIPEncoder(config, name="encoder")(hidden_BLC, mask_B1LL)
        hidden_BLC = layer_norm(config.layer_norm_eps, "final_layer_norm")(hidden_BLC)
        if config.eos_token_id == LEGACY_EOS_TOKEN_ID:
            eos_position_B = jnp.argmax(input_ids_BL, axis=-1)
        else:
            eos_position_B = jnp.argmax(input_ids_BL == config.eos_token_id, axis=-1)
        pooled_BC = jnp.take_along_axis(hidden_BLC, eos_position_B[:, None, None], axis=1)[:, 0]
        return {"last_hidden_state": hidden_BLC, "pooler_output": pooled_BC}


class CLIPModel(nn.Module):
    """Both towers and projections; `__call__` touches every parameter (for `init`)."""

    config: CLIPConfig

    def setup(self):
        config = self.config
        self.vision_model = CLIPVisionTransformer(config.vision)
        self.text_model = CLIPTextTransformer(config.text)
        self.visual_projection = nn.Dense(config.projection_dim, use_bias=False)
        self.text_projection = nn.Dense(config.projection_dim, use_bias=False)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(2.6592), ())

    def encode_image(self, pixels_BHWC: jax.Array) -> dict[str, jax.Array]:
        """Normalized pixels [B, H, W, C] -> image_embeds [B, D], last_hidden_state [B, N, C] (before
        post_layernorm, as transformers returns it), patch_embeds [B, N - 1, D]."""
        dtype = parameter_dtype(self.vision_model, default=pixels_BHWC.dtype)
        outputs = self.vision_model(jnp.asarray(pixels_BHWC, dtype))
        return {
            "image_embeds": self.visual_projection(outputs["pooler_output"]),
            "last_hidden_state": outputs["last_hidden_state"],
            "patch_embeds": self.visual_projection(outputs["patch_attention"]),
        }

    def encode_text(self, input_ids_BL: jax.Array, attention_mask_BL: jax.Array) -> dict[str, jax.Array]:
        """Token ids and 0/1 mask [B, L] -> text_embeds [B, D], last_hidden_state [B, L, C] (after
        final_layer_norm), token_embeds [B, L, D] (every token through the text projection)."""
        outputs = self.text_model(jnp.asarray(input_ids_BL, jnp.int32), jnp.asarray(attention_mask_BL, jnp.int32))
        return {
            "text_embeds": self.text_projection(outputs["pooler_output"]),
            "last_hidden_state": outputs["last_hidden_state"],
            "token_embeds": self.text_projection(outputs["last_hidden_state"]),
        }

    def __call__(self, pixels_BHWC: jax.Array, input_ids_BL: jax.Array, attention_mask_BL: jax.Array):
        image, text = self.encode_image(pixels_BHWC), self.encode_text(input_ids_BL, attention_mask_BL)
        return image["image_embeds"], text["text_embeds"], self.logit_scale
