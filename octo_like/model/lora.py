"""LoRA on any Flax parameter tree: low-rank updates of chosen kernels, merged into the base for use.

    # params' nesting, {"a": [in, r], "b": [r, out]} per kernel
    lora = init_lora(params, GEMMA_LORA_TARGETS, rank=16, rng=rng)
    logits = module.apply({"params": merge_lora(params, lora, alpha=16)}, ...)   # differentiate w.r.t. `lora`
    release_params = merge_lora(params, lora, alpha=16)                          # one plain tree, no LoRA left

A kernel W [in, out] is used as W + (alpha / rank) * a @ b (Hu et al. 2021). `b` starts at zero,
so the merged model equals the base model at initialization; `a` starts Gaussian (1 / sqrt(in)).
Kernels of more than two axes (DenseGeneral) are adapted over their first axis against the rest.
The LoRA tree nests like `params` (each adapted kernel's leaf replaced by its {"a", "b"}), so that
it is a plain parameter tree for orbax and the sharding rules. The base stays frozen: only the
LoRA tree is trained. Merging inside the loss makes LoRA work for every module without touching
its code.
"""

import math
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict

from octo_like.utils.errors import InputError

# The attention and MLP projections of the Gemma decoder (backbone and action expert alike).
GEMMA_LORA_TARGETS = (
    r"(^|/)self_attn/(q_proj|k_proj|v_proj|o_proj)/kernel$",
    r"(^|/)mlp/(gate_proj|up_proj|down_proj)/kernel$",
)


def lora_targets(params: dict, patterns: Sequence[str]) -> list[str]:
    """The "/"-joined paths of the kernels that match any pattern (regex search); none is an error."""
    paths = ["/".join(path) for path, leaf in flatten_dict(params).items() if jnp.ndim(leaf) >= 2]
    matched = [path for path in paths if any(re.search(pattern, path) for pattern in patterns)]
    if not matched:
        raise InputError(
            f"LoRA patterns {list(patterns)} match no kernel; kernels look like '{paths[0] if paths else '(none)'}'"
        )
    return matched


def init_lora(params: dict, patterns: Sequence[str], rank: int, rng: jax.Array) -> dict:
    if rank < 1:
        raise InputError(f"LoRA rank {rank}; expected a positive integer")
    flat = {"/".join(path): leaf for path, leaf in flatten_dict(params).items()}
    lora = {}
    for index, path in enumerate(lora_targets(params, patterns)):
        kernel = flat[path]
        fan_in, fan_out = kernel.shape[0], math.prod(kernel.shape[1:])
        a = jax.random.normal(jax.random.fold_in(rng, index), (fan_in, rank), jnp.float32) / math.sqrt(fan_in)
        lora[tuple(path.split("/"))] = {"a": a.astype(kernel.dtype), "b": jnp.zeros((rank, fan_out), kernel.dtype)}
    return unflatten_dict(lora)


def lora_factors(lora: dict) -> dict[str, dict]:
    """{"/"-joined kernel path: {"a", "b"}} of a LoRA tree."""
    factors = {}
    for path, leaf in flatten_dict(lora).items():
        factors.setdefault("/".join(path[:-1]), {})[path[-1]] = leaf
    return factors


def merge_lora(params: dict, lora: dict, alpha: float) -> dict:
    """`params` with every adapted kernel replaced by W + (alpha / rank) * a @ b (same shape and dtype)."""
    flat = flatten_dict(params)
    merged = dict(flat)
    for path_string, factors in lora_factors(lora).items():
        path = tuple(path_string.split("/"))
        if path not in flat or set(factors) != {"a", "b"}:
            raise InputError(f"LoRA parameters for '{path_string}', which the model does not have")
        kernel = flat[path]
        rank = factors["a"].shape[1]
        update = (factors["a"] @ factors["b"]) * (alpha / rank)
        merged[path] = kernel + update.reshape(kernel.shape).astype(kernel.dtype)
    return unflatten_dict(merged)
