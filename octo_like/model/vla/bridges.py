"""Dual-system bridges: the backbone's states, read once per chunk, condition an action head of the
from-scratch family (octo_like/model/heads.py: diffusion, flow matching, L1), whose denoising
steps run on that fixed condition alone.

Axis letters: B batch, P prefix tokens, K bridge tokens, C backbone width, H horizon, A action dims.

- `TokenBridgeActions` (CogACT, Diffusion-VLA, OpenHelix): K learned `<ACT>` tokens appended to the
  prefix and the proprio token; their last hidden states are the head's readout. Default head:
  diffusion (DDPM).
- `PoolBridgeActions` (DexVLA, ChatVLA, OneTwoVLA, Hi Robot): the hidden states of the prefix and
  proprio token after the first `backbone_layers` layers (all by default), pooled (mean, max, or a
  learned attention query per head) into one readout token. Default head: flow matching.

`model.vla.action.head` is `{"name": "diffusion" | "flow" | "l1" | ..., **the head's fields}`, a
name of the heads' registry; `num_steps` at sampling is the head's `num_inference_steps`.
"""

import abc
from collections.abc import Mapping
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from octo_like.model.heads import create_head
from octo_like.model.tokens import TokenGroup
from octo_like.model.vla.actions import VLAActions, backbone_layers_error, proprio_token_prefix, query_states
from octo_like.model.vla.paligemma import prefix_lm_mask
from octo_like.utils.errors import InputError

# The sampling options each head takes, under the VLA's names (num_steps as the flow expert's).
HEAD_SAMPLING = {
    "l1": {},
    "mse": {},
    "diffusion": {"num_steps": "num_inference_steps", "sampler": "sampler"},
    "flow": {"num_steps": "num_inference_steps"},
}


class HeadActions(VLAActions):
    """A kind whose actions come from a from-scratch head on a readout read off the backbone
    (`readout`); the head is `network.action_head`."""

    default_head: ClassVar[Mapping] = {"name": "flow"}

    @property
    def head_settings(self) -> dict:
        return {**self.default_head, **(self.action["head"] or {})}

    @property
    def sampling_options(self) -> frozenset[str]:
        return frozenset(HEAD_SAMPLING.get(self.head_settings["name"], {}))

    def check(self):
        name = self.head_settings["name"]
        if name not in HEAD_SAMPLING:
            return f"model.vla.action.head.name='{name}'; expected one of {', '.join(HEAD_SAMPLING)}"
        return backbone_layers_error(self)

    def add_modules(self, network):
        width = self.backbone_config.text.hidden_size
        network.proprio_in = nn.Dense(width)
        settings = {key: value for key, value in self.head_settings.items() if key != "name"}
        network.action_head = create_head(
            self.head_settings["name"], action_horizon=self.horizon, action_dim=self.action_dim, **settings
        )

    @abc.abstractmethod
    def readout(self, network, observation, task) -> TokenGroup:
        """The head's input: tokens [B, 1, K, C] with mask [B, 1, K]."""

    def init_outputs(self, network, observation, task):
        return network.action_head(self.readout(network, observation, task), train=False)

    def loss(self, network, observation, task, actions_BHA, valid_BHA, rng, train):
        readout = self.readout(network, observation, task)
        batch = actions_BHA.shape[0]
        loss, metrics = network.action_head.loss(
            readout, actions_BHA[:, None], valid_BHA[:, None], jnp.ones((batch, 1), bool), rng=rng, train=train
        )
        return loss, {f"action_{name}": value for name, value in metrics.items()}

    def sample(self, network, observation, task, rng, **sampling):
        # The backbone runs once; the head's denoising loop sees only this readout.
        readout = self.readout(network, observation, task)
        names = HEAD_SAMPLING[self.head_settings["name"]]
        chunks_BHA = network.action_head.predict_action(
            readout, rng=rng, **{names[key]: value for key, value in sampling.items()}
        )[:, 0]
        return chunks_BHA.astype(jnp.float32), jnp.ones(chunks_BHA.shape[0], bool)


def single_readout(states_BKC: jax.Array) -> TokenGroup:
    return TokenGroup(states_BKC[:, None], jnp.ones(states_BKC.shape[:2], bool)[:, None])


class TokenBridgeActions(HeadActions):
    """CogACT: `bridge_tokens` learned tokens (`network.bridge_tokens` [K, C]) after the prefix."""

    default_head: ClassVar[Mapping] = {"name": "diffusion"}

    def check(self):
        if self.action["bridge_tokens"] < 1:
            return f"model.vla.action.bridge_tokens={self.action['bridge_tokens']}; expected at least 1"
        return super().check()

    def add_modules(self, network):
        super().add_modules(network)
        shape = (self.action["bridge_tokens"], self.backbone_config.text.hidden_size)
        network.bridge_tokens = network.param("bridge_tokens", nn.initializers.normal(0.02), shape)

    def readout(self, network, observation, task):
        states_BKC = query_states(network, observation, task, network.bridge_tokens, self.action["backbone_layers"])
        return single_readout(states_BKC)


class MeanPool(nn.Module):
    @nn.compact
    def __call__(self, states_BPC: jax.Array, valid_BP: jax.Array) -> jax.Array:
        weights_BP1 = valid_BP[..., None].astype(states_BPC.dtype)
        return (states_BPC * weights_BP1).sum(axis=1) / jnp.maximum(weights_BP1.sum(axis=1), 1)


class MaxPool(nn.Module):
    @nn.compact
    def __call__(self, states_BPC: jax.Array, valid_BP: jax.Array) -> jax.Array:
        return jnp.where(valid_BP[..., None], states_BPC, jnp.finfo(states_BPC.dtype).min).max(axis=1)


class AttentionPool(nn.Module):
    """A learned query per head attends the projected states (the keys); the values are the states
    themselves, split into the heads' slices (big_vision's MAP head without its MLP)."""

    num_heads: int = 4

    @nn.compact
    def __call__(self, states_BPC: jax.Array, valid_BP: jax.Array) -> jax.Array:
        batch, length, width = states_BPC.shape
        if width % self.num_heads:
            raise InputError(f"attention pooling: width {width} is not divisible by {self.num_heads} heads")
        head = width // self.num_heads
        query_NH = self.param("query", nn.initializers.normal(0.02), (self.num_heads, head))
        keys_BPNH = nn.Dense(width, name="k_proj")(states_BPC).reshape(batch, length, self.num_heads, head)
        scores_BNP = jnp.einsum("bpnh,nh->bnp", keys_BPNH.astype(jnp.float32), query_NH) / jnp.sqrt(head)
        scores_BNP = jnp.where(valid_BP[:, None, :], scores_BNP, -1e30)
        weights_BNP = jax.nn.softmax(scores_BNP, axis=-1).astype(states_BPC.dtype)
        values_BPNH = states_BPC.reshape(batch, length, self.num_heads, head)
        return jnp.einsum("bnp,bpnh->bnh", weights_BNP, values_BPNH).reshape(batch, width)


POOLINGS = {"mean": MeanPool, "max": MaxPool, "attention": AttentionPool}


class PoolBridgeActions(HeadActions):
    """DexVLA-style: `pooling` of the states after `backbone_layers` layers (`network.bridge_pool`)."""

    default_head: ClassVar[Mapping] = {"name": "flow"}

    def check(self):
        pooling = self.action["pooling"]
        if pooling not in POOLINGS:
            return f"model.vla.action.pooling='{pooling}'; expected one of {', '.join(POOLINGS)}"
        return super().check()

    def add_modules(self, network):
        super().add_modules(network)
        network.bridge_pool = POOLINGS[self.action["pooling"]]()

    def readout(self, network, observation, task):
        embeddings_BPC, valid_BP = proprio_token_prefix(network, observation, task)
        hidden_BPC, _ = network.backbone.language_model(
            embeddings_BPC,
            jnp.cumsum(valid_BP, axis=1),
            prefix_lm_mask(valid_BP, jnp.zeros(valid_BP.shape, jnp.int32)),
            num_layers=self.action["backbone_layers"],
        )
        return single_readout(network.bridge_pool(hidden_BPC, valid_BP)[:, None])
