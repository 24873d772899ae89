"""What turns the VLA backbone's states into action chunks: the declared interface (`VLAActions`,
one class per `model.vla.action.kind`, registered in kinds.py, so that VLANetwork holds no per-kind
branches), the helpers every kind reads the backbone with, and the kinds of this module.

Axis letters: B batch, P prefix tokens, S action tokens, C backbone width, H horizon,
A action dimensions, V vocabulary.

The classes are stateless strategies over the network. `add_modules(network)`, called in the
network's `setup`, creates the parameters a kind needs on the network itself, so that parameter
paths stay where releases and sharding rules expect them: `flow/...` (the action expert) for
`flow`, `proprio_in/...` and `action_start` for the token kinds. Whatever a kind caches between
the backbone and its denoising or decoding steps stays inside its `sample`.

- `BinActions` (RT-2 / OpenVLA): H * A tokens, the last `n_bins` vocabulary ids.
- `FASTActions` (pi0-FAST): the `vocab - 1 - F + k` ids of a BPE of F tokens over the chunk's
  DCT, then the end id `vocab - 1`. The BPE runs on the host (`jax.pure_callback`).
- `FlowActions` (pi0): a flow-matching action expert attending jointly with the backbone, with
  knowledge insulation as an option.

Both token kinds decode greedily with a KV cache (or by Jacobi iterations), restricted to the
action ids, so decoding always yields a chunk; their loss is cross-entropy over the whole
vocabulary on the action tokens only (as a fine-tuned VLM's head), teacher forced.
"""

import abc
import dataclasses
import functools
from collections.abc import Mapping
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from octo_like.model.language.gemma import GemmaConfig
from octo_like.model.vla.action_expert import Prefix, PrefixWithExpert, expert_geometry_mismatch
from octo_like.model.vla.action_tokenizers import ActionBins, FASTTokenizer
from octo_like.model.vla.paligemma import PaliGemmaConfig, block_mask, prefix_lm_mask
from octo_like.utils.errors import InputError


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


@dataclasses.dataclass(frozen=True)
class VLAActions(abc.ABC):
    """The interface: `action` is the resolved `model.vla.action` section."""

    action: Mapping
    backbone_config: PaliGemmaConfig
    sampling_options: ClassVar[frozenset[str]] = frozenset({"use_cache"})

    @property
    def horizon(self) -> int:
        return self.action["horizon"]

    @property
    def action_dim(self) -> int:
        return self.action["action_dim"]

    def check(self) -> str | None:
        """What makes this action section unusable with the backbone (one line), or None."""
        return None

    def expert_config(self) -> GemmaConfig | None:
        """The architecture of a separate action expert, for the kinds that have one."""
        return None

    @abc.abstractmethod
    def add_modules(self, network: nn.Module) -> None:
        """Creates the kind's parameters on `network`; called inside its `setup`."""

    @abc.abstractmethod
    def init_outputs(self, network: nn.Module, observation, task) -> jax.Array:
        """Touches every parameter of the kind (for init)."""

    @abc.abstractmethod
    def loss(
        self, network: nn.Module, observation, task, actions_BHA, valid_BHA, rng, train: bool
    ) -> tuple[jax.Array, dict]:
        """(loss, metrics) of the last step's chunks; `valid_BHA` masks padding; `train` turns dropout on."""

    @abc.abstractmethod
    def sample(self, network: nn.Module, observation, task, rng, **sampling) -> tuple[jax.Array, jax.Array]:
        """(chunks float32 [B, H, A] in the normalized action space, valid bool [B])."""

    def sample_metrics(self, valid_B: jax.Array) -> dict:
        """Metrics of sampled chunks beyond their error (validation)."""
        return {}


def backbone_layers_error(actions: VLAActions) -> str | None:
    """Why `model.vla.action.backbone_layers` (layer skipping) does not fit the backbone, or None."""
    layers, total = actions.action["backbone_layers"], actions.backbone_config.text.num_layers
    if layers is not None and not 1 <= layers <= total:
        return f"model.vla.action.backbone_layers={layers}; expected 1 .. the backbone's {total} layers"
    return None


def proprio_tokens(network: nn.Module, observation, like_BPC: jax.Array) -> jax.Array:
    """[B, 1, C]: `network.proprio_in` of the last step's proprio, or [B, 0, C] when the observation has none."""
    if "proprio" not in observation:
        return jnp.zeros((like_BPC.shape[0], 0, like_BPC.shape[2]), like_BPC.dtype)
    return network.proprio_in(observation["proprio"][:, -1].astype(like_BPC.dtype))[:, None].astype(like_BPC.dtype)


def proprio_token_prefix(network: nn.Module, observation, task) -> tuple[jax.Array, jax.Array]:
    """The network's prefix [B, P, C] and valid [B, P], then the proprio token (when observed)."""
    embeddings_BPC, valid_BP = network.prefix(observation, task)
    proprio_BEC = proprio_tokens(network, observation, embeddings_BPC)
    valid_BE = jnp.ones(proprio_BEC.shape[:2], bool)
    return jnp.concatenate([embeddings_BPC, proprio_BEC], axis=1), jnp.concatenate([valid_BP, valid_BE], axis=1)


def query_states(
    network: nn.Module, observation, task, queries_KC: jax.Array, num_layers: int | None = None
) -> jax.Array:
    """The backbone's final-normed states [B, K, C] of K learned query tokens appended to the
    prefix and proprio token: the queries attend everything and each other (block-wise attention),
    the prefix never attends them. Action slots (OpenVLA-OFT) and bridge tokens (CogACT) read the
    backbone this way."""
    embeddings_BPC, valid_BP = proprio_token_prefix(network, observation, task)
    batch, prefix, width = embeddings_BPC.shape
    queries_BKC = jnp.broadcast_to(queries_KC.astype(embeddings_BPC.dtype), (batch, *queries_KC.shape))
    valid_BX = jnp.concatenate([valid_BP, jnp.ones((batch, queries_KC.shape[0]), bool)], axis=1)
    blocks_BX = jnp.concatenate([jnp.zeros((batch, prefix), jnp.int32), jnp.ones(queries_BKC.shape[:2], jnp.int32)], 1)
    language = network.backbone.language_model
    hidden_BXC, _ = language(
        jnp.concatenate([embeddings_BPC, queries_BKC], axis=1),
        jnp.cumsum(valid_BX, axis=1),
        block_mask(valid_BX, blocks_BX),
        num_layers=num_layers,
    )
    return hidden_BXC[:, prefix:]


def token_cross_entropy(logits_BSV: jax.Array, targets_BS: jax.Array, mask_BS: jax.Array) -> tuple[jax.Array, dict]:
    """(mean cross-entropy over the masked tokens, {loss, accuracy} metrics)."""
    logits_BSV = logits_BSV.astype(jnp.float32)
    log_probs_BS = jnp.take_along_axis(jax.nn.log_softmax(logits_BSV), targets_BS[..., None], axis=-1)[..., 0]
    count = jnp.maximum(mask_BS.sum(), 1)
    loss = -jnp.where(mask_BS, log_probs_BS, 0.0).sum() / count
    accuracy = jnp.where(mask_BS, jnp.argmax(logits_BSV, axis=-1) == targets_BS, False).sum() / count
    return loss, {"action_token_loss": loss, "action_token_accuracy": accuracy}


class FlowActions(VLAActions):
    """pi0: the expert takes the proprio and the noisy chunk as its suffix; sampling computes the
    prefix KV cache once, then runs `num_steps` Euler steps.

    `knowledge_insulation` (pi0.5 + KI): in the same forward, the backbone also learns the chunk's
    FAST tokens (teacher forced after the prefix, causally, so the prefix's keys and values are what
    they are without them), while the expert reads the prefix keys and values through a
    stop-gradient: the flow loss trains only the expert, the token loss only the backbone (and its
    proprio and start tokens). The loss is `token_loss_weight * tokens + flow_loss_weight * flow`;
    inference runs the expert alone, as without insulation."""

    sampling_options = frozenset({"num_steps", "use_cache"})

    @property
    def insulated(self) -> bool:
        return bool(self.action["knowledge_insulation"])

    @property
    def insulating_tokens(self) -> "FASTActions":
        return FASTActions(self.action, self.backbone_config)

    def expert_config(self):
        # The backbone's attention geometry at the configured width (pi0's Gemma-300M expert).
        return dataclasses.replace(self.backbone_config.text, **self.action["expert"])

    def check(self):
        if self.insulated and not self.action["fast_tokenizer"]:
            return (
                "model.vla.action.knowledge_insulation needs model.vla.action.fast_tokenizer "
                "(the backbone learns FAST tokens; write one with scripts/fit_fast.py)"
            )
        return expert_geometry_mismatch(self.backbone_config.text, self.expert_config())

    def add_modules(self, network):
        network.flow = PrefixWithExpert(
            self.backbone_config.text,
            network.expert_config,
            self.action_dim,
            self.horizon,
            self.action["time_conditioning"],
        )
        if self.insulated:
            self.insulating_tokens.add_modules(network)

    def _inputs(self, network, observation, task) -> tuple[Prefix, jax.Array]:
        prefix = Prefix.bidirectional(*network.prefix(observation, task))
        return prefix, network.last_proprio(observation, prefix.valid_BP.shape[0])

    def init_outputs(self, network, observation, task):
        prefix, proprio = self._inputs(network, observation, task)
        batch = proprio.shape[0]
        layers = network.backbone.language_model.layers
        velocity_BHA = network.flow.velocity(
            layers, prefix, proprio, jnp.zeros((batch, self.horizon, self.action_dim)), jnp.ones(batch)
        )
        if not self.insulated:
            return velocity_BHA
        return velocity_BHA, self.insulating_tokens.init_outputs(network, observation, task)

    def loss(self, network, observation, task, actions_BHA, valid_BHA, rng, train):
        del train  # no dropout
        if self.insulated:
            return self._insulated_loss(network, observation, task, actions_BHA, valid_BHA, rng)
        prefix, proprio = self._inputs(network, observation, task)
        layers = network.backbone.language_model.layers
        loss, _ = network.flow.loss(layers, prefix, proprio, actions_BHA, valid_BHA, rng)
        return loss, {"action_flow_loss": loss}

    def _insulated_loss(self, network, observation, task, actions_BHA, valid_BHA, rng):
        tokens = self.insulating_tokens
        targets_BS, mask_BS = tokens.targets(actions_BHA, valid_BHA)
        embeddings_BPC, valid_BP = network.prefix(observation, task)
        # After the prefix, causally (type 1): the proprio and start tokens, then the FAST tokens.
        extra_BEC = tokens.proprio_and_start(network, observation, embeddings_BPC)
        language = network.backbone.language_model
        stream_BXC = jnp.concatenate(
            [embeddings_BPC, extra_BEC, language.embed(targets_BS[:, :-1]).astype(embeddings_BPC.dtype)], axis=1
        )
        batch, prefix = valid_BP.shape
        causal = stream_BXC.shape[1] - prefix
        stream_valid_BX = jnp.concatenate([valid_BP, jnp.ones((batch, causal), bool)], axis=1)
        types_BX = jnp.concatenate([jnp.zeros((batch, prefix), jnp.int32), jnp.ones((batch, causal), jnp.int32)], 1)
        # The expert sees the prefix only (valid_BP), at the positions it has at inference.
        stream = Prefix(
            stream_BXC,
            jnp.cumsum(stream_valid_BX, axis=1),
            jnp.concatenate([valid_BP, jnp.zeros((batch, causal), bool)], axis=1),
            prefix_lm_mask(stream_valid_BX, types_BX),
        )
        flow_loss, hidden_BXC = network.flow.loss(
            language.layers,
            stream,
            network.last_proprio(observation, batch),
            actions_BHA,
            valid_BHA,
            rng,
            insulate=True,
        )
        # Position P + E - 1 (the start token) predicts FAST token 0, and so on.
        logits_BSV = language.embed_tokens.attend(language.norm(hidden_BXC[:, prefix + extra_BEC.shape[1] - 1 :]))
        token_loss, metrics = token_cross_entropy(logits_BSV, targets_BS, mask_BS)
        weights = self.action["token_loss_weight"], self.action["flow_loss_weight"]
        loss = weights[0] * token_loss + weights[1] * flow_loss
        return loss, {**metrics, "action_flow_loss": flow_loss}

    def sample(self, network, observation, task, rng, num_steps: int = 10, use_cache: bool = True):
        prefix, proprio = self._inputs(network, observation, task)
        layers = network.backbone.language_model.layers
        chunks_BHA = network.flow.sample(layers, prefix, proprio, rng, num_steps, use_cache)
        return chunks_BHA, jnp.ones(chunks_BHA.shape[0], bool)


DECODINGS = ("greedy", "jacobi")


class TokenActions(VLAActions):
    """Action tokens decoded by the backbone itself. The prefix ends with a proprio token (a Dense
    of the last step's proprio, when the observation has one) and a learned start token; the action
    tokens follow causally.

    Decoding (`sampling={"decoding": ...}`): "greedy", one token per forward on a KV cache; or
    "jacobi" (PD-VLA), which guesses the whole sequence and re-predicts every token of it in one
    forward until the guess stops changing. Each iteration fixes at least the first wrong token, so
    the fixed point is reached in at most S - 1 iterations and it is exactly the greedy sequence."""

    sampling_options = frozenset({"use_cache", "decoding"})

    @property
    def vocab_size(self) -> int:
        return self.backbone_config.text.vocab_size

    @property
    @abc.abstractmethod
    def num_action_tokens(self) -> int:
        """Decoded tokens per chunk."""

    @abc.abstractmethod
    def first_action_id(self) -> int:
        """The lowest vocabulary id decoding may emit."""

    @abc.abstractmethod
    def targets(self, actions_BHA: jax.Array, valid_BHA: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(action token ids [B, S], loss mask [B, S])."""

    @abc.abstractmethod
    def chunks_from_tokens(self, tokens_BS: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(chunks [B, H, A], valid [B])."""

    def add_modules(self, network):
        width = self.backbone_config.text.hidden_size
        network.proprio_in = nn.Dense(width)
        network.action_start = network.param("action_start", nn.initializers.normal(0.02), (width,))

    def proprio_and_start(self, network, observation, like_BPC: jax.Array) -> jax.Array:
        """The tokens [B, E, C] that precede the action tokens: the proprio token (when observed),
        then the start token."""
        batch, _, width = like_BPC.shape
        start_B1C = jnp.broadcast_to(network.action_start.astype(like_BPC.dtype), (batch, 1, width))
        return jnp.concatenate([proprio_tokens(network, observation, like_BPC), start_B1C], axis=1)

    def token_prefix(self, network, observation, task) -> tuple[jax.Array, jax.Array]:
        """The shared prefix + proprio token (when observed) + the start token."""
        embeddings_BPC, valid_BP = network.prefix(observation, task)
        extra_BEC = self.proprio_and_start(network, observation, embeddings_BPC)
        valid_BE = jnp.ones(extra_BEC.shape[:2], bool)
        return jnp.concatenate([embeddings_BPC, extra_BEC], axis=1), jnp.concatenate([valid_BP, valid_BE], axis=1)

    def token_logits(self, network, prefix_BPC, prefix_valid_BP, targets_BS) -> jax.Array:
        """Teacher-forced logits [B, S, V] over the whole vocabulary (the loss's)."""
        language = network.backbone.language_model
        return language.embed_tokens.attend(self.token_states(network, prefix_BPC, prefix_valid_BP, targets_BS))

    def token_states(self, network, prefix_BPC, prefix_valid_BP, targets_BS) -> jax.Array:
        """Teacher-forced final states [B, S, C]: position P - 1 + i predicts action token i."""
        language = network.backbone.language_model
        inputs_BXC = jnp.concatenate([prefix_BPC, language.embed(targets_BS[:, :-1]).astype(prefix_BPC.dtype)], axis=1)
        batch, suffix = targets_BS.shape[0], targets_BS.shape[1] - 1
        valid_BX = jnp.concatenate([prefix_valid_BP, jnp.ones((batch, suffix), bool)], axis=1)
        types_BX = jnp.concatenate(
            [jnp.zeros_like(prefix_valid_BP, jnp.int32), jnp.ones((batch, suffix), jnp.int32)], axis=1
        )
        hidden_BXC, _ = language(inputs_BXC, jnp.cumsum(valid_BX, axis=1), prefix_lm_mask(valid_BX, types_BX))
        return hidden_BXC[:, prefix_BPC.shape[1] - 1 :]

    def greedy_action_token(self, network, states_XC: jax.Array) -> jax.Array:
        """The most likely action id of each final state [..., C]. The logits are computed for the
        action ids alone: the argmax the full vocabulary's logits would give among them, at a
        fraction of the cost (256 of PaliGemma's 257,152 rows for bins)."""
        first = self.first_action_id()
        embedding_VC = network.backbone.language_model.embed_tokens.embedding[first:]
        logits_XV = jnp.einsum("...c,vc->...v", states_XC, embedding_VC.astype(states_XC.dtype))
        return (jnp.argmax(logits_XV, axis=-1) + first).astype(jnp.int32)

    def _prefix_cache(self, network, prefix_BPC, prefix_valid_BP, total: int):
        """(the greedy first token [B], the KV caches of `total` slots holding the prefix)."""
        language = network.backbone.language_model
        batch, prefix = prefix_valid_BP.shape
        caches = language.empty_caches(batch, total, prefix_BPC.dtype)
        prefix_mask_BPX = (
            jnp.zeros((batch, prefix, total), bool)
            .at[:, :, :prefix]
            .set(prefix_lm_mask(prefix_valid_BP, jnp.zeros((batch, prefix), jnp.int32)))
        )
        hidden_BPC, caches = language(prefix_BPC, jnp.cumsum(prefix_valid_BP, axis=1), prefix_mask_BPX, caches, 0)
        return self.greedy_action_token(network, hidden_BPC[:, -1]), caches

    def decode(self, network, prefix_BPC, prefix_valid_BP, use_cache: bool = True) -> jax.Array:
        """Greedy action token ids [B, S]. With the cache the prefix runs once and each token
        attends the cached keys and values; without it every step reruns the whole sequence (the
        reference the cache must equal)."""
        language = network.backbone.language_model
        batch, prefix = prefix_valid_BP.shape
        num_tokens = self.num_action_tokens
        if not use_cache:
            tokens_BS = jnp.zeros((batch, num_tokens), jnp.int32)
            for step in range(num_tokens):
                states_BSC = self.token_states(network, prefix_BPC, prefix_valid_BP, tokens_BS[:, : step + 1])
                tokens_BS = tokens_BS.at[:, step].set(self.greedy_action_token(network, states_BSC[:, step]))
            return tokens_BS
        total = prefix + num_tokens - 1
        first_B, caches = self._prefix_cache(network, prefix_BPC, prefix_valid_BP, total)
        valid_BX = jnp.zeros((batch, total), bool).at[:, :prefix].set(prefix_valid_BP)
        tokens_BS = jnp.zeros((batch, num_tokens), jnp.int32).at[:, 0].set(first_B)
        count_B = prefix_valid_BP.sum(axis=1)

        def step(index, carry):
            tokens_BS, valid_BX, caches = carry
            slot = prefix + index - 1  # where token index - 1 (the input) sits in the cache
            valid_BX = valid_BX.at[:, slot].set(True)
            seen_B1X = (valid_BX & (jnp.arange(total) <= slot))[:, None, :]
            inputs_B1C = language.embed(tokens_BS[:, index - 1][:, None]).astype(prefix_BPC.dtype)
            hidden_B1C, caches = language(inputs_B1C, (count_B + index)[:, None], seen_B1X, caches, slot)
            token_B = self.greedy_action_token(network, hidden_B1C[:, 0])
            return tokens_BS.at[:, index].set(token_B), valid_BX, caches

        tokens_BS, _, _ = jax.lax.fori_loop(1, num_tokens, step, (tokens_BS, valid_BX, caches))
        return tokens_BS

    def jacobi_decode(self, network, prefix_BPC, prefix_valid_BP, use_cache: bool = True):
        """(the greedy action token ids [B, S], backbone forward passes int32 []) by Jacobi
        iterations from a guess of the first action id everywhere. With the cache, the prefix runs
        once (one pass, which also fixes token 0) and each iteration runs the S - 1 input tokens on
        it; without it each iteration reruns the whole sequence."""
        language = network.backbone.language_model
        batch, prefix = prefix_valid_BP.shape
        num_tokens = self.num_action_tokens
        guess_BS = jnp.full((batch, num_tokens), self.first_action_id(), jnp.int32)
        if use_cache:
            total = prefix + num_tokens - 1
            first_B, caches = self._prefix_cache(network, prefix_BPC, prefix_valid_BP, total)
            guess_BS = guess_BS.at[:, 0].set(first_B)
            count_B = prefix_valid_BP.sum(axis=1)
            positions_BS = count_B[:, None] + 1 + jnp.arange(num_tokens - 1)[None]
            causal_SS = jnp.tril(jnp.ones((num_tokens - 1, num_tokens - 1), bool))
            mask_BSX = jnp.concatenate(
                [
                    jnp.broadcast_to(prefix_valid_BP[:, None, :], (batch, num_tokens - 1, prefix)),
                    jnp.broadcast_to(causal_SS, (batch, num_tokens - 1, num_tokens - 1)),
                ],
                axis=2,
            )

            def predict(guess_BS):
                inputs_BSC = language.embed(guess_BS[:, :-1]).astype(prefix_BPC.dtype)
                hidden_BSC, _ = language(inputs_BSC, positions_BS, mask_BSX, caches, prefix)
                rest_BS = self.greedy_action_token(network, hidden_BSC)
                return jnp.concatenate([first_B[:, None], rest_BS], axis=1)

            passes, max_iterations = 1, num_tokens - 1
        else:

            def predict(guess_BS):
                states_BSC = self.token_states(network, prefix_BPC, prefix_valid_BP, guess_BS)
                return self.greedy_action_token(network, states_BSC)

            passes, max_iterations = 0, num_tokens

        def body(state):
            guess_BS, _, iterations = state
            new_BS = predict(guess_BS)
            return new_BS, jnp.all(new_BS == guess_BS), iterations + 1

        def unfinished(state):
            _, converged, iterations = state
            return ~converged & (iterations < max_iterations)

        tokens_BS, _, iterations = jax.lax.while_loop(unfinished, body, (guess_BS, jnp.asarray(False), 0))
        return tokens_BS, passes + iterations

    def init_outputs(self, network, observation, task):
        prefix_BPC, valid_BP = self.token_prefix(network, observation, task)
        return self.token_logits(network, prefix_BPC, valid_BP, jnp.zeros((prefix_BPC.shape[0], 2), jnp.int32))

    def loss(self, network, observation, task, actions_BHA, valid_BHA, rng, train):
        del rng, train  # teacher forcing is deterministic; no dropout
        targets_BS, mask_BS = self.targets(actions_BHA, valid_BHA)
        prefix_BPC, prefix_valid_BP = self.token_prefix(network, observation, task)
        logits_BSV = self.token_logits(network, prefix_BPC, prefix_valid_BP, targets_BS)
        return token_cross_entropy(logits_BSV, targets_BS, mask_BS)

    def sample(self, network, observation, task, rng, use_cache: bool = True, decoding: str = "greedy"):
        del rng  # greedy decoding
        if decoding not in DECODINGS:
            raise InputError(f"decoding='{decoding}'; expected one of {', '.join(DECODINGS)}")
        prefix_BPC, prefix_valid_BP = self.token_prefix(network, observation, task)
        if decoding == "jacobi":
            tokens_BS, _ = self.jacobi_decode(network, prefix_BPC, prefix_valid_BP, use_cache)
        else:
            tokens_BS = self.decode(network, prefix_BPC, prefix_valid_BP, use_cache)
        return self.chunks_from_tokens(tokens_BS)


class BinActions(TokenActions):
    """RT-2 / OpenVLA: every action dimension of every step is one of `n_bins` uniform bins over
    [-1, 1], the last `n_bins` vocabulary ids."""

    def check(self):
        if self.action["n_bins"] > self.vocab_size:
            n_bins = self.action["n_bins"]
            return f"model.vla.action.n_bins={n_bins} exceeds the backbone's vocabulary of {self.vocab_size}"
        return None

    @property
    def bins(self) -> ActionBins:
        return ActionBins(self.vocab_size, self.action["n_bins"])

    @property
    def num_action_tokens(self):
        return self.horizon * self.action_dim

    def first_action_id(self):
        return self.vocab_size - self.action["n_bins"]

    def targets(self, actions_BHA, valid_BHA):
        batch = actions_BHA.shape[0]
        return self.bins.encode(actions_BHA, xp=jnp).reshape(batch, -1), valid_BHA.reshape(batch, -1)

    def chunks_from_tokens(self, tokens_BS):
        batch = tokens_BS.shape[0]
        chunks_BHA = self.bins.decode(tokens_BS, xp=jnp).reshape(batch, self.horizon, self.action_dim)
        return chunks_BHA, jnp.ones(batch, bool)


class FASTActions(TokenActions):
    """pi0-FAST: a chunk is its BPE tokens then the end id, at most `max_action_tokens`. A sequence
    that does not spell a chunk decodes to zeros (the normalized mean action) and is counted in
    `fast_invalid_fraction`."""

    @property
    def num_action_tokens(self):
        return self.action["max_action_tokens"]

    def first_action_id(self):
        return fast_id_range(self.action["fast_tokenizer"], self.vocab_size)[0]

    def targets(self, actions_BHA, valid_BHA):
        batch = actions_BHA.shape[0]
        shapes = (
            jax.ShapeDtypeStruct((batch, self.num_action_tokens), jnp.int32),
            jax.ShapeDtypeStruct((batch, self.num_action_tokens), jnp.bool_),
        )
        encode = functools.partial(
            fast_token_ids, self.action["fast_tokenizer"], self.vocab_size, self.num_action_tokens
        )
        ids_BS, mask_BS = jax.pure_callback(encode, shapes, actions_BHA.astype(jnp.float32), vmap_method="sequential")
        # A chunk with a padded step or dimension (episode end, a dataset with fewer dimensions)
        # is a whole sequence: it is learned only where all of it is real.
        return ids_BS, mask_BS & valid_BHA.all(axis=(1, 2))[:, None]

    def chunks_from_tokens(self, tokens_BS):
        batch = tokens_BS.shape[0]
        shapes = (
            jax.ShapeDtypeStruct((batch, self.horizon, self.action_dim), jnp.float32),
            jax.ShapeDtypeStruct((batch,), jnp.bool_),
        )
        decode = functools.partial(fast_chunks, self.action["fast_tokenizer"], self.vocab_size)
        return jax.pure_callback(decode, shapes, tokens_BS, vmap_method="sequential")

    def sample_metrics(self, valid_B):
        return {"action_fast_invalid_fraction": 1.0 - valid_B.mean()}
