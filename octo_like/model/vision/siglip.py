"""The SigLIP vision tower in Flax (PaliGemma's image encoder), named like transformers' SiglipVisionModel.

Axis letters: B batch, N patches, C width.

The blocks are CLIP's (`octo_like.model.vision.clip.CLIPEncoder`: pre-LayerNorm attention and MLP,
here with tanh-GELU); SigLIP differs around them: the patch convolution has a bias, there is no
class token and no pre-LayerNorm, `post_layernorm` applies to every token (so `last_hidden_state`
is normalized), and the optional pooling head is multi-head attention pooling (MAP): one learned
probe attends to all patches through a fused q/k/v projection (torch's `in_proj_weight`), then a
residual MLP. PaliGemma uses the tower without its head.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from octo_like.model.precision import parameter_dtype
from octo_like.model.vision.clip import CLIPMLP, CLIPEncoder, CLIPTowerConfig, check_pixels, layer_norm


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig(CLIPTowerConfig):
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    use_head: bool = True

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


# google/siglip-so400m-patch14-224 (PaliGemma's tower, there without the head) and siglip-base-patch16-224.
SIGLIP_SIZES = {
    "So400m/14": SiglipVisionConfig(
        hidden_size=1152, num_layers=27, num_heads=16, intermediate_size=4304, patch_size=14
    ),
    "B/16": SiglipVisionConfig(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, patch_size=16),
}


class FusedMultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention's layout: one [q; k; v] input projection, then out_proj."""

    num_heads: int

    @nn.compact
    def __call__(self, query_BQC: jax.Array, inputs_BNC: jax.Array) -> jax.Array:
        batch, width = inputs_BNC.shape[0], inputs_BNC.shape[-1]
        head_size = width // self.num_heads
        kernel_C3 = self.param("in_proj_kernel", nn.initializers.lecun_normal(), (width, 3 * width))
        bias_3 = self.param("in_proj_bias", nn.initializers.zeros, (3 * width,))

        def heads(x_BLC: jax.Array, part: int) -> jax.Array:
            projected = (
                x_BLC @ kernel_C3[:, part * width : (part + 1) * width] + bias_3[part * width : (part + 1) * width]
            )
            return projected.reshape(batch, x_BLC.shape[1], self.num_heads, head_size)

        attended_BQKH = jax.nn.dot_product_attention(heads(query_BQC, 0), heads(inputs_BNC, 1), heads(inputs_BNC, 2))
        return nn.Dense(width, name="out_proj")(attended_BQKH.reshape(batch, query_BQC.shape[1], width))


class MultiheadAttentionPooling(nn.Module):
    """SigLIP's MAP head: a learned probe attends to the tokens, then LayerNorm and a residual MLP."""

    config: SiglipVisionConfig

    @nn.compact
    def __call__(self, hidden_BNC: jax.Array) -> jax.Array:
        config = self.config
        batch, _, width = hidden_BNC.shape
        probe_11C = self.param("probe", nn.initializers.normal(0.02), (1, 1, width))
        probe_B1C = jnp.broadcast_to(probe_11C.astype(hidden_BNC.dtype), (batch, 1, width))
        pooled_B1C = FusedMultiheadAttention(config.num_heads, name="attention")(probe_B1C, hidden_BNC)
        pooled_B1C = pooled_B1C + CLIPMLP(config, name="mlp")(
            layer_norm(config.layer_norm_eps, "layernorm")(pooled_B1C)
        )
        return pooled_B1C[:, 0]


class SiglipVisionEmbeddings(nn.Module):
    """Patches (a convolution with bias) plus learned positions; no class token."""

    config: SiglipVisionConfig

    @nn.compact
    def __call__(self, pixels_BHWC: jax.Array) -> jax.Array:
        config = self.config
        patch = config.patch_size
        patches_BhwC = nn.Conv(
            config.hidden_size, (patch, patch), strides=(patch, patch), padding="VALID", name="patch_embedding"
        )(pixels_BHWC)
        hidden_BNC = patches_BhwC.reshape(patches_BhwC.shape[0], -1, config.hidden_size)
        positions = nn.Embed(config.num_patches, config.hidden_size, name="position_embedding")
        return hidden_BNC + positions(jnp.arange(config.num_patches))[None]


class SiglipVisionTransformer(nn.Module):
    config: SiglipVisionConfig

    @nn.compact
    def __call__(self, pixels_BHWC: jax.Array) -> dict[str, jax.Array]:
        """Normalized pixels [B, H, W, C] -> last_hidden_state [B, N, C] (post-LayerNorm'd) and, with
        the head, pooler_output [B, C]."""
        config = self.config
        check_pixels(pixels_BHWC, config.image_size, config.num_channels, "SigLIP")
        pixels_BHWC = jnp.asarray(pixels_BHWC, parameter_dtype(self, default=pixels_BHWC.dtype))
        hidden_BNC = SiglipVisionEmbeddings(config, name="embeddings")(pixels_BHWC)
        hidden_BNC, _ = CLIPEncoder(config, name="encoder")(hidden_BNC, None)
        outputs = {"last_hidden_state": layer_norm(config.layer_norm_eps, "post_layernorm")(hidden_BNC)}
        if config.use_head:
            outputs["pooler_output"] = MultiheadAttentionPooling(config, name="head")(outputs["last_hidden_state"])
        return outputs
