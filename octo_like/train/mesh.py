"""The device mesh (axes `data` and `fsdp`) and the shardings of batches and parameters.

One device is a 1x1 mesh; the batch is split over all devices along (data, fsdp). Parameters are
replicated here; rule-based FSDP sharding of large arrays comes with multi-host training.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from octo_like.utils.errors import InputError

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices: list | None = None) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: all); -1 takes the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    if data == -1:
        if len(devices) % fsdp:
            raise InputError(f"mesh fsdp={fsdp} does not divide the {len(devices)} devices")
        data = len(devices) // fsdp
    if data * fsdp != len(devices):
        raise InputError(f"mesh shape data={data} x fsdp={fsdp} needs {data * fsdp} devices; there are {len(devices)}")
    return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    if batch_size % mesh.size:
        raise InputError(f"batch_size={batch_size} is not divisible by the {mesh.size} devices of the mesh {dict(mesh.shape)}")


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """A host batch (numpy) -> global arrays split over the mesh; strings (dataset_name) are left out."""
    sharding = batch_sharding(mesh)

    def numeric(tree):
        if isinstance(tree, dict):
            return {key: numeric(value) for key, value in tree.items() if not _is_text(value)}
        return jax.device_put(tree, sharding)

    return numeric(batch)


def _is_text(value) -> bool:
    return not isinstance(value, dict) and np.asarray(value).dtype.kind in "OSU"
