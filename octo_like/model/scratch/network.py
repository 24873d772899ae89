"""The from-scratch policy network (Octo style): observation and task tokenizers -> block-wise
transformer with readout tokens -> action heads, every component named by a spec in the config.

Language goes through a frozen encoder: all-MiniLM-L6-v2 (`language_encoder` in the parameters) or
the text tower of the policy's frozen CLIP (`clip`), whose per-token joint embeddings the
text-aware image tokenizers also read. Outputs of the encoders are cut from the gradient. With
`language_tokens="sentence"` the transformer reads one language token, the encoder's sentence
embedding (masked mean of its token states, unit length: how all-MiniLM-L6-v2 was trained to
compare sentences), so rewordings of an instruction land near each other; `"all"` passes every
token state. `language_noise_std` > 0 jitters the sentence embedding in training (Gaussian noise
of that std per dimension, then unit length again): a rewording the policy never saw lands near
its task's training paraphrases but not on them, so the policy is taught the neighbourhood of
each, not three points per task. octo_like.policy builds this module from a config and loads its
pretrained parts.

The encoder's output for an instruction never changes, so training computes it once per distinct
instruction on the host (octo_like/train/instruction_states.py) and passes it in the batch as
`task["language_instruction"]["states"]` (float32 [B, L, C]); where it is present the encoder
does not run.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from octo_like.model.heads import masked_mean
from octo_like.model.language.minilm import BertConfig, BertEncoder
from octo_like.model.scratch.observation_tokenizers import language_mask
from octo_like.model.scratch.transformer import BlockTransformer, FrameContext, transformer_settings
from octo_like.model.tokens import TokenGroup
from octo_like.model.vision.clip import CLIPConfig, CLIPModel
from octo_like.utils import spec as spec_lib

# Parameter collections of the frozen encoders.
LANGUAGE_ENCODER = "language_encoder"
CLIP = "clip"
LANGUAGE_TOKENS = ("all", "sentence")


class PolicyNetwork(nn.Module):
    """The Flax module; every component is named by a spec in the config."""

    observation_tokenizers: Mapping[str, Mapping]
    task_tokenizers: Mapping[str, Mapping]
    readouts: Mapping[str, int]
    transformer: Mapping[str, Any]
    heads: Mapping[str, Mapping]
    language: BertConfig | None
    window_size: int
    clip_config: CLIPConfig | None = None
    language_from_clip: bool = False
    language_tokens: str = "all"
    language_noise_std: float = 0.0

    def setup(self):
        self.observation_tokenizer_modules = {
            name: spec_lib.instantiate(s) for name, s in self.observation_tokenizers.items()
        }
        self.task_tokenizer_modules = {name: spec_lib.instantiate(s) for name, s in self.task_tokenizers.items()}
        self.head_modules = {name: spec_lib.instantiate(s) for name, s in self.heads.items()}
        if self.language is not None:
            setattr(self, LANGUAGE_ENCODER, BertEncoder(self.language))
        if self.clip_config is not None:
            setattr(self, CLIP, CLIPModel(self.clip_config))
        transformer = transformer_settings(self.transformer)
        transformer.pop("size", None)
        self.block_transformer = BlockTransformer(**transformer, num_timesteps_max=self.window_size)

    def language_groups(self, task, *, train: bool) -> tuple[dict[str, TokenGroup], jax.Array | None]:
        """({"language": TokenGroup} or {}, the pooled instruction embedding [B, C] or None)."""
        if self.language is None and not self.language_from_clip:
            return {}, None
        language = task["language_instruction"]
        mask_BL = language_mask(task)
        if "states" in language:  # computed once per instruction, outside the step
            hidden_BLC = jnp.asarray(language["states"])
        else:
            hidden_BLC = self.encode_instructions(
                jnp.asarray(language["input_ids"], jnp.int32), mask_BL.astype(jnp.int32)
            )
        # Frozen: no gradient reaches the encoder (the optimizer also leaves it untouched).
        hidden_BLC = jax.lax.stop_gradient(hidden_BLC)
        weights_BL1 = mask_BL[..., None].astype(hidden_BLC.dtype)
        embedding_BC = (hidden_BLC * weights_BL1).sum(1) / jnp.maximum(weights_BL1.sum(1), 1.0)
        if self.language_tokens == "sentence":
            norm_B1 = jnp.maximum(jnp.linalg.norm(embedding_BC, axis=-1, keepdims=True), 1e-6)
            sentence_BC = embedding_BC / norm_B1
            if train and self.language_noise_std > 0:
                noise_BC = self.language_noise_std * jax.random.normal(self.make_rng("dropout"), sentence_BC.shape)
                sentence_BC = sentence_BC + noise_BC.astype(sentence_BC.dtype)
                sentence_BC = sentence_BC / jnp.maximum(jnp.linalg.norm(sentence_BC, axis=-1, keepdims=True), 1e-6)
                embedding_BC = sentence_BC * norm_B1  # FiLM reads the same jittered instruction, at its scale
            return {"language": TokenGroup(sentence_BC[:, None], mask_BL.any(axis=1, keepdims=True))}, embedding_BC
        return {"language": TokenGroup(hidden_BLC, mask_BL)}, embedding_BC

    def encode_instructions(self, ids_BL, mask_BL):
        """The frozen encoder's token states [B, L, C] of instructions (ids and mask int32 [B, L])."""
        if self.language_from_clip:
            return getattr(self, CLIP).encode_text(ids_BL, mask_BL)["token_embeds"]
        return getattr(self, LANGUAGE_ENCODER)(ids_BL, mask_BL)

    def task_groups(self, task, *, train: bool) -> tuple[dict[str, TokenGroup], jax.Array | None]:
        """The task token groups (language, then the task tokenizers') and the pooled instruction."""
        task_groups, language_embedding_BC = self.language_groups(task, train=train)
        for name, tokenizer in self.task_tokenizer_modules.items():
            task_groups[name] = self._tokenize(tokenizer, {}, task, task_groups, language_embedding_BC, train)
        return task_groups, language_embedding_BC

    def _tokenize(self, tokenizer, observation, task, task_groups, language_embedding_BC, train) -> TokenGroup:
        extra = {}
        if getattr(tokenizer, "reads_clip", False):
            extra = {"language": task_groups.get("language"), "clip": getattr(self, CLIP, None)}
        return tokenizer(observation, task, train=train, language_embedding_BC=language_embedding_BC, **extra)

    def observation_groups(self, observation, task, task_groups, language_embedding_BC, *, train: bool):
        """Observation token groups [B, T, N, C]: each frame's tokens depend on that frame and the task."""
        return {
            name: self._tokenize(tokenizer, observation, task, task_groups, language_embedding_BC, train)
            for name, tokenizer in self.observation_tokenizer_modules.items()
        }

    @property
    def _readout_sizes(self) -> dict[str, int]:
        return {f"readout_{name}": size for name, size in self.readouts.items()}

    def readout_groups(self, observation, task, *, train: bool) -> dict[str, TokenGroup]:
        """The transformer's readout tokens by group name ("readout_<name>")."""
        task_groups, language_embedding_BC = self.task_groups(task, train=train)
        obs_groups = self.observation_groups(observation, task, task_groups, language_embedding_BC, train=train)
        _, _, readout_out = self.block_transformer(
            task_groups,
            obs_groups,
            self._readout_sizes,
            train=train,
            timestep_BT=observation.get("timestep"),
            readouts_only=True,
        )
        return readout_out

    def __call__(self, observation, task, *, train: bool = False):
        """Touches every parameter (for init): the heads' outputs by head name."""
        readouts = self.readout_groups(observation, task, train=train)
        return {name: head(readouts[head.readout_key], train=train) for name, head in self.head_modules.items()}

    def loss(self, observation, task, actions_BTHA, action_pad_mask_BTHA, *, rng, train: bool):
        readouts = self.readout_groups(observation, task, train=train)
        total, metrics = 0.0, {}
        for index, (name, head) in enumerate(sorted(self.head_modules.items())):
            loss, head_metrics = head.loss(
                readouts[head.readout_key],
                actions_BTHA,
                action_pad_mask_BTHA,
                observation["timestep_pad_mask"],
                rng=jax.random.fold_in(rng, index),
                train=train,
            )
            total = total + loss
            metrics.update({f"{name}_{key}": value for key, value in head_metrics.items()})
        return total, metrics

    def action_mse(self, observation, task, actions_BTHA, action_pad_mask_BTHA, *, rng):
        """Per head: the masked MSE of sampled action chunks against the targets (normalized space)."""
        readouts = self.readout_groups(observation, task, train=False)
        valid_BTHA = action_pad_mask_BTHA & observation["timestep_pad_mask"][:, :, None, None]
        metrics = {}
        for index, (name, head) in enumerate(sorted(self.head_modules.items())):
            predicted_BTHA = head.predict_action(
                readouts[head.readout_key], rng=jax.random.fold_in(rng, index), train=False
            )
            metrics[f"{name}_action_mse"] = masked_mean((predicted_BTHA - actions_BTHA) ** 2, valid_BTHA)
        return metrics

    def predict_action(self, observation, task, *, rng, head: str, sampling: Mapping[str, Any]):
        """The chunk [B, 1, H, A] of the window's last timestep (the one a policy acts on)."""
        readouts = self.readout_groups(observation, task, train=False)
        module = self.head_modules[head]
        return module.predict_action(_last_timestep(readouts[module.readout_key]), rng=rng, train=False, **sampling)

    # Inference with a cache (see octo_like/policy/episode_cache.py): `encode_task` once per
    # episode, then `predict_action_step` per control step on the frames not cached yet.

    def encode_task(self, task) -> dict:
        """What holds for a whole episode: the task tokens' keys and values at every layer, and the
        instruction the observation tokenizers read (FiLM, text-aware selection)."""
        task_groups, language_embedding_BC = self.task_groups(task, train=False)
        return {
            "transformer": self.block_transformer.encode_task(task_groups),
            "language": task_groups.get("language"),
            "language_embedding_BC": language_embedding_BC,
        }

    def readouts_step(self, task, context, frames, observation) -> tuple[dict[str, TokenGroup], list]:
        """(the last timestep's readouts [B, 1, R, C] by group name, the new frames' cache entries,
        one per timestep of `observation`).

        `observation` holds the window's last frames, those not cached; `frames` the cache entries
        of the slots before them, oldest first (from earlier calls). An entry is the frame's
        observation tokens (history="causal": the transformer reruns every frame on the cached
        task) or its keys and values at every layer (history="readout": only new frames run).
        """
        task_groups = {"language": context["language"]} if context["language"] is not None else {}
        new_groups = self.observation_groups(
            observation, task, task_groups, context["language_embedding_BC"], train=False
        )
        transformer = self.block_transformer
        if transformer.history == "readout":
            frame_context = FrameContext.concatenate(frames) if frames else None
            readouts, new_context = transformer.step(
                context["transformer"],
                frame_context,
                new_groups,
                self._readout_sizes,
                timestep_BT=observation.get("timestep"),
            )
            return readouts, new_context.split()
        obs_groups = jax.tree.map(lambda *parts: jnp.concatenate(parts, axis=1), *frames, new_groups)
        readouts, _ = transformer.step(context["transformer"], None, obs_groups, self._readout_sizes)
        num_new = next(iter(new_groups.values())).tokens.shape[1]
        return readouts, [jax.tree.map(lambda x, t=t: x[:, t : t + 1], new_groups) for t in range(num_new)]

    def predict_action_step(self, task, context, frames, observation, *, rng, head: str, sampling: Mapping[str, Any]):
        """(the chunk [B, 1, H, A], the new frames' cache entries): `readouts_step`, then the head."""
        readouts, new_entries = self.readouts_step(task, context, frames, observation)
        module = self.head_modules[head]
        actions_B1HA = module.predict_action(readouts[module.readout_key], rng=rng, train=False, **sampling)
        return actions_B1HA, new_entries


def _last_timestep(readout: TokenGroup) -> TokenGroup:
    return TokenGroup(readout.tokens[:, -1:], readout.mask[:, -1:])
