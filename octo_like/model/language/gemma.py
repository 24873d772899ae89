"""The Gemma decoder (PaliGemma's language model) in Flax, named like transformers' GemmaForCausalLM.

Axis letters: B batch, L tokens, C width, N query heads, K key/value heads (multi-query: K = 1;
grouped: N a multiple of K), H head size, F MLP width, V vocabulary.

Pre-RMSNorm blocks (`x * rsqrt(mean(x^2) + eps) * (1 + weight)`, computed in float32), token
embeddings scaled by sqrt(C) (in the embedding's dtype, as transformers does), rotary positions
(rotate-half layout) on queries and keys, grouped-query attention with H^-0.5 scaling, a GeGLU MLP
(tanh-GELU(gate) * up -> down), a final RMSNorm, and logits through the embedding matrix when the
word embeddings are tied (Gemma's default) or through `lm_head`.

`__call__` takes an attention mask [B, L, L] (True: query may attend key), so that a caller builds
causal, prefix-LM (PaliGemma: bidirectional prefix, causal suffix) or block masks alike;
`causal_mask` makes the plain one.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from octo_like.model.language.inputs import check_text_inputs
from octo_like.model.vision.clip import ACTIVATIONS
from octo_like.utils.errors import InputError


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    hidden_act: str = "gelu_pytorch_tanh"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192
    attention_bias: bool = False
    tie_word_embeddings: bool = True

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise InputError(f"Gemma hidden_act is '{self.hidden_act}'; expected one of {', '.join(ACTIVATIONS)}")
        if self.num_heads % self.num_kv_heads:
            raise InputError(
                f"Gemma num_attention_heads {self.num_heads} is not a multiple of num_key_value_heads "
                f"{self.num_kv_heads}"
            )


# google/gemma-2b (PaliGemma's decoder: multi-query attention, head size 256), and a CPU-sized `tiny`.
GEMMA_SIZES = {
    "tiny": GemmaConfig(
        vocab_size=1024, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=1, head_dim=64, intermediate_size=1024
    ),
    "2B": GemmaConfig(
        vocab_size=257216,
        hidden_size=2048,
        num_layers=18,
        num_heads=8,
        num_kv_heads=1,
        head_dim=256,
        intermediate_size=16384,
    ),
}


class RMSNorm(nn.Module):
    eps: float

    @nn.compact
    def __call__(self, x_BLC: jax.Array) -> jax.Array:
        scale_C = self.param("scale", nn.initializers.zeros, (x_BLC.shape[-1],))
        x32 = x_BLC.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * (1.0 + scale_C.astype(jnp.float32))).astype(x_BLC.dtype)


def rotary(x_BLNH: jax.Array, positions_BL: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding, rotate-half layout (the first and second halves of H are the pairs)."""
    head_dim = x_BLNH.shape[-1]
    inverse_frequency = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles_BLh = positions_BL.astype(jnp.float32)[..., None] * inverse_frequency
    angles_BL1H = jnp.concatenate([angles_BLh, angles_BLh], axis=-1)[:, :, None, :]
    x32 = x_BLNH.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (x32 * jnp.cos(angles_BL1H) + rotated * jnp.sin(angles_BL1H)).astype(x_BLNH.dtype)


def causal_mask(attention_mask_BL: jax.Array) -> jax.Array:
    """bool [B, L, L]: each token attends to itself and the earlier tokens that are not padding."""
    length = attention_mask_BL.shape[1]
    return jnp.tril(jnp.ones((length, length), bool))[None] & attention_mask_BL.astype(bool)[:, None, :]


class GemmaAttention(nn.Module):
    """Attention of L new tokens; with a KV cache (keys/values [B, S, K, H]) they are written at
    `cache_index` and the queries attend the whole cache (mask [B, L, S]); else mask [B, L, L]."""

    config: GemmaConfig

    def setup(self):
        config = self.config
        bias = config.attention_bias
        self.q_proj = nn.Dense(config.num_heads * config.head_dim, use_bias=bias)
        self.k_proj = nn.Dense(config.num_kv_heads * config.head_dim, use_bias=bias)
        self.v_proj = nn.Dense(config.num_kv_heads * config.head_dim, use_bias=bias)
        self.o_proj = nn.Dense(config.hidden_size, use_bias=bias)

    def project(self, x_BLC: jax.Array, positions_BL: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(queries [B, L, N, H], keys [B, L, K, H], values [B, L, K, H]), RoPE applied."""
        config = self.config
        batch, length, _ = x_BLC.shape
        query_BLNH = self.q_proj(x_BLC).reshape(batch, length, config.num_heads, config.head_dim)
        key_BLKH = self.k_proj(x_BLC).reshape(batch, length, config.num_kv_heads, config.head_dim)
        value_BLKH = self.v_proj(x_BLC).reshape(batch, length, config.num_kv_heads, config.head_dim)
        return (
            rotary(query_BLNH, positions_BL, config.rope_theta),
            rotary(key_BLKH, positions_BL, config.rope_theta),
            value_BLKH,
        )

    def output(self, attended_BLNH: jax.Array) -> jax.Array:
        return self.o_proj(attended_BLNH.reshape(*attended_BLNH.shape[:2], -1))

    def __call__(self, x_BLC, positions_BL, mask_BLS, cache=None, cache_index=None):
        query_BLNH, key_BLKH, value_BLKH = self.project(x_BLC, positions_BL)
        if cache is not None:
            start = (0, cache_index, 0, 0)
            cache = {
                "key": jax.lax.dynamic_update_slice(cache["key"], key_BLKH.astype(cache["key"].dtype), start),
                "value": jax.lax.dynamic_update_slice(cache["value"], value_BLKH.astype(cache["value"].dtype), start),
            }
            key_BLKH, value_BLKH = cache["key"], cache["value"]
        attended_BLNH = jax.nn.dot_product_attention(query_BLNH, key_BLKH, value_BLKH, mask=mask_BLS[:, None])
        return self.output(attended_BLNH), cache


class GemmaMLP(nn.Module):
    config: GemmaConfig

    @nn.compact
    def __call__(self, x_BLC: jax.Array) -> jax.Array:
        config = self.config
        gate_BLF = ACTIVATIONS[config.hidden_act](
            nn.Dense(config.intermediate_size, use_bias=False, name="gate_proj")(x_BLC)
        )
        up_BLF = nn.Dense(config.intermediate_size, use_bias=False, name="up_proj")(x_BLC)
        return nn.Dense(config.hidden_size, use_bias=False, name="down_proj")(gate_BLF * up_BLF)


class GemmaDecoderLayer(nn.Module):
    """A block; `qkv` and `after_attention` split it around the attention, so that two token
    streams with their own weights can attend jointly (the pi0 action expert)."""

    config: GemmaConfig

    def setup(self):
        eps = self.config.rms_norm_eps
        self.input_layernorm = RMSNorm(eps)
        self.self_attn = GemmaAttention(self.config)
        self.post_attention_layernorm = RMSNorm(eps)
        self.mlp = GemmaMLP(self.config)

    def qkv(self, x_BLC: jax.Array, positions_BL: jax.Array):
        return self.self_attn.project(self.input_layernorm(x_BLC), positions_BL)

    def _mlp_residual(self, x_BLC: jax.Array) -> jax.Array:
        return x_BLC + self.mlp(self.post_attention_layernorm(x_BLC))

    def after_attention(self, x_BLC: jax.Array, attended_BLNH: jax.Array) -> jax.Array:
        return self._mlp_residual(x_BLC + self.self_attn.output(attended_BLNH))

    def __call__(self, x_BLC, positions_BL, mask_BLS, cache=None, cache_index=None):
        attended_BLC, cache = self.self_attn(self.input_layernorm(x_BLC), positions_BL, mask_BLS, cache, cache_index)
        return self._mlp_residual(x_BLC + attended_BLC), cache


class GemmaModel(nn.Module):
    """Embeddings (or given input embeddings, e.g. image tokens first) -> final-normed hidden states."""

    config: GemmaConfig

    def setup(self):
        config = self.config
        self.embed_tokens = nn.Embed(config.vocab_size, config.hidden_size)
        self.layers = [GemmaDecoderLayer(config, name=f"layers_{index}") for index in range(config.num_layers)]
        self.norm = RMSNorm(config.rms_norm_eps)

    def embed(self, input_ids_BL: jax.Array) -> jax.Array:
        embeddings_BLC = self.embed_tokens(input_ids_BL)
        return embeddings_BLC * jnp.asarray(self.config.hidden_size**0.5, embeddings_BLC.dtype)

    def __call__(self, embeddings_BLC, positions_BL, mask_BLS, caches=None, cache_index=None, num_layers=None):
        """(final-normed hidden states, the updated per-layer KV caches or None). `num_layers` runs
        only the first layers (layer skipping: SmolVLA reads the states of the first half)."""
        hidden_BLC, new_caches = embeddings_BLC, []
        for index, layer in enumerate(self.layers[:num_layers]):
            hidden_BLC, cache = layer(
                hidden_BLC, positions_BL, mask_BLS, None if caches is None else caches[index], cache_index
            )
            new_caches.append(cache)
        return self.norm(hidden_BLC), (None if caches is None else new_caches)

    def empty_caches(self, batch: int, length: int, dtype=jnp.float32) -> list[dict]:
        config = self.config
        shape = (batch, length, config.num_kv_heads, config.head_dim)
        return [{"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)} for _ in range(config.num_layers)]


class GemmaForCausalLM(nn.Module):
    config: GemmaConfig

    def setup(self):
        self.model = GemmaModel(self.config)
        if not self.config.tie_word_embeddings:
            self.lm_head = nn.Dense(self.config.vocab_size, use_bias=False)

    def logits_from_hidden(self, hidden_BLC: jax.Array) -> jax.Array:
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.attend(hidden_BLC)
        return self.lm_head(hidden_BLC)

    def __call__(self, input_ids_BL: jax.Array, attention_mask_BL: jax.Array) -> jax.Array:
        """Causal logits [B, L, V] of right-padded token ids."""
        check_text_inputs(input_ids_BL, attention_mask_BL, self.config.max_position_embeddings)
        positions_BL = jnp.broadcast_to(jnp.arange(input_ids_BL.shape[1]), input_ids_BL.shape)
        hidden_BLC, _ = self.model(self.model.embed(input_ids_BL), positions_BL, causal_mask(attention_mask_BL))
        return self.logits_from_hidden(hidden_BLC)

    def greedy_decode(self, input_ids_BL, attention_mask_BL, num_tokens: int, use_cache: bool = True):
        """The next `num_tokens` greedy tokens [B, num_tokens] after each (right-padded) prompt.

        With the cache, the prompt is run once and every new token attends the cached keys and
        values (one token per step); without it, every step reruns the whole sequence, which is
        the reference the cache must equal (and what `bench.py` compares it with)."""
        batch, prompt_length = input_ids_BL.shape
        total = prompt_length + num_tokens
        lengths_B = attention_mask_BL.astype(jnp.int32).sum(axis=1)  # each prompt's own end
        # Generated tokens go right after each prompt's last real token: a per-row index into a
        # sequence of `total` slots (padding slots stay masked).
        ids_BS = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_length].set(input_ids_BL)
        valid_BS = jnp.zeros((batch, total), bool).at[:, :prompt_length].set(attention_mask_BL.astype(bool))
        rows = jnp.arange(batch)
        if not use_cache:
            tokens = []
            for step in range(num_tokens):
                logits_BSV = self(ids_BS, valid_BS.astype(jnp.int32))
                token_B = jnp.argmax(logits_BSV[rows, lengths_B + step - 1], axis=-1).astype(jnp.int32)
                ids_BS = ids_BS.at[rows, lengths_B + step].set(token_B)
                valid_BS = valid_BS.at[rows, lengths_B + step].set(True)
                tokens.append(token_B)
            return jnp.stack(tokens, axis=1)
        caches = self.model.empty_caches(batch, total, self.model.embed_tokens.embedding.dtype)
        positions_BS = jnp.broadcast_to(jnp.arange(total), (batch, total))
        mask_BLS = causal_mask(valid_BS)[:, :prompt_length]
        hidden_BLC, caches = self.model(
            self.model.embed(input_ids_BL), positions_BS[:, :prompt_length], mask_BLS, caches, 0
        )
        token_B = jnp.argmax(self.logits_from_hidden(hidden_BLC[rows, lengths_B - 1]), axis=-1).astype(jnp.int32)
        tokens = [token_B]
        for step in range(1, num_tokens):
            # The new token sits at slot prompt_length + step - 1 of the cache but at position
            # lengths_B + step - 1 of its row; it sees the row's real prompt and the tokens before it.
            slot = prompt_length + step - 1
            valid_BS = valid_BS.at[:, slot].set(True)
            seen_B1S = (valid_BS & (jnp.arange(total) <= slot))[:, None, :]
            positions_B1 = (lengths_B + step - 1)[:, None]
            hidden_B1C, caches = self.model(self.model.embed(token_B[:, None]), positions_B1, seen_B1S, caches, slot)
            token_B = jnp.argmax(self.logits_from_hidden(hidden_B1C[:, 0]), axis=-1).astype(jnp.int32)
            tokens.append(token_B)
        return jnp.stack(tokens, axis=1)
