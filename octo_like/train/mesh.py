"""The device mesh (axes `data`, `fsdp` and optionally `tensor`) and the shardings of batches and parameters.

One device is a 1x1 mesh; the batch is split over all (data, fsdp) devices and replicated over
`tensor`. Parameters are placed by sharding rules: an ordered list of (regex, PartitionSpec) matched
against the "/"-joined parameter path, first match wins (big_vision style); an array that no rule
matches gets the default FSDP spec (its largest `fsdp`-divisible axis split over `fsdp` when it is
large enough, else replicated).
"""

import math
import re
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from octo_like.utils.errors import InputError
from octo_like.utils.sharding import BATCH_AXES, place_params

TENSOR_AXIS = "tensor"
FSDP_MIN_SIZE = 2**14  # smaller arrays cost more in all-gathers than they save in memory

ShardingRules = list[tuple[str, PartitionSpec]]

# FSDP for the VLA (PaliGemma + action expert, up to the 3B backbone): every large kernel split
# along its model-width axis (the input of q/k/v/gate/up and fc1, the output of o/down and fc2,
# the embedding's columns), because the widths (Gemma 2048, expert 1024, SigLIP 1152) divide by
# every power-of-two device count up to 128, where the vocabulary (257216 = 64 x 4019) and SigLIP's
# MLP (4304) do not. Everything else (norms, biases, the patch convolution, LoRA factors) falls to
# the default FSDP rule. Config form: (regex, spec as a tuple), as `sharding_rules` holds them.
VLA_FSDP_RULES = [
    (r"embed_tokens/embedding$", (None, "fsdp")),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj|fc1)/kernel$", ("fsdp", None)),
    (r"(o_proj|out_proj|down_proj|fc2)/kernel$", (None, "fsdp")),
]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: list | None = None) -> Mesh:
    """A (data, fsdp[, tensor]) mesh over `devices` (default: all); data=-1 (or fsdp=-1, with a
    positive data) takes the remaining devices.

    The `tensor` axis exists only when tensor > 1, so shardings written for (data, fsdp) keep working.
    """
    devices = list(devices if devices is not None else jax.devices())
    if fsdp == -1 and isinstance(data, int) and data >= 1 and isinstance(tensor, int) and tensor >= 1:
        if len(devices) % (data * tensor):
            raise InputError(
                f"mesh data={data} x tensor={tensor} does not divide the {len(devices)} devices (fsdp=-1 takes "
                "the rest)"
            )
        fsdp = len(devices) // (data * tensor)
    for name, size in (("fsdp", fsdp), ("tensor", tensor)):
        if not isinstance(size, int) or size < 1:
            raise InputError(f"mesh {name}={size!r} must be a positive integer")
    if not isinstance(data, int) or not (data == -1 or data >= 1):
        raise InputError(f"mesh data={data!r} must be a positive integer or -1 (all remaining devices)")
    sizes = {"fsdp": fsdp, "tensor": tensor} if tensor > 1 else {"fsdp": fsdp}
    if data == -1:
        if len(devices) % math.prod(sizes.values()):
            raise InputError(f"mesh {_shape_str(sizes)} does not divide the {len(devices)} devices")
        data = len(devices) // math.prod(sizes.values())
    sizes = {"data": data, **sizes}
    if math.prod(sizes.values()) != len(devices):
        raise InputError(
            f"mesh {_shape_str(sizes)} needs {math.prod(sizes.values())} devices; there are {len(devices)}"
        )
    return Mesh(np.asarray(devices).reshape(tuple(sizes.values())), tuple(sizes))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the (data, fsdp) devices, replicated over `tensor`."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the (data, fsdp) devices (`distributed.local_batch_size`
    checks the processes)."""
    shards = math.prod(mesh.shape[axis] for axis in BATCH_AXES)
    if batch_size % shards:
        raise InputError(
            f"batch_size={batch_size} is not divisible by the {shards} data x fsdp devices of the mesh "
            f"{dict(mesh.shape)}"
        )


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """This process's batch (numpy) -> global arrays split over the mesh; strings (dataset_name)
    are left out. With several processes each passes its own part (`distributed.local_batch_size`
    rows) and the global batch is their concatenation in process order."""
    sharding = batch_sharding(mesh)

    def numeric(tree):
        if isinstance(tree, dict):
            return {key: numeric(value) for key, value in tree.items() if not _is_text(value)}
        return jax.make_array_from_process_local_data(sharding, np.asarray(tree))

    return numeric(batch)


def default_fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int = FSDP_MIN_SIZE) -> PartitionSpec:
    """Split the largest axis divisible by `fsdp_size` over "fsdp" (ties: the last such axis).

    Arrays smaller than `min_size`, with no divisible axis, or on a mesh with fsdp_size == 1 are
    replicated (PartitionSpec()).
    """
    if fsdp_size == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    candidates = [(length, axis) for axis, length in enumerate(shape) if length % fsdp_size == 0]
    if not candidates:
        return PartitionSpec()
    _, axis = max(candidates)  # tuples compare the length first, then the axis: ties go to the last axis
    return PartitionSpec(*(("fsdp" if i == axis else None) for i in range(len(shape))))


def param_shardings(
    params, mesh: Mesh, rules: Sequence[tuple[str, PartitionSpec]] = (), fsdp_min_size: int = FSDP_MIN_SIZE
):
    """A pytree of NamedSharding shaped like `params` (any pytree: parameters, optimizer states, ...).

    Each leaf's "/"-joined path is matched with `re.search` against the rules in order, so a rule like
    `Dense_0/kernel$` also places the optimizer moments of that kernel; unmatched leaves (including
    scalars such as step counters) get `default_fsdp_spec`.
    """
    compiled = []
    for pattern, spec in rules:
        try:
            compiled.append((re.compile(pattern), pattern, spec))
        except re.error as err:
            raise InputError(f"sharding rule {pattern!r} is not a valid regex: {err}") from None
    fsdp_size = mesh.shape["fsdp"]

    def sharding_for(key_path, leaf):
        path = jax.tree_util.keystr(key_path, simple=True, separator="/")
        shape = tuple(np.shape(leaf))
        for regex, pattern, spec in compiled:
            if regex.search(path):
                return NamedSharding(mesh, _checked_rule_spec(path, shape, pattern, spec, mesh))
        return NamedSharding(mesh, default_fsdp_spec(shape, fsdp_size, fsdp_min_size))

    return jax.tree_util.tree_map_with_path(sharding_for, params)


def shard_params(
    params, mesh: Mesh, rules: Sequence[tuple[str, PartitionSpec]] = (), fsdp_min_size: int = FSDP_MIN_SIZE
):
    """`params` (any pytree of host values or single-device arrays, the same in every process)
    placed on the mesh with `param_shardings` (see `place_params`)."""
    return place_params(params, param_shardings(params, mesh, rules, fsdp_min_size))


def _checked_rule_spec(path: str, shape: tuple, pattern: str, spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    """`spec` with the optional `tensor` axis dropped when the mesh has none, after checking it fits `shape`."""

    def fail(reason: str):
        raise InputError(f"sharding rule {pattern!r} does not fit {path} of shape {shape}: {spec} {reason}")

    if len(spec) != len(shape):
        fail(f"has rank {len(spec)}, the array has rank {len(shape)}")
    entries = []
    for axis, entry in enumerate(spec):
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        for name in names:
            if name not in mesh.shape and name != TENSOR_AXIS:
                fail(f"names mesh axis {name!r}; the mesh axes are {tuple(mesh.shape)}")
        # make_mesh leaves out a size-1 `tensor` axis, so a tensor-parallel rule set still runs without one.
        names = tuple(name for name in names if name in mesh.shape)
        split = math.prod(mesh.shape[name] for name in names)
        if shape[axis] % split:
            fail(f"splits axis {axis} (length {shape[axis]}) into {split} parts, which does not divide it")
        entries.append(None if not names else names[0] if len(names) == 1 else names)
    return PartitionSpec(*entries)


def _shape_str(sizes: dict) -> str:
    return " x ".join(f"{name}={size}" for name, size in sizes.items())


def _is_text(value) -> bool:
    return not isinstance(value, dict) and np.asarray(value).dtype.kind in "OSU"
