"""Block-wise masked transformer over task, observation and readout token groups (Octo-style).

Sequence layout (axis L), groups in the order their dicts give them:

    [task groups] [obs groups, readout groups]_{t=0} ... [obs groups, readout groups]_{t=T-1}

Who attends to whom (query -> key):

    task                -> task
    obs at t            -> task, obs at <= t
    readout group g, t  -> task, obs at <= t, readout group g at t

Nothing else attends to readouts, so a readout reads the sequence without changing what any other
token computes; heads read their own readout group. Keys whose group mask is False (a missing
camera, a padded timestep, sentence padding) are removed on top of these rules.

`history` picks how observations read across time:
- "causal" (Octo): as above, observation tokens at t attend to observation tokens at <= t; the
  temporal position embedding is the token's slot in the window.
- "readout": observation tokens at t attend to the task and their own timestep only, and readouts
  still read every observation at <= t; the temporal position embedding is indexed by the
  observation's timestep modulo the window size (`timestep_BT`), which a readout compares with its
  own. A frame's tokens then depend on the task and that frame alone, never on its slot or on the
  frames before it, so at inference each frame's keys and values are computed once and reused while
  the window slides (`encode_task`, `step`).

Inference with a cache (`encode_task` once per episode, then `step` per control step) runs as
queries only the tokens that changed: the new frames' observation tokens and the last timestep's
readouts, attending to the cached keys and values of the task (and, with history="readout", of the
earlier frames). The attention rules are the same (query, key) labels as the whole sequence's, so a
step's readouts equal the full forward's.

Axis letters: B batch, T timesteps, N tokens of one group, M tokens of one timestep, L sequence,
C width, H heads, D head width, Q/K query/key positions.
"""

from collections.abc import Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from octo_like.model.precision import parameter_dtype
from octo_like.model.tokens import TokenGroup
from octo_like.utils.errors import InputError
from octo_like.utils.sharding import constrain_batch

DEFAULT_TRANSFORMER_SIZE = "tiny"  # a config's model.transformer without a `size`
TRANSFORMER_SIZES = {
    "tiny": dict(num_layers=4, token_dim=128, num_heads=4, mlp_dim=512),
    "small": dict(num_layers=12, token_dim=384, num_heads=6, mlp_dim=1536),
    "base": dict(num_layers=12, token_dim=768, num_heads=12, mlp_dim=3072),
}


def transformer_settings(transformer: Mapping) -> dict:
    """A config's model.transformer with its size preset written out: the preset's num_layers,
    token_dim, num_heads and mlp_dim where the section does not set them (a config may name only
    the size, or spell the dimensions out so that a flag changes one), `size` kept as its name."""
    size = transformer.get("size", DEFAULT_TRANSFORMER_SIZE)
    if size not in TRANSFORMER_SIZES:
        raise InputError(f"model.transformer.size='{size}'; expected one of {', '.join(TRANSFORMER_SIZES)}")
    return {**TRANSFORMER_SIZES[size], **transformer}


def match_layer_layout(pretrained_flat: dict, fresh_flat: dict) -> dict:
    """`pretrained_flat` with its transformer layers in `fresh_flat`'s layout: per-layer blocks
    (`block_<i>/...`) stacked into the scanned block (`scanned_blocks/...`, layer axis first) or
    split out of it, so that finetuning moves between `scan_layers` settings. Both are parameter
    dicts flattened with "/"; entries that need no change are kept as they are."""
    converted = dict(pretrained_flat)
    for path, fresh in fresh_flat.items():
        if path in pretrained_flat:
            continue
        parts = path.split("/")
        if "scanned_blocks" in parts:
            at = parts.index("scanned_blocks")
            layer_paths = ["/".join([*parts[:at], f"block_{i}", *parts[at + 1 :]]) for i in range(np.shape(fresh)[0])]
            if all(layer_path in pretrained_flat for layer_path in layer_paths):
                converted[path] = np.stack([pretrained_flat[layer_path] for layer_path in layer_paths])
                for layer_path in layer_paths:
                    converted.pop(layer_path)
            continue
        for at, part in enumerate(parts):
            layer = part.removeprefix("block_")
            stacked_path = "/".join([*parts[:at], "scanned_blocks", *parts[at + 1 :]])
            if part.startswith("block_") and layer.isdigit() and stacked_path in pretrained_flat:
                if int(layer) < np.shape(pretrained_flat[stacked_path])[0]:
                    converted[path] = np.asarray(pretrained_flat[stacked_path])[int(layer)]
                    converted.pop(stacked_path, None)  # the other layers read pretrained_flat
                break
    return converted


HISTORIES = ("causal", "readout")
_TASK, _OBS, _READOUT = 0, 1, 2
_KERNEL_INIT = nn.initializers.xavier_uniform()
_EMBEDDING_INIT = nn.initializers.normal(stddev=0.02)


def _is_count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0


def _check_sizes(what: str, sizes) -> list[int]:
    sizes = list(sizes)
    for size in sizes:
        if not _is_count(size):
            raise InputError(f"{what}: got {sizes}, expected non-negative integer token counts")
    return [int(size) for size in sizes]


def _check_history(history: str) -> None:
    if history not in HISTORIES:
        raise InputError(f"model.transformer.history='{history}'; expected one of {', '.join(HISTORIES)}")


# Token labels: (role, timestep slot, group id) per position, as three int arrays [L]. Task tokens
# have slot -1; within a timestep, observation groups are numbered first, then readout groups.
Labels = tuple[np.ndarray, np.ndarray, np.ndarray]


def _labels(segments: list[tuple[int, int, int, int]]) -> Labels:
    """Labels of a sequence given as (role, slot, group, token count) segments in order."""
    counts = [count for *_, count in segments]
    return tuple(np.repeat(np.array([seg[i] for seg in segments], np.int64), counts) for i in range(3))


def _task_segments(task_sizes) -> list:
    return [(_TASK, -1, group, size) for group, size in enumerate(task_sizes)]


def _step_segments(obs_sizes, readout_sizes, slot: int, with_obs: bool = True, with_readouts: bool = True) -> list:
    obs = [(_OBS, slot, group, size) for group, size in enumerate(obs_sizes)] if with_obs else []
    first_readout = len(obs_sizes)
    readouts = [(_READOUT, slot, first_readout + g, size) for g, size in enumerate(readout_sizes)]
    return obs + (readouts if with_readouts else [])


def attention_rules(query: Labels, key: Labels, history: str = "causal") -> np.ndarray:
    """bool[Q, K], True where the query may see the key, from the labels of both sides."""
    _check_history(history)
    q_role, q_time, q_group = (x[:, None] for x in query)
    k_role, k_time, k_group = (x[None, :] for x in key)
    everyone_sees_task = k_role == _TASK
    obs_key_time = k_time == q_time if history == "readout" else k_time <= q_time
    obs_key_time = np.where(q_role == _READOUT, k_time <= q_time, obs_key_time)
    sees_obs = (k_role == _OBS) & (q_role != _TASK) & obs_key_time
    own_readouts = (k_role == _READOUT) & (q_role == _READOUT) & (q_group == k_group) & (k_time == q_time)
    return everyone_sees_task | sees_obs | own_readouts


def block_attention_mask(
    task_sizes, obs_sizes, readout_sizes, num_timesteps: int, history: str = "causal"
) -> np.ndarray:
    """The (query, key) attention rules of the layout above: bool[L, L], True where query sees key.

    Built from per-token (role, timestep, group) labels with broadcast comparisons, so the cost
    is a few array ops over L x L rather than a Python loop over token pairs.
    """
    task_sizes = _check_sizes("task_sizes", task_sizes)
    obs_sizes = _check_sizes("obs_sizes", obs_sizes)
    readout_sizes = _check_sizes("readout_sizes", readout_sizes)
    (num_timesteps,) = _check_sizes("num_timesteps", [num_timesteps])
    segments = _task_segments(task_sizes)
    for slot in range(num_timesteps):
        segments += _step_segments(obs_sizes, readout_sizes, slot)
    labels = _labels(segments)
    return attention_rules(labels, labels, history)


class _Attention(nn.Module):
    num_heads: int
    attention_dropout_rate: float

    @nn.compact
    def __call__(self, x_BLC: jax.Array, mask_B1QK: jax.Array, train: bool, context_kv=None, query_index=None):
        """Attention of the L tokens (or of those at `query_index` alone, a tuple of positions: Q
        queries) over `context_kv` (cached keys and values [B, K', H, D] of earlier tokens, or
        None) followed by all L; returns the queries' output and the L tokens' own (k, v)."""
        batch_size, length, width = x_BLC.shape
        head_shape = (self.num_heads, width // self.num_heads)
        query_positions = np.arange(length) if query_index is None else np.asarray(query_index, np.int64)
        q_BQHD = nn.DenseGeneral(head_shape, kernel_init=_KERNEL_INIT, name="query")(
            x_BLC if query_index is None else x_BLC[:, query_positions]
        )
        k_BLHD, v_BLHD = (
            nn.DenseGeneral(head_shape, kernel_init=_KERNEL_INIT, name=name)(x_BLC) for name in ("key", "value")
        )
        own_kv = (k_BLHD, v_BLHD)
        if context_kv is not None:
            k_BLHD = jnp.concatenate([context_kv[0].astype(k_BLHD.dtype), k_BLHD], axis=1)
            v_BLHD = jnp.concatenate([context_kv[1].astype(v_BLHD.dtype), v_BLHD], axis=1)
        num_keys = k_BLHD.shape[1]
        if train and self.attention_dropout_rate > 0.0:
            # dot_product_attention has no dropout on probabilities, so keys are dropped before
            # the softmax instead (DropKey, Li et al. 2023). Each query keeps itself so no row is empty.
            keep_BHQK = jax.random.bernoulli(
                self.make_rng("dropout"),
                1.0 - self.attention_dropout_rate,
                (batch_size, self.num_heads, len(query_positions), num_keys),
            )
            own_QK = np.zeros((len(query_positions), num_keys), bool)
            own_QK[np.arange(len(query_positions)), num_keys - length + query_positions] = True
            mask_B1QK = (mask_B1QK & keep_BHQK) | own_QK
        out_BQHD = jax.nn.dot_product_attention(q_BQHD, k_BLHD, v_BLHD, mask=mask_B1QK)
        return nn.DenseGeneral(width, axis=(-2, -1), kernel_init=_KERNEL_INIT, name="out")(out_BQHD), own_kv


class _Block(nn.Module):
    """Pre-LayerNorm block: x + Attention(LN(x)), then x + MLP(LN(x)). Returns (x, own (k, v));
    with `query_index` (a tuple of positions) x only at those positions, every token's (k, v)."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float
    attention_dropout_rate: float

    @nn.compact
    def __call__(self, x_BLC: jax.Array, mask_B1QK: jax.Array, train: bool, context_kv=None, query_index=None):
        y_BLC = nn.LayerNorm(name="attention_norm")(x_BLC)
        attention = _Attention(self.num_heads, self.attention_dropout_rate, name="attention")
        y_BLC, own_kv = attention(y_BLC, mask_B1QK, train, context_kv, query_index)
        if query_index is not None:
            x_BLC = x_BLC[:, np.asarray(query_index, np.int64)]
        x_BLC = x_BLC + nn.Dropout(self.dropout_rate)(y_BLC, deterministic=not train)

        y_BLC = nn.LayerNorm(name="mlp_norm")(x_BLC)
        y_BLF = nn.gelu(nn.Dense(self.mlp_dim, kernel_init=_KERNEL_INIT, name="mlp_hidden")(y_BLC))
        y_BLF = nn.Dropout(self.dropout_rate)(y_BLF, deterministic=not train)
        y_BLC = nn.Dense(x_BLC.shape[-1], kernel_init=_KERNEL_INIT, name="mlp_out")(y_BLF)
        x_BLC = x_BLC + nn.Dropout(self.dropout_rate)(y_BLC, deterministic=not train)
        return constrain_batch(x_BLC), own_kv  # activations stay split by example (see utils/sharding.py)


def _check_groups(task_groups, obs_groups, readout_groups, num_timesteps_max) -> tuple[int, int]:
    """Validates group shapes; returns (batch size, number of timesteps)."""
    if not obs_groups:
        raise InputError("obs_groups: got none, expected at least one observation token group")
    batch_sizes, timesteps = set(), set()
    for kind, groups, ndim in (("task", task_groups, 3), ("obs", obs_groups, 4)):
        for name, group in groups.items():
            tokens_shape, mask_shape = tuple(group.tokens.shape), tuple(group.mask.shape)
            if len(tokens_shape) != ndim or mask_shape != tokens_shape[:-1]:
                expected = "[B, N, C] with mask [B, N]" if ndim == 3 else "[B, T, N, C] with mask [B, T, N]"
                raise InputError(
                    f"{kind} group {name!r}: tokens {tokens_shape} with mask {mask_shape}, expected tokens {expected}"
                )
            batch_sizes.add(tokens_shape[0])
            if ndim == 4:
                timesteps.add(tokens_shape[1])
    if len(batch_sizes) != 1 or len(timesteps) != 1:
        shapes = {name: tuple(g.tokens.shape) for name, g in {**task_groups, **obs_groups}.items()}
        raise InputError(f"token groups {shapes}: expected one batch size B and one timestep count T")
    (num_timesteps,) = timesteps
    if num_timesteps > num_timesteps_max:
        raise InputError(f"obs groups have T={num_timesteps}, expected T <= num_timesteps_max={num_timesteps_max}")
    for name, size in readout_groups.items():
        if not _is_count(size) or size == 0:
            raise InputError(f"readout group {name!r}: got {size!r}, expected a positive token count")
    return batch_sizes.pop(), num_timesteps


def _attention_mask(query: Labels, key: Labels, valid_key_BK: jax.Array, history: str) -> jax.Array:
    """bool[B, 1, Q, K]: the rules, minus keys that do not exist. The keys end with the queries
    themselves, and every query keeps itself as a key: a padded query would otherwise see no key at
    all (an empty softmax). A padded token is still invisible to every other token."""
    rules_QK = jnp.asarray(attention_rules(query, key, history))
    num_queries, num_keys = rules_QK.shape
    own_QK = jnp.eye(num_queries, num_keys, num_keys - num_queries, dtype=bool)
    return ((rules_QK & valid_key_BK[:, None, :]) | own_QK)[:, None]


@flax.struct.dataclass
class TaskContext:
    """The task tokens' keys and values per layer ([layers, B, N, H, D]) and which exist ([B, N])."""

    k_LBNHD: jax.Array
    v_LBNHD: jax.Array
    valid_BN: jax.Array


@flax.struct.dataclass
class FrameContext:
    """Observation tokens' keys and values per layer for some frames ([layers, B, T, N, H, D]; N
    the tokens of one frame, groups in order) and which exist ([B, T, N])."""

    k_LBTNHD: jax.Array
    v_LBTNHD: jax.Array
    valid_BTN: jax.Array

    @staticmethod
    def concatenate(frames: "list[FrameContext]") -> "FrameContext":
        """The frames side by side on the time axis, in the given order."""
        return FrameContext(
            jnp.concatenate([f.k_LBTNHD for f in frames], axis=2),
            jnp.concatenate([f.v_LBTNHD for f in frames], axis=2),
            jnp.concatenate([f.valid_BTN for f in frames], axis=1),
        )

    def split(self) -> "list[FrameContext]":
        """One FrameContext per timestep (T = 1 each)."""
        return [
            FrameContext(self.k_LBTNHD[:, :, t : t + 1], self.v_LBTNHD[:, :, t : t + 1], self.valid_BTN[:, t : t + 1])
            for t in range(self.valid_BTN.shape[1])
        ]


class BlockTransformer(nn.Module):
    """Projects token groups to `token_dim`, runs the block-masked transformer, splits them back.

    Returns (task_out, obs_out, readout_out): dicts of TokenGroup shaped like the inputs but
    `token_dim` wide; readout masks are the timestep mask ("any obs token at t exists").
    """

    num_layers: int
    token_dim: int
    num_heads: int
    mlp_dim: int
    num_timesteps_max: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    remat: bool = False
    history: str = "causal"
    scan_layers: bool = False

    def setup(self):
        _check_history(self.history)
        if self.token_dim % self.num_heads:
            raise InputError(f"token_dim={self.token_dim}: expected a multiple of num_heads={self.num_heads}")
        # `train` and `query_index` are Python values inside the block: static (arguments 3 and 5
        # of self, x, mask, train, context_kv, query_index).
        block = nn.remat(_Block, static_argnums=(3, 5)) if self.remat else _Block
        sizes = (self.num_heads, self.mlp_dim, self.dropout_rate, self.attention_dropout_rate)
        if self.scan_layers:
            # All blocks but the last as one block under lax.scan, parameters stacked on a leading
            # layer axis: tracing, compiling and loading a compiled step cost one block, not
            # num_layers. The last block stays apart: it may run the readouts alone as queries.
            # (Under nn.scan the block is called without query_index: `train` alone is static.)
            scanned_block = nn.remat(_Block, static_argnums=(3,)) if self.remat else _Block
            scanned = nn.scan(
                scanned_block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, 0),  # mask, train (a Python bool), each layer's context
                length=self.num_layers - 1,
            )
            self.scanned_blocks = scanned(*sizes, name="scanned_blocks") if self.num_layers > 1 else None
            self.blocks = [block(*sizes, name=f"block_{self.num_layers - 1}")]
        else:
            self.scanned_blocks = None
            self.blocks = [block(*sizes, name=f"block_{i}") for i in range(self.num_layers)]
        self.final_norm = nn.LayerNorm(name="final_norm")
        self.input_dropout = nn.Dropout(self.dropout_rate)

    @nn.compact
    def _embed(self, task_groups, obs_groups, readout_groups, *, first_slot: int, timestep_BT, last_readouts: bool):
        """Projected, position-embedded tokens: task [B, N, C] (with mask), observations
        [B, T, M, C] at slots first_slot.. (mask [B, T, M]) and readouts [B, T', R, C] (mask), T'
        = 1 with `last_readouts` (only the last slot's), else T. Creates every embedding parameter."""
        width = self.token_dim
        # Tokens from float32 sources (frozen encoders, proprio) join in the parameters' dtype, so
        # a bf16 compute_dtype makes the whole transformer run in bf16 (see octo_like/model/precision.py).
        dtype = parameter_dtype(self)

        def embedding(name, shape):
            return self.param(name, _EMBEDDING_INIT, shape)

        task_BNC, task_mask_BN = [], []
        for name, group in task_groups.items():
            pos_NC = embedding(f"task_{name}_pos_embedding", (group.tokens.shape[1], width))
            task_BNC.append(nn.Dense(width, name=f"task_{name}_projection")(group.tokens.astype(dtype)) + pos_NC)
            task_mask_BN.append(group.mask.astype(bool))

        task = (jnp.concatenate(task_BNC, axis=1), jnp.concatenate(task_mask_BN, axis=1)) if task_BNC else None
        if not obs_groups:
            return task, None, None
        num_timesteps = next(iter(obs_groups.values())).tokens.shape[1]
        if self.history == "readout":
            if timestep_BT is None:
                raise InputError("model.transformer.history='readout' needs observation['timestep'] (int32 [B, T])")
            # Position by timestep, not by slot: a frame keeps its embedding as the window slides.
            obs_position_BT = jnp.asarray(timestep_BT, jnp.int32) % self.num_timesteps_max
        else:
            obs_position_BT = jnp.arange(first_slot, first_slot + num_timesteps)[None]
        readout_position_BT = obs_position_BT[:, -1:] if last_readouts else obs_position_BT

        obs_BTNC, obs_mask_BTN = [], []
        for name, group in obs_groups.items():
            pos_TNC = embedding(f"obs_{name}_pos_embedding", (self.num_timesteps_max, group.tokens.shape[2], width))
            tokens_BTNC = nn.Dense(width, name=f"obs_{name}_projection")(group.tokens.astype(dtype))
            obs_BTNC.append(tokens_BTNC + pos_TNC[obs_position_BT])
            obs_mask_BTN.append(group.mask.astype(bool))
        # A readout exists where its timestep does: where any observation token exists.
        timestep_mask_BT = jnp.any(jnp.concatenate(obs_mask_BTN, axis=2), axis=2)
        if last_readouts:
            timestep_mask_BT = timestep_mask_BT[:, -1:]
        batch_size = timestep_mask_BT.shape[0]
        readout_BTNC, readout_mask_BTN = [], []
        for name, size in readout_groups.items():
            readout_NC = embedding(f"readout_{name}_embedding", (size, width))
            pos_TNC = embedding(f"readout_{name}_pos_embedding", (self.num_timesteps_max, size, width))
            shape = (batch_size, timestep_mask_BT.shape[1], size)
            readout_BTNC.append(jnp.broadcast_to(readout_NC + pos_TNC[readout_position_BT], (*shape, width)))
            readout_mask_BTN.append(jnp.broadcast_to(timestep_mask_BT[:, :, None], shape))
        obs = (jnp.concatenate(obs_BTNC, axis=2), jnp.concatenate(obs_mask_BTN, axis=2))
        readouts = (jnp.concatenate(readout_BTNC, axis=2), jnp.concatenate(readout_mask_BTN, axis=2))
        return task, obs, readouts

    def _run(self, x_BLC, mask_B1QK, train: bool, context_kv=None, output_index=None):
        """The blocks and the final norm; returns the output and each layer's own (k, v), stacked
        [layers, B, L, H, D]. `context_kv` holds each layer's cached keys and values [layers, ...].
        With `output_index` (a tuple of positions) the output is those tokens' alone: the last
        block computes only the keys and values of the others (what later tokens read of them)."""
        x_BLC = constrain_batch(self.input_dropout(x_BLC, deterministic=not train))
        own_k, own_v = [], []
        first_layer = 0
        if self.scanned_blocks is not None:
            first_layer = self.num_layers - 1
            scanned_context = None if context_kv is None else (context_kv[0][:first_layer], context_kv[1][:first_layer])
            x_BLC, (k_SBLHD, v_SBLHD) = self.scanned_blocks(x_BLC, mask_B1QK, train, scanned_context)
            own_k.append(k_SBLHD)
            own_v.append(v_SBLHD)
        for i, block in enumerate(self.blocks, start=first_layer):
            layer_context = None if context_kv is None else (context_kv[0][i], context_kv[1][i])
            query_index = output_index if i == self.num_layers - 1 else None
            layer_mask_B1QK = mask_B1QK if query_index is None else mask_B1QK[:, :, np.asarray(query_index, np.int64)]
            x_BLC, (k_BLHD, v_BLHD) = block(x_BLC, layer_mask_B1QK, train, layer_context, query_index)
            own_k.append(k_BLHD[None])
            own_v.append(v_BLHD[None])
        return self.final_norm(x_BLC), (jnp.concatenate(own_k), jnp.concatenate(own_v))

    def __call__(
        self,
        task_groups: dict[str, TokenGroup],
        obs_groups: dict[str, TokenGroup],
        readout_groups: dict[str, int],
        *,
        train: bool,
        timestep_BT: jax.Array | None = None,
        readouts_only: bool = False,
    ) -> tuple[dict[str, TokenGroup], dict[str, TokenGroup], dict[str, TokenGroup]]:
        """With `readouts_only`, task_out and obs_out are empty and the last block runs the
        readouts alone as queries (nothing reads the other tokens' last outputs: a policy's heads
        read readouts), which saves that block's work on every other token."""
        batch_size, num_timesteps = _check_groups(task_groups, obs_groups, readout_groups, self.num_timesteps_max)
        width = self.token_dim
        task, (obs_BTMC, obs_mask_BTM), (readout_BTRC, readout_mask_BTR) = self._embed(
            task_groups, obs_groups, readout_groups, first_slot=0, timestep_BT=timestep_BT, last_readouts=False
        )
        step_BTMC = jnp.concatenate([obs_BTMC, readout_BTRC], axis=2)
        step_mask_BTM = jnp.concatenate([obs_mask_BTM, readout_mask_BTR], axis=2)
        x_BLC = step_BTMC.reshape(batch_size, -1, width)
        valid_BL = step_mask_BTM.reshape(batch_size, -1)
        if task is not None:
            x_BLC, valid_BL = jnp.concatenate([task[0], x_BLC], axis=1), jnp.concatenate([task[1], valid_BL], axis=1)

        task_sizes = [g.tokens.shape[1] for g in task_groups.values()]
        obs_sizes = [g.tokens.shape[2] for g in obs_groups.values()]
        readout_sizes = list(readout_groups.values())
        segments = _task_segments(task_sizes)
        for slot in range(num_timesteps):
            segments += _step_segments(obs_sizes, readout_sizes, slot)
        labels = _labels(segments)
        mask_B1LL = _attention_mask(labels, labels, valid_BL, self.history)
        step_splits = np.cumsum(obs_sizes + readout_sizes)[:-1]
        step_mask_BTNs = jnp.split(step_mask_BTM, step_splits, axis=2)
        if readouts_only:
            readout_index = tuple(int(i) for i in np.flatnonzero(labels[0] == _READOUT))
            x_BRC, _ = self._run(x_BLC, mask_B1LL, train, output_index=readout_index)
            readout_out_BTRC = x_BRC.reshape(batch_size, num_timesteps, -1, width)
            readouts_BTNC = jnp.split(readout_out_BTRC, np.cumsum(readout_sizes)[:-1], axis=2)
            readout_masks = step_mask_BTNs[len(obs_groups) :]
            return {}, {}, {name: TokenGroup(t, m) for name, t, m in zip(readout_groups, readouts_BTNC, readout_masks)}
        x_BLC, _ = self._run(x_BLC, mask_B1LL, train)

        num_task = sum(task_sizes)
        task_out_BNC = jnp.split(x_BLC[:, :num_task], np.cumsum(task_sizes)[:-1], axis=1)
        step_out_BTMC = x_BLC[:, num_task:].reshape(batch_size, num_timesteps, -1, width)
        step_out_BTNC = jnp.split(step_out_BTMC, step_splits, axis=2)
        step_out = [TokenGroup(t, m) for t, m in zip(step_out_BTNC, step_mask_BTNs)]
        task_mask_BNs = [g.mask.astype(bool) for g in task_groups.values()]
        return (
            {name: TokenGroup(t, m) for name, t, m in zip(task_groups, task_out_BNC, task_mask_BNs)},
            dict(zip(obs_groups, step_out[: len(obs_groups)])),
            dict(zip(readout_groups, step_out[len(obs_groups) :])),
        )

    def encode_task(self, task_groups: dict[str, TokenGroup]) -> TaskContext | None:
        """The task tokens' keys and values at every layer (they attend to the task only, so they
        hold for the whole episode); None without task tokens."""
        if not task_groups:
            return None
        (x_BNC, valid_BN), _, _ = self._embed(task_groups, {}, {}, first_slot=0, timestep_BT=None, last_readouts=True)
        labels = _labels(_task_segments([g.tokens.shape[1] for g in task_groups.values()]))
        _, (k_LBNHD, v_LBNHD) = self._run(x_BNC, _attention_mask(labels, labels, valid_BN, self.history), False)
        return TaskContext(k_LBNHD, v_LBNHD, valid_BN)

    def step(
        self,
        task_context: TaskContext | None,
        frame_context: FrameContext | None,
        obs_groups: dict[str, TokenGroup],
        readout_groups: dict[str, int],
        *,
        timestep_BT: jax.Array | None = None,
    ) -> tuple[dict[str, TokenGroup], FrameContext]:
        """One control step from a cache: the readouts of the last timestep [B, 1, R, C] and the new
        frames' keys and values (to cache with history="readout").

        `obs_groups` are the frames not in `frame_context`, the window's last T slots; the frames
        of `frame_context` fill the slots before them (with history="causal" it must be None: a
        frame's keys depend on the frames before it, so every frame is a query). Inference only.
        """
        num_context = 0 if frame_context is None else frame_context.valid_BTN.shape[1]
        if num_context and self.history != "readout":
            raise InputError("a frame cache needs model.transformer.history='readout'")
        batch_size, num_new = _check_groups({}, obs_groups, readout_groups, self.num_timesteps_max - num_context)
        width = self.token_dim
        _, (obs_BTMC, obs_mask_BTM), (readout_B1RC, readout_mask_B1R) = self._embed(
            {}, obs_groups, readout_groups, first_slot=num_context, timestep_BT=timestep_BT, last_readouts=True
        )
        obs_sizes = [g.tokens.shape[2] for g in obs_groups.values()]
        readout_sizes = list(readout_groups.values())
        last_slot = num_context + num_new - 1
        query_segments = [
            seg for slot in range(num_context, last_slot + 1) for seg in _step_segments(obs_sizes, [], slot)
        ]
        query_segments += _step_segments(obs_sizes, readout_sizes, last_slot, with_obs=False)
        x_BQC = jnp.concatenate(
            [obs_BTMC.reshape(batch_size, -1, width), readout_B1RC.reshape(batch_size, -1, width)], axis=1
        )
        valid_BQ = jnp.concatenate([obs_mask_BTM.reshape(batch_size, -1), readout_mask_B1R.reshape(batch_size, -1)], 1)

        context_segments, context_k, context_v, context_valid = [], [], [], []
        if task_context is not None:
            context_segments += [(_TASK, -1, 0, task_context.valid_BN.shape[1])]
            context_k.append(task_context.k_LBNHD)
            context_v.append(task_context.v_LBNHD)
            context_valid.append(task_context.valid_BN)
        if num_context:
            context_segments += [seg for slot in range(num_context) for seg in _step_segments(obs_sizes, [], slot)]
            k_LBTNHD, v_LBTNHD = frame_context.k_LBTNHD, frame_context.v_LBTNHD
            context_k.append(k_LBTNHD.reshape(*k_LBTNHD.shape[:2], -1, *k_LBTNHD.shape[-2:]))
            context_v.append(v_LBTNHD.reshape(*v_LBTNHD.shape[:2], -1, *v_LBTNHD.shape[-2:]))
            context_valid.append(frame_context.valid_BTN.reshape(batch_size, -1))
        query_labels = _labels(query_segments)
        key_labels = _labels(context_segments + query_segments)
        valid_key_BK = jnp.concatenate([*context_valid, valid_BQ], axis=1)
        context_kv = (jnp.concatenate(context_k, axis=2), jnp.concatenate(context_v, axis=2)) if context_k else None
        num_obs = obs_BTMC.shape[1] * obs_BTMC.shape[2]
        readout_index = tuple(range(num_obs, x_BQC.shape[1]))  # the readouts come last
        x_BRC, (k_LBQHD, v_LBQHD) = self._run(
            x_BQC,
            _attention_mask(query_labels, key_labels, valid_key_BK, self.history),
            False,
            context_kv,
            output_index=readout_index,
        )
        frames_shape = (batch_size, num_new, obs_BTMC.shape[2])
        new_frames = FrameContext(
            k_LBQHD[:, :, :num_obs].reshape(self.num_layers, *frames_shape, *k_LBQHD.shape[-2:]),
            v_LBQHD[:, :, :num_obs].reshape(self.num_layers, *frames_shape, *v_LBQHD.shape[-2:]),
            obs_mask_BTM,
        )
        readout_B1RC = x_BRC.reshape(batch_size, 1, -1, width)
        readouts = jnp.split(readout_B1RC, np.cumsum(readout_sizes)[:-1], axis=2)
        masks = jnp.split(readout_mask_B1R, np.cumsum(readout_sizes)[:-1], axis=2)
        return {name: TokenGroup(t, m) for name, t, m in zip(readout_groups, readouts, masks)}, new_frames
