"""Frozen BERT sentence encoder (all-MiniLM-L6-v2) in Flax; its weights load with octo_like.hf.minilm.

Axis letters: B batch, L tokens, C hidden size, N attention heads, H head size, F intermediate size.

The encoder is the plain BERT stack (word + absolute position + token-type-0 embeddings, post-
LayerNorm layers with exact-erf GELU) and returns the last hidden states; the policy keeps one
token per word piece, so the sentence-transformers mean pooling is not applied here. Freezing is the
caller's job (an optimizer mask or `jax.lax.stop_gradient`): the module itself is trainable Flax.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from octo_like.model.language.inputs import check_text_inputs


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
    # Two-pass variance as torch computes it, rather than E[x^2] - E[x]^2, which cancels digits
    # when the mean is large compared with the spread.
    return nn.LayerNorm(epsilon=config.layer_norm_eps, use_fast_variance=False, name=name)


class BertLayer(nn.Module):
    """One post-LayerNorm transformer layer: attention, add & norm, GELU MLP, add & norm."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden_BLC: jax.Array, key_mask_BL: jax.Array) -> jax.Array:
        config = self.config
        batch_size, length, _ = hidden_BLC.shape
        head_size = config.hidden_size // config.num_heads

        def heads_BLNH(name: str) -> jax.Array:
            return nn.Dense(config.hidden_size, name=name)(hidden_BLC).reshape(
                batch_size, length, config.num_heads, head_size
            )

        attended_BLNH = jax.nn.dot_product_attention(
            heads_BLNH("query"), heads_BLNH("key"), heads_BLNH("value"), mask=key_mask_BL[:, None, None, :]
        )
        attended_BLC = nn.Dense(config.hidden_size, name="attention_output")(attended_BLNH.reshape(hidden_BLC.shape))
        hidden_BLC = _layer_norm(config, "attention_layer_norm")(hidden_BLC + attended_BLC)
        intermediate_BLF = nn.Dense(config.intermediate_size, name="intermediate")(hidden_BLC)
        intermediate_BLF = nn.gelu(intermediate_BLF, approximate=False)  # BERT's "gelu" is the exact erf form
        output_BLC = nn.Dense(config.hidden_size, name="output")(intermediate_BLF)
        return _layer_norm(config, "output_layer_norm")(hidden_BLC + output_BLC)


class BertEncoder(nn.Module):
    """Token ids -> last hidden states of a BERT encoder (all token types 0)."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids_BL: jax.Array, attention_mask_BL: jax.Array) -> jax.Array:
        config = self.config
        check_text_inputs(input_ids_BL, attention_mask_BL, config.max_position_embeddings)
        length = input_ids_BL.shape[1]

        def embed(name: str, num_embeddings: int, ids: jax.Array) -> jax.Array:
            return nn.Embed(num_embeddings, config.hidden_size, name=name)(ids)

        hidden_BLC = (
            embed("word_embeddings", config.vocab_size, input_ids_BL)
            + embed("position_embeddings", config.max_position_embeddings, jnp.arange(length)[None, :])
            + embed("token_type_embeddings", config.type_vocab_size, jnp.zeros_like(input_ids_BL))
        )
        hidden_BLC = _layer_norm(config, "embedding_layer_norm")(hidden_BLC)
        key_mask_BL = attention_mask_BL.astype(bool)
        for index in range(config.num_layers):
            hidden_BLC = BertLayer(config, name=f"layer_{index}")(hidden_BLC, key_mask_BL)
        return hidden_BLC
