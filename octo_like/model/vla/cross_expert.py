"""Dual-system, cross-attention bridge (SmolVLA, GR00T N1): a flow-matching action expert whose
layers alternate cross-attention to the backbone's states and self-attention over its own tokens.

Axis letters: B batch, P prefix tokens, S suffix tokens (1 proprio + H actions), C backbone
width, E expert width, N heads, K key/value heads, G head size, H horizon, A action dims.

The backbone runs the prefix once, through only its first `backbone_layers` layers when given
(SmolVLA's layer skipping: the later layers are neither run nor trained), and its final-normed
states are the context. Expert layer 0, 2, 4, ... cross-attends the context (keys and values are
the expert's own projections of it, computed once per chunk: `context_cache`); layers 1, 3, ...
are Gemma blocks over the suffix, attending bidirectionally. The suffix is pi0's (proprio token,
then the noisy actions with the time), and flow matching is the from-scratch head's
(octo_like/model/flow_matching.py); sampling runs the Euler steps over the expert alone.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from octo_like.model.flow_matching import euler_sample, flow_matching_error, sample_flow_time
from octo_like.model.heads import masked_mean
from octo_like.model.language.gemma import GemmaConfig, GemmaDecoderLayer, GemmaMLP, RMSNorm
from octo_like.model.vla.action_expert import pi0_suffix_tokens
from octo_like.model.vla.actions import VLAActions, backbone_layers_error
from octo_like.model.vla.paligemma import prefix_lm_mask


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention from the suffix to the context, then the MLP; no rotary positions
    (the context is a set of states to read, not a sequence continued)."""

    config: GemmaConfig

    def setup(self):
        config = self.config
        self.input_layernorm = RMSNorm(config.rms_norm_eps)
        self.q_proj = nn.Dense(config.num_heads * config.head_dim, use_bias=False)
        self.k_proj = nn.Dense(config.num_kv_heads * config.head_dim, use_bias=False)
        self.v_proj = nn.Dense(config.num_kv_heads * config.head_dim, use_bias=False)
        self.o_proj = nn.Dense(config.hidden_size, use_bias=False)
        self.post_attention_layernorm = RMSNorm(config.rms_norm_eps)
        self.mlp = GemmaMLP(config)

    def keys_values(self, context_BPC: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(keys, values) [B, P, K, G] of the context: what sampling caches."""
        batch, length, _ = context_BPC.shape
        shape = (batch, length, self.config.num_kv_heads, self.config.head_dim)
        return self.k_proj(context_BPC).reshape(shape), self.v_proj(context_BPC).reshape(shape)

    def __call__(self, x_BSE, keys_BPKG, values_BPKG, context_valid_BP):
        batch, length, _ = x_BSE.shape
        query_BSNG = self.q_proj(self.input_layernorm(x_BSE)).reshape(
            batch, length, self.config.num_heads, self.config.head_dim
        )
        attended_BSNG = jax.nn.dot_product_attention(
            query_BSNG,
            keys_BPKG.astype(query_BSNG.dtype),
            values_BPKG.astype(query_BSNG.dtype),
            mask=context_valid_BP[:, None, None, :],
        )
        x_BSE = x_BSE + self.o_proj(attended_BSNG.reshape(batch, length, -1))
        return x_BSE + self.mlp(self.post_attention_layernorm(x_BSE))


class CrossAttentionExpert(nn.Module):
    config: GemmaConfig  # the expert's width, depth and attention geometry
    action_dim: int
    horizon: int

    def setup(self):
        config = self.config
        self.layers = [
            (CrossAttentionBlock if index % 2 == 0 else GemmaDecoderLayer)(config, name=f"layers_{index}")
            for index in range(config.num_layers)
        ]
        self.norm = RMSNorm(config.rms_norm_eps)
        width = config.hidden_size
        self.proprio_in = nn.Dense(width)
        self.action_in = nn.Dense(width)
        self.time_mlp_in = nn.Dense(width)
        self.time_mlp_out = nn.Dense(width)
        self.action_out = nn.Dense(self.action_dim)

    def context_cache(self, context_BPC: jax.Array) -> list:
        """Per cross-attention layer, the context's keys and values."""
        return [layer.keys_values(context_BPC) for layer in self.layers[::2]]

    def velocity(self, cache, context_valid_BP, proprio_BD, noisy_BHA, time_B) -> jax.Array:
        suffix_BSE = pi0_suffix_tokens(self, proprio_BD, noisy_BHA, time_B)
        batch, length, _ = suffix_BSE.shape
        positions_BS = jnp.broadcast_to(jnp.arange(length), (batch, length))
        everywhere_BSS = jnp.ones((batch, length, length), bool)
        for index, layer in enumerate(self.layers):
            if index % 2 == 0:
                suffix_BSE = layer(suffix_BSE, *cache[index // 2], context_valid_BP)
            else:
                suffix_BSE, _ = layer(suffix_BSE, positions_BS, everywhere_BSS)
        return self.action_out(self.norm(suffix_BSE)[:, 1:])


class CrossBridgeActions(VLAActions):
    """`model.vla.action`: `backbone_layers` (None: all), `expert` {hidden_size, intermediate_size,
    num_layers (default: the backbone layers run)}; the expert keeps the backbone's head geometry."""

    sampling_options = frozenset({"num_steps", "use_cache"})

    @property
    def backbone_layers(self) -> int:
        return self.action["backbone_layers"] or self.backbone_config.text.num_layers

    def expert_config(self):
        return dataclasses.replace(
            self.backbone_config.text, **{"num_layers": self.backbone_layers, **self.action["expert"]}
        )

    def check(self):
        return backbone_layers_error(self)

    def add_modules(self, network):
        network.cross = CrossAttentionExpert(network.expert_config, self.action_dim, self.horizon)

    def context(self, network, observation, task) -> tuple[jax.Array, jax.Array]:
        """(the backbone's states [B, P, C] after `backbone_layers` layers, valid [B, P])."""
        embeddings_BPC, valid_BP = network.prefix(observation, task)
        states_BPC, _ = network.backbone.language_model(
            embeddings_BPC,
            jnp.cumsum(valid_BP, axis=1),
            prefix_lm_mask(valid_BP, jnp.zeros(valid_BP.shape, jnp.int32)),
            num_layers=self.backbone_layers,
        )
        return states_BPC, valid_BP

    def _velocity_on(self, network, observation, task):
        """velocity(noisy [B, H, A], time [B]) with the context computed once."""
        states_BPC, valid_BP = self.context(network, observation, task)
        cache = network.cross.context_cache(states_BPC)
        proprio_BD = network.last_proprio(observation, valid_BP.shape[0])
        return lambda noisy_BHA, time_B: network.cross.velocity(cache, valid_BP, proprio_BD, noisy_BHA, time_B)

    def init_outputs(self, network, observation, task):
        batch = observation["timestep_pad_mask"].shape[0]
        velocity = self._velocity_on(network, observation, task)
        return velocity(jnp.zeros((batch, self.horizon, self.action_dim)), jnp.ones(batch))

    def loss(self, network, observation, task, actions_BHA, valid_BHA, rng, train):
        del train  # no dropout
        velocity = self._velocity_on(network, observation, task)
        noise_rng, time_rng = jax.random.split(rng)
        noise_BHA = jax.random.normal(noise_rng, actions_BHA.shape, actions_BHA.dtype)
        time_B = sample_flow_time(time_rng, (actions_BHA.shape[0],))
        error_BHA = flow_matching_error(
            lambda noisy_BHA: velocity(noisy_BHA, time_B), actions_BHA, noise_BHA, time_B[:, None, None]
        )
        loss = masked_mean(error_BHA, valid_BHA)
        return loss, {"action_flow_loss": loss}

    def sample(self, network, observation, task, rng, num_steps: int = 10, use_cache: bool = True):
        """With the cache the backbone and the context's keys and values are computed once; without
        it every Euler step recomputes them (the reference the cache must equal)."""
        batch = observation["timestep_pad_mask"].shape[0]
        noise_BHA = jax.random.normal(rng, (batch, self.horizon, self.action_dim))
        if use_cache:
            velocity = self._velocity_on(network, observation, task)
            chunks_BHA = euler_sample(
                lambda noisy, time, _: velocity(noisy, jnp.full((batch,), time)), noise_BHA, num_steps
            )
        else:

            def rerun_velocity(noisy_BHA, time, _):
                return self._velocity_on(network, observation, task)(noisy_BHA, jnp.full((batch,), time))

            chunks_BHA = euler_sample(rerun_velocity, noise_BHA, num_steps)
        return chunks_BHA.astype(jnp.float32), jnp.ones(batch, bool)
