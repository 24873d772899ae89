"""A pi0-style action expert: a second, smaller Gemma whose tokens join the VLM's attention in every layer.

Axis letters: B batch, P prefix tokens (image + language), S suffix tokens (1 proprio + H actions),
C VLM width, E expert width, N heads, K key/value heads, G head size, H horizon, A action dims.

Both stacks have the same number of layers and the same attention geometry (heads, key/value heads,
head size), so in layer l the queries of each stream attend the keys and values of both streams,
each stream with its own projections, norms and MLPs (openpi's mixture of transformers). The
prefix never attends the suffix (prefix-LM among itself); the proprio token attends the prefix and
itself; the action tokens attend the prefix, the proprio token and every action token. The prefix
keys and values therefore do not depend on the suffix: inference computes them once (`prefix_cache`)
and runs only the suffix in each of the Euler steps.

Flow matching as the from-scratch flow head (octo_like/model/flow_matching.py: pi0's convention,
t ~ Beta(1.5, 1), `num_steps` Euler steps from t = 1 to 0). The time enters each action token (pi0: concat(action
embedding, sin-cos time embedding) -> Dense -> swish -> Dense), or modulates every norm of the
expert (pi0.5's adaRMS, `time_conditioning="adarms"`).
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from octo_like.model.flow_matching import euler_sample, flow_matching_error, sample_flow_time, sincos_embedding
from octo_like.model.heads import masked_mean
from octo_like.model.language.gemma import GemmaAttention, GemmaConfig, GemmaDecoderLayer, GemmaMLP, RMSNorm
from octo_like.model.precision import parameter_dtype
from octo_like.model.vla.paligemma import prefix_lm_mask
from octo_like.utils.errors import InputError


def expert_geometry_mismatch(vlm: GemmaConfig, expert: GemmaConfig) -> str | None:
    """Why the expert cannot attend jointly with the VLM (one line), or None."""
    for field in ("num_layers", "num_heads", "num_kv_heads", "head_dim"):
        if getattr(vlm, field) != getattr(expert, field):
            return (
                f"action expert {field}={getattr(expert, field)} must equal the VLM's {getattr(vlm, field)}: "
                "both streams attend jointly in every layer"
            )
    return None


def suffix_mask(prefix_valid_BP: jax.Array, prefix_mask_BPP: jax.Array, horizon: int) -> jax.Array:
    """bool [B, P + S, P + S] of the joint sequence (S = 1 + horizon)."""
    batch, prefix = prefix_valid_BP.shape
    suffix = 1 + horizon
    is_action_S = jnp.arange(suffix) > 0
    # Suffix queries: every valid prefix key; proprio sees itself; actions see proprio and all actions.
    suffix_to_suffix_SS = jnp.eye(suffix, dtype=bool) | is_action_S[:, None]
    top_BPX = jnp.concatenate([prefix_mask_BPP, jnp.zeros((batch, prefix, suffix), bool)], axis=2)
    bottom_BSX = jnp.concatenate(
        [
            jnp.broadcast_to(prefix_valid_BP[:, None, :], (batch, suffix, prefix)),
            jnp.broadcast_to(suffix_to_suffix_SS[None], (batch, suffix, suffix)),
        ],
        axis=2,
    )
    return jnp.concatenate([top_BPX, bottom_BSX], axis=1)


TIME_CONDITIONINGS = ("concat", "adarms")


class AdaptiveRMSNorm(nn.Module):
    """RMSNorm whose scale and shift come from the flow time (pi0.5's adaRMS), and a gate for the
    residual branch it feeds. The modulation starts at zero, so every expert block starts as the
    identity (DiT's adaLN-Zero) and the norm as a plain normalization."""

    eps: float

    @nn.compact
    def __call__(self, x_BSE: jax.Array, cond_BE: jax.Array) -> tuple[jax.Array, jax.Array]:
        width = x_BSE.shape[-1]
        x32 = x_BSE.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        modulation_B1X = nn.Dense(3 * width, kernel_init=nn.initializers.zeros, name="modulation")(cond_BE)[:, None]
        scale, shift, gate = jnp.split(modulation_B1X.astype(jnp.float32), 3, axis=-1)
        return (normed * (1.0 + scale) + shift).astype(x_BSE.dtype), gate.astype(x_BSE.dtype)


class AdaptiveGemmaDecoderLayer(nn.Module):
    """A Gemma block for the expert with adaptive norms and gated residual branches; split around
    the attention like GemmaDecoderLayer, with the time conditioning `cond_BE` as an extra input."""

    config: GemmaConfig

    def setup(self):
        eps = self.config.rms_norm_eps
        self.input_layernorm = AdaptiveRMSNorm(eps)
        self.self_attn = GemmaAttention(self.config)
        self.post_attention_layernorm = AdaptiveRMSNorm(eps)
        self.mlp = GemmaMLP(self.config)

    def qkv(self, x_BSE: jax.Array, positions_BS: jax.Array, cond_BE: jax.Array):
        return self.self_attn.project(self.input_layernorm(x_BSE, cond_BE)[0], positions_BS)

    def after_attention(self, x_BSE: jax.Array, attended_BSNH: jax.Array, cond_BE: jax.Array) -> jax.Array:
        _, attention_gate = self.input_layernorm(x_BSE, cond_BE)
        x_BSE = x_BSE + attention_gate * self.self_attn.output(attended_BSNH)
        normed_BSE, mlp_gate = self.post_attention_layernorm(x_BSE, cond_BE)
        return x_BSE + mlp_gate * self.mlp(normed_BSE)


def pi0_suffix_tokens(expert: nn.Module, proprio_BD, noisy_actions_BHA, time_B) -> jax.Array:
    """pi0's suffix tokens [B, 1 + H, E]: the proprio token, then every noisy action with the flow
    time (concat(action embedding, sin-cos time) -> Dense -> swish -> Dense). `expert` holds the
    Dense layers `proprio_in`, `action_in`, `time_mlp_in` and `time_mlp_out`."""
    # In the parameters' dtype (bf16 compute): float32 actions would promote the whole expert.
    dtype = parameter_dtype(expert)
    actions_BHE = expert.action_in(noisy_actions_BHA.astype(dtype))
    time_BE = sincos_embedding(time_B[:, None], actions_BHE.shape[-1]).astype(actions_BHE.dtype)
    time_BHE = jnp.broadcast_to(time_BE[:, None], actions_BHE.shape)
    actions_BHE = expert.time_mlp_out(nn.swish(expert.time_mlp_in(jnp.concatenate([actions_BHE, time_BHE], axis=-1))))
    return jnp.concatenate([expert.proprio_in(proprio_BD.astype(dtype))[:, None], actions_BHE], axis=1)


class ActionExpert(nn.Module):
    """The suffix stream: embeds proprio and noisy actions, runs the expert layers jointly with the
    VLM's layers (passed in as `vlm_layers`), and reads the velocity off the action tokens.

    The time enters as pi0 does (`concat`: into every action token, through an MLP) or as pi0.5
    does (`adarms`: an MLP of the time modulates every norm of the expert; the action tokens are
    the actions alone)."""

    config: GemmaConfig
    action_dim: int
    horizon: int
    time_conditioning: str = "concat"

    def setup(self):
        if self.time_conditioning not in TIME_CONDITIONINGS:
            raise InputError(
                f"time_conditioning='{self.time_conditioning}'; expected one of {', '.join(TIME_CONDITIONINGS)}"
            )
        width = self.config.hidden_size
        adaptive = self.time_conditioning == "adarms"
        layer = AdaptiveGemmaDecoderLayer if adaptive else GemmaDecoderLayer
        self.layers = [layer(self.config, name=f"layers_{index}") for index in range(self.config.num_layers)]
        self.norm = AdaptiveRMSNorm(self.config.rms_norm_eps) if adaptive else RMSNorm(self.config.rms_norm_eps)
        self.proprio_in = nn.Dense(width)
        self.action_in = nn.Dense(width)
        self.time_mlp_in = nn.Dense(width)
        self.time_mlp_out = nn.Dense(width)
        self.action_out = nn.Dense(self.action_dim)

    def embed_suffix(self, proprio_BD, noisy_actions_BHA, time_B) -> tuple[jax.Array, dict]:
        """(suffix tokens [B, 1 + H, E], the keyword arguments the expert layers take: the time
        conditioning for adaRMS, nothing for concat)."""
        if self.time_conditioning != "adarms":
            return pi0_suffix_tokens(self, proprio_BD, noisy_actions_BHA, time_B), {}
        # In the parameters' dtype (bf16 compute): float32 actions would promote the whole expert.
        dtype = parameter_dtype(self)
        actions_BHE = self.action_in(noisy_actions_BHA.astype(dtype))
        time_BE = sincos_embedding(time_B[:, None], actions_BHE.shape[-1]).astype(actions_BHE.dtype)
        conditioning = {"cond_BE": nn.swish(self.time_mlp_out(nn.swish(self.time_mlp_in(time_BE))))}
        return jnp.concatenate([self.proprio_in(proprio_BD.astype(dtype))[:, None], actions_BHE], axis=1), conditioning

    def velocity(self, suffix_BSE: jax.Array, conditioning: dict) -> jax.Array:
        if conditioning:
            normed_BSE, _ = self.norm(suffix_BSE, conditioning["cond_BE"])
        else:
            normed_BSE = self.norm(suffix_BSE)
        return self.action_out(normed_BSE[:, 1:])


class Prefix(NamedTuple):
    """What the suffix needs of a prefix: its embeddings, positions, valid tokens and own mask."""

    embeddings_BPC: jax.Array
    positions_BP: jax.Array
    valid_BP: jax.Array
    mask_BPP: jax.Array

    @classmethod
    def bidirectional(cls, embeddings_BPC: jax.Array, valid_BP: jax.Array) -> "Prefix":
        """Every valid token attends every valid token; positions count the valid tokens from 1 (so
        padding anywhere in the prefix, e.g. after a short instruction, leaves no gap)."""
        valid_BP = valid_BP.astype(bool)
        positions_BP = jnp.cumsum(valid_BP, axis=1)
        return cls(
            embeddings_BPC, positions_BP, valid_BP, prefix_lm_mask(valid_BP, jnp.zeros(valid_BP.shape, jnp.int32))
        )

    def suffix_positions(self, suffix: int) -> jax.Array:
        """Suffix positions continue after each row's valid prefix tokens."""
        return self.valid_BP.sum(axis=1, keepdims=True) + 1 + jnp.arange(suffix)[None]


class PrefixWithExpert(nn.Module):
    """Flow matching and Euler sampling of the expert's suffix on a given prefix: the caller passes
    the VLM's decoder layers (`vlm_layers`, a GemmaModel's) and the prefix (its embeddings, e.g.
    PaliGemma's image + text embedding); the expert's layers are this module's."""

    vlm_config: GemmaConfig
    expert_config: GemmaConfig
    action_dim: int
    horizon: int
    time_conditioning: str = "concat"

    def setup(self):
        mismatch = expert_geometry_mismatch(self.vlm_config, self.expert_config)
        if mismatch:
            raise InputError(mismatch)
        self.expert = ActionExpert(self.expert_config, self.action_dim, self.horizon, self.time_conditioning)

    @staticmethod
    def _attend(query, keys, values, mask):
        return jax.nn.dot_product_attention(query, keys, values, mask=mask[:, None])

    def joint(self, vlm_layers, prefix: Prefix, suffix_BSE, conditioning: dict, mask_BXX, insulate: bool = False):
        """Both streams through every layer; returns (prefix hidden, suffix hidden), not final-normed.

        `insulate` (knowledge insulation, pi0.5 + KI): the suffix reads the prefix keys and values
        through a stop-gradient, so the expert's loss never reaches the VLM."""
        prefix_BPC, length = prefix.embeddings_BPC, prefix.embeddings_BPC.shape[1]
        suffix_positions_BS = prefix.suffix_positions(suffix_BSE.shape[1])
        for vlm_layer, expert_layer in zip(vlm_layers, self.expert.layers):
            query_p, key_p, value_p = vlm_layer.qkv(prefix_BPC, prefix.positions_BP)
            query_s, key_s, value_s = expert_layer.qkv(suffix_BSE, suffix_positions_BS, **conditioning)
            keys = jnp.concatenate([key_p, key_s.astype(key_p.dtype)], axis=1)
            values = jnp.concatenate([value_p, value_s.astype(value_p.dtype)], axis=1)
            attended_p = self._attend(query_p, keys, values, mask_BXX[:, :length])
            if insulate:
                keys = jnp.concatenate([jax.lax.stop_gradient(key_p), key_s.astype(key_p.dtype)], axis=1)
                values = jnp.concatenate([jax.lax.stop_gradient(value_p), value_s.astype(value_p.dtype)], axis=1)
            attended_s = self._attend(query_s.astype(keys.dtype), keys, values, mask_BXX[:, length:])
            prefix_BPC = vlm_layer.after_attention(prefix_BPC, attended_p)
            suffix_BSE = expert_layer.after_attention(suffix_BSE, attended_s.astype(suffix_BSE.dtype), **conditioning)
        return prefix_BPC, suffix_BSE

    def prefix_cache(self, vlm_layers, prefix: Prefix) -> list:
        """Per layer, the prefix keys and values (the prefix attends only itself)."""
        cache, prefix_BPC = [], prefix.embeddings_BPC
        for vlm_layer in vlm_layers:
            query_p, key_p, value_p = vlm_layer.qkv(prefix_BPC, prefix.positions_BP)
            cache.append((key_p, value_p))
            prefix_BPC = vlm_layer.after_attention(prefix_BPC, self._attend(query_p, key_p, value_p, prefix.mask_BPP))
        return cache

    def suffix_with_cache(self, cache, suffix_BSE, conditioning: dict, suffix_positions_BS, suffix_mask_BSX):
        for (key_p, value_p), expert_layer in zip(cache, self.expert.layers):
            query_s, key_s, value_s = expert_layer.qkv(suffix_BSE, suffix_positions_BS, **conditioning)
            keys = jnp.concatenate([key_p, key_s.astype(key_p.dtype)], axis=1)
            values = jnp.concatenate([value_p, value_s.astype(value_p.dtype)], axis=1)
            attended_s = self._attend(query_s.astype(keys.dtype), keys, values, suffix_mask_BSX)
            suffix_BSE = expert_layer.after_attention(suffix_BSE, attended_s.astype(suffix_BSE.dtype), **conditioning)
        return suffix_BSE

    def joint_velocity(
        self, vlm_layers, prefix: Prefix, proprio_BD, noisy_BHA, time_B, insulate: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        """(the predicted velocity [B, H, A] at x_t = noisy, the prefix stream's last hidden states
        [B, P, C], not final-normed): one joint forward of prefix and suffix."""
        suffix_BSE, conditioning = self.expert.embed_suffix(proprio_BD, noisy_BHA, time_B)
        mask_BXX = suffix_mask(prefix.valid_BP, prefix.mask_BPP, self.horizon)
        prefix_BPC, suffix_BSE = self.joint(vlm_layers, prefix, suffix_BSE, conditioning, mask_BXX, insulate)
        return self.expert.velocity(suffix_BSE, conditioning), prefix_BPC

    def velocity(self, vlm_layers, prefix: Prefix, proprio_BD, noisy_BHA, time_B) -> jax.Array:
        return self.joint_velocity(vlm_layers, prefix, proprio_BD, noisy_BHA, time_B)[0]

    def loss(
        self, vlm_layers, prefix: Prefix, proprio_BD, actions_BHA, action_mask_BHA, rng, insulate: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        """(the flow-matching loss: mean squared velocity error over the valid action entries, the
        prefix stream's last hidden states [B, P, C] of the same forward, not final-normed)."""
        noise_rng, time_rng = jax.random.split(rng)
        noise_BHA = jax.random.normal(noise_rng, actions_BHA.shape, actions_BHA.dtype)
        time_B = sample_flow_time(time_rng, (actions_BHA.shape[0],))
        prefix_hidden = []

        def predict_velocity(noisy_BHA):
            velocity_BHA, prefix_BPC = self.joint_velocity(vlm_layers, prefix, proprio_BD, noisy_BHA, time_B, insulate)
            prefix_hidden.append(prefix_BPC)
            return velocity_BHA

        error_BHA = flow_matching_error(predict_velocity, actions_BHA, noise_BHA, time_B[:, None, None])
        return masked_mean(error_BHA, action_mask_BHA), prefix_hidden[0]

    def sample(self, vlm_layers, prefix: Prefix, proprio_BD, rng, num_steps: int = 10, use_cache: bool = True):
        """Action chunks [B, H, A]: `num_steps` Euler steps from noise (t = 1) to t = 0. With the
        cache, the prefix runs once; without it, every step reruns prefix and suffix."""
        batch = prefix.valid_BP.shape[0]
        noise_BHA = jax.random.normal(rng, (batch, self.horizon, self.action_dim))
        if not use_cache:

            def velocity(noisy_BHA, time, _):
                return self.velocity(vlm_layers, prefix, proprio_BD, noisy_BHA, jnp.full((batch,), time))

            return euler_sample(velocity, noise_BHA, num_steps)
        cache = self.prefix_cache(vlm_layers, prefix)
        suffix_positions_BS = prefix.suffix_positions(1 + self.horizon)
        mask_BSX = suffix_mask(prefix.valid_BP, prefix.mask_BPP, self.horizon)[:, prefix.valid_BP.shape[1] :]

        def cached_velocity(noisy_BHA, time, _):
            suffix_BSE, conditioning = self.expert.embed_suffix(proprio_BD, noisy_BHA, jnp.full((batch,), time))
            suffix_BSE = self.suffix_with_cache(cache, suffix_BSE, conditioning, suffix_positions_BS, mask_BSX)
            return self.expert.velocity(suffix_BSE, conditioning)

        return euler_sample(cached_velocity, noise_BHA, num_steps)
