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

Axis letters: B batch, T timesteps, N tokens of one group, M tokens of one timestep, L sequence,
C width, H heads, D head width, Q/K query/key positions.
"""

from collections.abc import Mapping

import flax.linen as nn
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


def block_attention_mask(task_sizes, obs_sizes, readout_sizes, num_timesteps: int) -> np.ndarray:
    """The (query, key) attention rules of the layout above: bool[L, L], True where query sees key.

    Built from per-token (role, timestep, group) labels with broadcast comparisons, so the cost
    is a few array ops over L x L rather than a Python loop over token pairs.
    """
    task_sizes = _check_sizes("task_sizes", task_sizes)
    obs_sizes = _check_sizes("obs_sizes", obs_sizes)
    readout_sizes = _check_sizes("readout_sizes", readout_sizes)
    (num_timesteps,) = _check_sizes("num_timesteps", [num_timesteps])

    # One timestep's tokens; each obs/readout group gets its own id within the timestep.
    step_sizes = obs_sizes + readout_sizes
    step_role_M = np.repeat([_OBS] * len(obs_sizes) + [_READOUT] * len(readout_sizes), step_sizes)
    step_group_M = np.repeat(np.arange(len(step_sizes)), step_sizes)
    num_task, num_step = sum(task_sizes), sum(step_sizes)

    role_L = np.concatenate([np.full(num_task, _TASK), np.tile(step_role_M, num_timesteps)])
    timestep_L = np.concatenate([np.full(num_task, -1), np.repeat(np.arange(num_timesteps), num_step)])
    group_L = np.concatenate([np.repeat(np.arange(len(task_sizes)), task_sizes), np.tile(step_group_M, num_timesteps)])

    q_role, k_role = role_L[:, None], role_L[None, :]
    q_time, k_time = timestep_L[:, None], timestep_L[None, :]
    everyone_sees_task = k_role == _TASK
    causal_obs = (k_role == _OBS) & (q_role != _TASK) & (k_time <= q_time)
    own_readouts = (
        (k_role == _READOUT) & (q_role == _READOUT) & (group_L[:, None] == group_L[None, :]) & (k_time == q_time)
    )
    return everyone_sees_task | causal_obs | own_readouts


class _Attention(nn.Module):
    num_heads: int
    attention_dropout_rate: float

    @nn.compact
    def __call__(self, x_BLC: jax.Array, mask_B1QK: jax.Array, train: bool) -> jax.Array:
        batch_size, length, width = x_BLC.shape
        head_shape = (self.num_heads, width // self.num_heads)
        q_BLHD, k_BLHD, v_BLHD = (
            nn.DenseGeneral(head_shape, kernel_init=_KERNEL_INIT, name=name)(x_BLC)
            for name in ("query", "key", "value")
        )
        if train and self.attention_dropout_rate > 0.0:
            # dot_product_attention has no dropout on probabilities, so keys are dropped before
            # the softmax instead (DropKey, Li et al. 2023). The diagonal stays so no row is empty.
            keep_BHQK = jax.random.bernoulli(
                self.make_rng("dropout"),
                1.0 - self.attention_dropout_rate,
                (batch_size, self.num_heads, length, length),
            )
            mask_B1QK = (mask_B1QK & keep_BHQK) | jnp.eye(length, dtype=bool)
        out_BLHD = jax.nn.dot_product_attention(q_BLHD, k_BLHD, v_BLHD, mask=mask_B1QK)
        return nn.DenseGeneral(width, axis=(-2, -1), kernel_init=_KERNEL_INIT, name="out")(out_BLHD)


class _Block(nn.Module):
    """Pre-LayerNorm block: x + Attention(LN(x)), then x + MLP(LN(x))."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float
    attention_dropout_rate: float

    @nn.compact
    def __call__(self, x_BLC: jax.Array, mask_B1QK: jax.Array, train: bool) -> jax.Array:
        y_BLC = nn.LayerNorm(name="attention_norm")(x_BLC)
        y_BLC = _Attention(self.num_heads, self.attention_dropout_rate, name="attention")(y_BLC, mask_B1QK, train)
        x_BLC = x_BLC + nn.Dropout(self.dropout_rate)(y_BLC, deterministic=not train)

        y_BLC = nn.LayerNorm(name="mlp_norm")(x_BLC)
        y_BLF = nn.gelu(nn.Dense(self.mlp_dim, kernel_init=_KERNEL_INIT, name="mlp_hidden")(y_BLC))
        y_BLF = nn.Dropout(self.dropout_rate)(y_BLF, deterministic=not train)
        y_BLC = nn.Dense(x_BLC.shape[-1], kernel_init=_KERNEL_INIT, name="mlp_out")(y_BLF)
        return x_BLC + nn.Dropout(self.dropout_rate)(y_BLC, deterministic=not train)


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

    @nn.compact
    def __call__(
        self,
        task_groups: dict[str, TokenGroup],
        obs_groups: dict[str, TokenGroup],
        readout_groups: dict[str, int],
        *,
        train: bool,
    ) -> tuple[dict[str, TokenGroup], dict[str, TokenGroup], dict[str, TokenGroup]]:
        if self.token_dim % self.num_heads:
            raise InputError(f"token_dim={self.token_dim}: expected a multiple of num_heads={self.num_heads}")
        batch_size, num_timesteps = _check_groups(task_groups, obs_groups, readout_groups, self.num_timesteps_max)
        width = self.token_dim
        # Tokens from float32 sources (frozen encoders, proprio) join in the parameters' dtype, so
        # a bf16 compute_dtype makes the whole transformer run in bf16 (see octo_like/model/precision.py).
        dtype = parameter_dtype(self)
        task_groups = {name: TokenGroup(g.tokens.astype(dtype), g.mask) for name, g in task_groups.items()}
        obs_groups = {name: TokenGroup(g.tokens.astype(dtype), g.mask) for name, g in obs_groups.items()}

        def embedding(name, shape):
            return self.param(name, _EMBEDDING_INIT, shape)

        task_BNC, task_mask_BN = [], []
        for name, group in task_groups.items():
            pos_NC = embedding(f"task_{name}_pos_embedding", (group.tokens.shape[1], width))
            task_BNC.append(nn.Dense(width, name=f"task_{name}_projection")(group.tokens) + pos_NC)
            task_mask_BN.append(group.mask.astype(bool))

        step_BTNC, step_mask_BTN = [], []
        for name, group in obs_groups.items():
            pos_TNC = embedding(f"obs_{name}_pos_embedding", (self.num_timesteps_max, group.tokens.shape[2], width))
            tokens_BTNC = nn.Dense(width, name=f"obs_{name}_projection")(group.tokens)
            step_BTNC.append(tokens_BTNC + pos_TNC[:num_timesteps])
            step_mask_BTN.append(group.mask.astype(bool))
        # A readout exists where its timestep does: where any observation token exists.
        timestep_mask_BT = jnp.any(jnp.concatenate(step_mask_BTN, axis=2), axis=2)
        for name, size in readout_groups.items():
            readout_NC = embedding(f"readout_{name}_embedding", (size, width))
            pos_TNC = embedding(f"readout_{name}_pos_embedding", (self.num_timesteps_max, size, width))
            shape = (batch_size, num_timesteps, size)
            step_BTNC.append(jnp.broadcast_to(readout_NC + pos_TNC[:num_timesteps], (*shape, width)))
            step_mask_BTN.append(jnp.broadcast_to(timestep_mask_BT[:, :, None], shape))

        step_BTMC = jnp.concatenate(step_BTNC, axis=2)
        step_mask_BTM = jnp.concatenate(step_mask_BTN, axis=2)
        x_BLC = jnp.concatenate([*task_BNC, step_BTMC.reshape(batch_size, -1, width)], axis=1)
        valid_BL = jnp.concatenate([*task_mask_BN, step_mask_BTM.reshape(batch_size, -1)], axis=1)

        task_sizes = [g.tokens.shape[1] for g in task_groups.values()]
        obs_sizes = [g.tokens.shape[2] for g in obs_groups.values()]
        readout_sizes = list(readout_groups.values())
        block_QK = block_attention_mask(task_sizes, obs_sizes, readout_sizes, num_timesteps)
        # Every token keeps itself as a key: a padded query would otherwise see no key at all
        # (an empty softmax). A padded token is still invisible to every other token.
        length = x_BLC.shape[1]
        mask_B1QK = ((jnp.asarray(block_QK) & valid_BL[:, None, :]) | jnp.eye(length, dtype=bool))[:, None]

        # `train` is Python control flow inside the block: static (argument 3 of self, x, mask, train).
        block = nn.remat(_Block, static_argnums=(3,)) if self.remat else _Block
        x_BLC = constrain_batch(nn.Dropout(self.dropout_rate)(x_BLC, deterministic=not train))
        for i in range(self.num_layers):
            x_BLC = block(
                self.num_heads, self.mlp_dim, self.dropout_rate, self.attention_dropout_rate, name=f"block_{i}"
            )(x_BLC, mask_B1QK, train)
            x_BLC = constrain_batch(x_BLC)  # activations stay split by example between blocks (see utils/sharding.py)
        x_BLC = nn.LayerNorm(name="final_norm")(x_BLC)

        num_task = sum(task_sizes)
        task_out_BNC = jnp.split(x_BLC[:, :num_task], np.cumsum(task_sizes)[:-1], axis=1)
        step_out_BTMC = x_BLC[:, num_task:].reshape(batch_size, num_timesteps, -1, width)
        step_out_BTNC = jnp.split(step_out_BTMC, np.cumsum(obs_sizes + readout_sizes)[:-1], axis=2)
        step_out = [TokenGroup(t, m) for t, m in zip(step_out_BTNC, step_mask_BTN)]
        return (
            {name: TokenGroup(t, m) for name, t, m in zip(task_groups, task_out_BNC, task_mask_BN)},
            dict(zip(obs_groups, step_out[: len(obs_groups)])),
            dict(zip(readout_groups, step_out[len(obs_groups) :])),
        )
