"""The VLM-initialized policy: a PaliGemma backbone with discrete action tokens or a pi0-style flow expert.

Axis letters: B batch, T window, P prefix tokens, S action tokens, C backbone width, H horizon,
A action dimensions, V vocabulary.

`config["model"]["vla"]` (instead of the from-scratch tokenizers, transformer and heads):

    backbone: {"checkpoint": None, "size": "tiny" | "3B", "config": None}
        a PaliGemmaForConditionalGeneration directory (architecture and weights), else a randomly
        initialized preset of VLA_SIZES; `octo_like.policy.build.resolve_vla_config` writes the
        architecture into `config` so that a release rebuilds it without the checkpoint.
    action: {"kind": "bins" | "fast" | "flow", "horizon": 4, "action_dim": 4,
             "n_bins": 256,                      bins: RT-2 / OpenVLA uniform bins over [-1, 1]
             "fast_tokenizer": None,             fast: a directory written by scripts/fit_fast.py
             "max_action_tokens": 32,            fast: tokens per chunk, end-of-actions included
             "expert": {"hidden_size": 64, "intermediate_size": 256},   flow: the expert's width
             "time_conditioning": "concat"}      flow: pi0's time in the action tokens, or "adarms"
                                                 (pi0.5: the time modulates the expert's norms)
    lora: None or {"rank": 16, "alpha": 16.0, "targets": GEMMA_LORA_TARGETS}

The prefix is, in order: every camera's image tokens for every step of the window (SigLIP, then
the projector; steps before the episode start are masked), then the instruction's token
embeddings (padding masked). It attends bidirectionally; positions count its valid tokens.

Discrete tokens: the prefix ends with a proprio token (a Dense of the last step's proprio, when
the observation has one) and a learned start token; the action tokens follow causally, teacher
forced. The loss is cross-entropy on the action tokens only, over the whole vocabulary (as a
fine-tuned VLM's head); decoding is greedy with a KV cache and restricted to the action ids, so
it always yields a chunk. Bins are the last `n_bins` vocabulary ids; FAST tokens are the
`vocab - 1 - F + k` ids of a BPE of F tokens, and id `vocab - 1` ends a chunk. FAST's BPE runs on
the host (`jax.pure_callback`) in the loss and at decoding; a sequence that does not spell a
chunk decodes to zeros (the normalized mean action) and is counted in `fast_invalid_fraction`.

Flow: the action expert (`action_expert.PrefixWithExpert`) takes the proprio and the noisy chunk
as its suffix; sampling computes the prefix KV cache once, then runs `num_steps` Euler steps.

Only the last step of the window is predicted: actions [B, 1, H, A], as the policy's
`sample_actions` reads them.
"""

import dataclasses
import functools
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from octo_like.model.action_expert import Prefix, PrefixWithExpert
from octo_like.model.action_tokens import ActionBins, FASTTokenizer
from octo_like.model.language.gemma import GEMMA_SIZES, GemmaConfig
from octo_like.model.paligemma import PaliGemma, PaliGemmaConfig, prefix_lm_mask
from octo_like.model.vision.siglip import SIGLIP_SIZES, SiglipVisionConfig
from octo_like.utils.errors import InputError

ACTION_KINDS = ("bins", "fast", "flow")
# tiny: CPU-sized, 64x64 images (16 patches), a vocabulary that holds the installed MiniLM
# tokenizer's 30522 ids below 1025 action ids. 3B: pi0's PaliGemma-3B (So400m/14 at 224, Gemma 2B).
VLA_SIZES = {
    "tiny": PaliGemmaConfig(
        dataclasses.replace(
            SIGLIP_SIZES["B/16"],
            hidden_size=128,
            num_layers=2,
            num_heads=4,
            intermediate_size=256,
            image_size=64,
            patch_size=16,
            use_head=False,
        ),
        dataclasses.replace(
            GEMMA_SIZES["tiny"], vocab_size=32000, hidden_size=128, num_heads=4, head_dim=32, intermediate_size=512
        ),
        image_token_id=31999,
    ),
    "3B": PaliGemmaConfig(
        dataclasses.replace(SIGLIP_SIZES["So400m/14"], use_head=False),
        dataclasses.replace(GEMMA_SIZES["2B"], vocab_size=257216),
        image_token_id=257152,
    ),
}
# pi0's action expert is Gemma-300M: width 1024, MLP 4096, the 2B's attention geometry.
EXPERT_3B = {"hidden_size": 1024, "intermediate_size": 4096}


def paligemma_config_from_dict(values: Mapping, where: str) -> PaliGemmaConfig:
    try:
        return PaliGemmaConfig(
            SiglipVisionConfig(**values["vision"]), GemmaConfig(**values["text"]), values["image_token_id"]
        )
    except (KeyError, TypeError) as error:
        raise InputError(
            f"{where} is not a PaliGemma architecture ({error}); expected the dict resolve_vla_config writes"
        ) from None


@functools.lru_cache(maxsize=4)
def load_fast_tokenizer(directory: str) -> FASTTokenizer:
    return FASTTokenizer.load(directory)


def fast_id_range(directory: str, vocab_size: int) -> tuple[int, int]:
    """(id of FAST token 0, the end id) in the backbone's vocabulary: the F BPE tokens sit just
    below the end id, the vocabulary's last."""
    return vocab_size - 1 - load_fast_tokenizer(directory).vocab_size, vocab_size - 1


def fast_token_ids(
    directory: str, vocab_size: int, max_tokens: int, chunks_BHA: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Host side of the FAST loss: (ids int32 [B, max_tokens], mask bool [B, max_tokens]) in the
    backbone's vocabulary, each chunk's BPE tokens then the end id; longer sequences are cut."""
    fast = load_fast_tokenizer(directory)
    offset, end = fast_id_range(directory, vocab_size)
    ids_BS = np.full((len(chunks_BHA), max_tokens), end, np.int32)
    mask_BS = np.zeros((len(chunks_BHA), max_tokens), bool)
    for row, chunk_HA in enumerate(np.asarray(chunks_BHA, np.float64)):
        tokens = [offset + token for token in fast.encode(chunk_HA)][: max_tokens - 1] + [end]
        ids_BS[row, : len(tokens)] = tokens
        mask_BS[row, : len(tokens)] = True
    return ids_BS, mask_BS


def fast_chunks(directory: str, vocab_size: int, ids_BS: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Host side of FAST decoding: (chunks float32 [B, H, A], valid bool [B]); invalid rows are zeros."""
    fast = load_fast_tokenizer(directory)
    offset, end = fast_id_range(directory, vocab_size)
    chunks, valid = [], []
    for row in np.asarray(ids_BS):
        stop = int(np.argmax(row == end)) if (row == end).any() else len(row)
        chunk_HA, ok = fast.decode(row[:stop] - offset)
        chunks.append(chunk_HA)
        valid.append(ok)
    return np.stack(chunks).astype(np.float32), np.asarray(valid, bool)


class VLANetwork(nn.Module):
    """PaliGemma plus an action representation; the methods mirror `PolicyNetwork`'s."""

    backbone_config: PaliGemmaConfig
    action: Mapping
    expert_config: GemmaConfig | None = None

    @property
    def heads(self) -> dict:
        return {"action": self.action["kind"]}

    def setup(self):
        width = self.backbone_config.text.hidden_size
        self.backbone = PaliGemma(self.backbone_config)
        if self.action["kind"] == "flow":
            self.flow = PrefixWithExpert(
                self.backbone_config.text,
                self.expert_config,
                self.action["action_dim"],
                self.action["horizon"],
                self.action["time_conditioning"],
            )
        else:
            self.proprio_in = nn.Dense(width)
            self.action_start = self.param("action_start", nn.initializers.normal(0.02), (width,))

    # --- the prefix -------------------------------------------------------------------------

    def _prefix(self, observation, task) -> tuple[jax.Array, jax.Array]:
        """(embeddings [B, P, C], valid [B, P]): image tokens of every camera and step, then the instruction."""
        language = self.backbone.language_model
        pieces, valid = [], []
        timestep_valid_BT = observation["timestep_pad_mask"].astype(bool)
        for key in sorted(k for k in observation if k.startswith("image_")):
            images_BTHWC = observation[key]
            batch, window = images_BTHWC.shape[:2]
            size = self.backbone_config.vision.image_size
            if tuple(images_BTHWC.shape[2:4]) != (size, size):
                raise InputError(
                    f"observation['{key}'] holds {images_BTHWC.shape[2]}x{images_BTHWC.shape[3]} images; "
                    f"the backbone's SigLIP reads {size}x{size} "
                    f"(dataset.frame_transform_kwargs.resize_size.{key.removeprefix('image_')})"
                )
            # SigLIP's preprocessing: pixels scaled to [-1, 1].
            pixels = images_BTHWC.reshape(batch * window, *images_BTHWC.shape[2:]).astype(jnp.float32) / 127.5 - 1.0
            image_BNC = self.backbone.multi_modal_projector(self.backbone.vision_tower(pixels)["last_hidden_state"])
            image_BPC = image_BNC.reshape(batch, -1, image_BNC.shape[-1])
            step_valid_BT = timestep_valid_BT & observation.get("pad_mask_dict", {}).get(key, timestep_valid_BT).astype(
                bool
            )
            pieces.append(image_BPC)
            valid.append(jnp.repeat(step_valid_BT, image_BNC.shape[1], axis=1))
        instruction = task.get("language_instruction")
        if instruction is not None:
            ids_BL = jnp.asarray(instruction["input_ids"], jnp.int32)
            given_B = task.get("pad_mask_dict", {}).get("language_instruction", jnp.ones(ids_BL.shape[0], bool))
            pieces.append(language.embed(ids_BL))
            valid.append(instruction["attention_mask"].astype(bool) & given_B.astype(bool)[:, None])
        dtype = pieces[-1].dtype if instruction is not None else pieces[0].dtype
        return jnp.concatenate([piece.astype(dtype) for piece in pieces], axis=1), jnp.concatenate(valid, axis=1)

    def _token_prefix(self, observation, task) -> tuple[jax.Array, jax.Array]:
        """The prefix of the token path: + proprio token (when observed) + the start token."""
        embeddings_BPC, valid_BP = self._prefix(observation, task)
        batch, _, width = embeddings_BPC.shape
        extra = []
        if "proprio" in observation:
            extra.append(self.proprio_in(observation["proprio"][:, -1].astype(embeddings_BPC.dtype))[:, None])
        extra.append(jnp.broadcast_to(self.action_start.astype(embeddings_BPC.dtype), (batch, 1, width)))
        extra_BEC = jnp.concatenate(extra, axis=1).astype(embeddings_BPC.dtype)
        return jnp.concatenate([embeddings_BPC, extra_BEC], axis=1), jnp.concatenate(
            [valid_BP, jnp.ones(extra_BEC.shape[:2], bool)], axis=1
        )

    def _proprio(self, observation, batch: int) -> jax.Array:
        if "proprio" in observation:
            return observation["proprio"][:, -1]
        return jnp.zeros((batch, 1))

    # --- discrete action tokens -------------------------------------------------------------

    @property
    def _vocab(self) -> int:
        return self.backbone_config.text.vocab_size

    @property
    def num_action_tokens(self) -> int:
        """Decoded tokens per chunk (bins: H * A; FAST: max_action_tokens, the end id included)."""
        if self.action["kind"] == "bins":
            return self.action["horizon"] * self.action["action_dim"]
        return self.action["max_action_tokens"]

    def _first_action_id(self) -> int:
        """The lowest vocabulary id decoding may emit."""
        if self.action["kind"] == "bins":
            return self._vocab - self.action["n_bins"]
        return fast_id_range(self.action["fast_tokenizer"], self._vocab)[0]

    def _targets(self, actions_BHA: jax.Array, valid_BHA: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(action token ids [B, S], loss mask [B, S])."""
        batch = actions_BHA.shape[0]
        if self.action["kind"] == "bins":
            bins = ActionBins(self._vocab, self.action["n_bins"])
            return bins.encode(actions_BHA, xp=jnp).reshape(batch, -1), valid_BHA.reshape(batch, -1)
        shapes = (
            jax.ShapeDtypeStruct((batch, self.num_action_tokens), jnp.int32),
            jax.ShapeDtypeStruct((batch, self.num_action_tokens), jnp.bool_),
        )
        encode = functools.partial(fast_token_ids, self.action["fast_tokenizer"], self._vocab, self.num_action_tokens)
        ids_BS, mask_BS = jax.pure_callback(encode, shapes, actions_BHA.astype(jnp.float32), vmap_method="sequential")
        # A chunk with a padded step or dimension (episode end, a dataset with fewer dimensions)
        # is a whole sequence: it is learned only where all of it is real.
        return ids_BS, mask_BS & valid_BHA.all(axis=(1, 2))[:, None]

    def _token_logits(self, prefix_BPC, prefix_valid_BP, targets_BS) -> jax.Array:
        """Teacher-forced logits [B, S, V]: position P - 1 + i predicts action token i."""
        language = self.backbone.language_model
        inputs_BXC = jnp.concatenate([prefix_BPC, language.embed(targets_BS[:, :-1]).astype(prefix_BPC.dtype)], axis=1)
        suffix = targets_BS.shape[1] - 1
        valid_BX = jnp.concatenate([prefix_valid_BP, jnp.ones((targets_BS.shape[0], suffix), bool)], axis=1)
        types_BX = jnp.concatenate(
            [jnp.zeros_like(prefix_valid_BP, jnp.int32), jnp.ones((targets_BS.shape[0], suffix), jnp.int32)], axis=1
        )
        hidden_BXC, _ = language(inputs_BXC, jnp.cumsum(valid_BX, axis=1), prefix_lm_mask(valid_BX, types_BX))
        return language.embed_tokens.attend(hidden_BXC[:, prefix_BPC.shape[1] - 1 :])

    def _greedy_action_token(self, logits_BV: jax.Array) -> jax.Array:
        first = self._first_action_id()
        return (jnp.argmax(logits_BV[..., first:], axis=-1) + first).astype(jnp.int32)

    def decode_tokens(self, prefix_BPC, prefix_valid_BP, use_cache: bool = True) -> jax.Array:
        """Greedy action token ids [B, S]. With the cache the prefix runs once and each token
        attends the cached keys and values; without it every step reruns the whole sequence (the
        reference the cache must equal)."""
        language = self.backbone.language_model
        batch, prefix = prefix_valid_BP.shape
        num_tokens = self.num_action_tokens
        if not use_cache:
            tokens_BS = jnp.zeros((batch, num_tokens), jnp.int32)
            for step in range(num_tokens):
                logits_BSV = self._token_logits(prefix_BPC, prefix_valid_BP, tokens_BS[:, : step + 1])
                tokens_BS = tokens_BS.at[:, step].set(self._greedy_action_token(logits_BSV[:, step]))
            return tokens_BS
        total = prefix + num_tokens - 1
        caches = language.empty_caches(batch, total, prefix_BPC.dtype)
        valid_BX = jnp.zeros((batch, total), bool).at[:, :prefix].set(prefix_valid_BP)
        prefix_mask_BPX = (
            jnp.zeros((batch, prefix, total), bool)
            .at[:, :, :prefix]
            .set(prefix_lm_mask(prefix_valid_BP, jnp.zeros((batch, prefix), jnp.int32)))
        )
        hidden_BPC, caches = language(prefix_BPC, jnp.cumsum(prefix_valid_BP, axis=1), prefix_mask_BPX, caches, 0)
        first_B = self._greedy_action_token(language.embed_tokens.attend(hidden_BPC[:, -1]))
        tokens_BS = jnp.zeros((batch, num_tokens), jnp.int32).at[:, 0].set(first_B)
        count_B = prefix_valid_BP.sum(axis=1)

        def step(index, carry):
            tokens_BS, valid_BX, caches = carry
            slot = prefix + index - 1  # where token index - 1 (the input) sits in the cache
            valid_BX = valid_BX.at[:, slot].set(True)
            seen_B1X = (valid_BX & (jnp.arange(total) <= slot))[:, None, :]
            inputs_B1C = language.embed(tokens_BS[:, index - 1][:, None]).astype(prefix_BPC.dtype)
            hidden_B1C, caches = language(inputs_B1C, (count_B + index)[:, None], seen_B1X, caches, slot)
            token_B = self._greedy_action_token(language.embed_tokens.attend(hidden_B1C[:, 0]))
            return tokens_BS.at[:, index].set(token_B), valid_BX, caches

        tokens_BS, _, _ = jax.lax.fori_loop(1, num_tokens, step, (tokens_BS, valid_BX, caches))
        return tokens_BS

    def _actions_from_tokens(self, tokens_BS) -> tuple[jax.Array, jax.Array]:
        """(chunks [B, H, A], valid [B])."""
        batch, horizon, action_dim = tokens_BS.shape[0], self.action["horizon"], self.action["action_dim"]
        if self.action["kind"] == "bins":
            chunks = (
                ActionBins(self._vocab, self.action["n_bins"])
                .decode(tokens_BS, xp=jnp)
                .reshape(batch, horizon, action_dim)
            )
            return chunks, jnp.ones(batch, bool)
        shapes = (
            jax.ShapeDtypeStruct((batch, horizon, action_dim), jnp.float32),
            jax.ShapeDtypeStruct((batch,), jnp.bool_),
        )
        decode = functools.partial(fast_chunks, self.action["fast_tokenizer"], self._vocab)
        return jax.pure_callback(decode, shapes, tokens_BS, vmap_method="sequential")

    # --- the PolicyNetwork interface --------------------------------------------------------

    def __call__(self, observation, task, *, train: bool = False):
        """Touches every parameter (for init)."""
        batch = observation["timestep_pad_mask"].shape[0]
        horizon, action_dim = self.action["horizon"], self.action["action_dim"]
        if self.action["kind"] == "flow":
            prefix = Prefix.bidirectional(*self._prefix(observation, task))
            return self.flow.velocity(
                self.backbone.language_model.layers,
                prefix,
                self._proprio(observation, batch),
                jnp.zeros((batch, horizon, action_dim)),
                jnp.ones(batch),
            )
        prefix_BPC, valid_BP = self._token_prefix(observation, task)
        return self._token_logits(prefix_BPC, valid_BP, jnp.zeros((batch, 2), jnp.int32))

    def loss(self, observation, task, actions_BTHA, action_pad_mask_BTHA, *, rng, train: bool):
        actions_BHA = actions_BTHA[:, -1]
        valid_BHA = action_pad_mask_BTHA[:, -1] & observation["timestep_pad_mask"][:, -1, None, None]
        if self.action["kind"] == "flow":
            prefix = Prefix.bidirectional(*self._prefix(observation, task))
            loss = self.flow.loss(
                self.backbone.language_model.layers,
                prefix,
                self._proprio(observation, actions_BHA.shape[0]),
                actions_BHA,
                valid_BHA,
                rng,
            )
            return loss, {"action_flow_loss": loss}
        targets_BS, mask_BS = self._targets(actions_BHA, valid_BHA)
        logits_BSV = self._token_logits(*self._token_prefix(observation, task), targets_BS).astype(jnp.float32)
        log_probs_BS = jnp.take_along_axis(jax.nn.log_softmax(logits_BSV), targets_BS[..., None], axis=-1)[..., 0]
        count = jnp.maximum(mask_BS.sum(), 1)
        loss = -jnp.where(mask_BS, log_probs_BS, 0.0).sum() / count
        accuracy = jnp.where(mask_BS, jnp.argmax(logits_BSV, axis=-1) == targets_BS, False).sum() / count
        return loss, {"action_token_loss": loss, "action_token_accuracy": accuracy}

    def _sample(
        self, observation, task, rng, num_steps: int = 10, use_cache: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        if self.action["kind"] == "flow":
            prefix = Prefix.bidirectional(*self._prefix(observation, task))
            batch = prefix.valid_BP.shape[0]
            chunks = self.flow.sample(
                self.backbone.language_model.layers,
                prefix,
                self._proprio(observation, batch),
                rng,
                num_steps,
                use_cache,
            )
            return chunks, jnp.ones(batch, bool)
        return self._actions_from_tokens(
            self.decode_tokens(*self._token_prefix(observation, task), use_cache=use_cache)
        )

    def action_mse(self, observation, task, actions_BTHA, action_pad_mask_BTHA, *, rng):
        predicted_BHA, valid_B = self._sample(observation, task, rng)
        valid_BHA = action_pad_mask_BTHA[:, -1] & observation["timestep_pad_mask"][:, -1, None, None]
        squared_BHA = jnp.where(valid_BHA, (predicted_BHA - actions_BTHA[:, -1]) ** 2, 0.0)
        metrics = {"action_action_mse": squared_BHA.sum() / jnp.maximum(valid_BHA.sum(), 1)}
        if self.action["kind"] == "fast":
            metrics["action_fast_invalid_fraction"] = 1.0 - valid_B.mean()
        return metrics

    def predict_action(self, observation, task, *, rng, head: str, sampling: Mapping):
        """Chunks [B, 1, H, A] of the last step; `sampling`: num_steps (flow), use_cache."""
        del head  # one action representation: "action"
        unknown = sorted(
            set(sampling) - ({"num_steps", "use_cache"} if self.action["kind"] == "flow" else {"use_cache"})
        )
        if unknown:
            raise InputError(f"sampling options {unknown} do not apply to '{self.action['kind']}' actions")
        return self._sample(observation, task, rng, **sampling)[0][:, None]


def make_vla_network(vla: Mapping) -> VLANetwork:
    """`vla` as `resolve_vla_config` returns it."""
    backbone = paligemma_config_from_dict(vla["backbone"]["config"], "model.vla.backbone.config")
    action = dict(vla["action"])
    expert = None
    if action["kind"] == "flow":
        expert = dataclasses.replace(backbone.text, **action["expert"])
    if action["kind"] == "bins" and action["n_bins"] > backbone.text.vocab_size:
        raise InputError(
            f"model.vla.action.n_bins={action['n_bins']} exceeds the backbone's vocabulary of "
            f"{backbone.text.vocab_size}"
        )
    return VLANetwork(backbone, action, expert)
