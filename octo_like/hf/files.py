"""What the loaders of transformers checkpoint directories share: required files, tensor names and layouts.

Flax modules here are named like the transformers modules they mirror, so a parameter path maps to
a tensor name mechanically: ("encoder", "layers_3", "self_attn", "q_proj", "kernel") is
"encoder.layers.3.self_attn.q_proj.weight". Torch stores Linear weights [out, in] (Flax: [in, out])
and Conv2d weights [out, in, h, w] (Flax: [h, w, in, out]).
"""

import os
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors import safe_open

from octo_like.utils.errors import InputError

MAX_NAMES_LISTED = 8
# Flax leaf name -> torch leaf name; kernels are transposed on the way.
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "in_proj_kernel": "in_proj_weight"}
_TRANSPOSED_LEAVES = ("kernel", "in_proj_kernel")


def required_file(directory: str, name: str, what: str = "checkpoint") -> str:
    """`directory/name`, or an InputError naming what is missing."""
    if not os.path.isdir(directory):
        raise InputError(f"{what} directory '{directory}' does not exist")
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise InputError(f"{what} file '{path}' does not exist; expected {name} in the checkpoint directory")
    return path


def listed(names: Sequence[str]) -> str:
    """The first few names, comma-separated, and how many more (for one-line mismatch errors)."""
    shown = ", ".join(names[:MAX_NAMES_LISTED])
    return shown + (f", ... (+{len(names) - MAX_NAMES_LISTED} more)" if len(names) > MAX_NAMES_LISTED else "")


def torch_name(flax_path: tuple[str, ...]) -> str:
    *modules, leaf = flax_path
    names = [f"layers.{name.removeprefix('layers_')}" if name.startswith("layers_") else name for name in modules]
    return ".".join([*names, _LEAF_NAMES.get(leaf, leaf)])


def to_flax_layout(tensor: np.ndarray, flax_path: tuple[str, ...]) -> np.ndarray:
    if flax_path[-1] not in _TRANSPOSED_LEAVES:
        return tensor
    if tensor.ndim == 4:  # Conv2d [out, in, h, w] -> [h, w, in, out]
        return tensor.transpose(2, 3, 1, 0)
    return tensor.T


def load_flax_params(weights_path: str, param_shapes: dict, *, prefixes: Sequence[str] = ("",),
                     ignored_suffixes: tuple[str, ...] = (), dtype=jnp.float32, what: str = "checkpoint") -> dict:
    """The tensors of a safetensors file as the Flax params `param_shapes` (a tree of shapes) describes.

    Tensor names may carry one of `prefixes` (the first under which every expected tensor exists
    wins: transformers 4.x and 5.x, and models that wrap others, name the same tensor differently).
    Tensors under that prefix that the params do not use (other than `ignored_suffixes`) are
    unexpected; both lists, or a shape that disagrees, are one InputError."""
    expected = {torch_name(path): (path, shape) for path, shape in flatten_dict(param_shapes).items()}
    with safe_open(weights_path, framework="numpy") as file:
        names = list(file.keys())
        candidates = [{name[len(prefix):]: name for name in names if name.startswith(prefix)} for prefix in prefixes]
        stored = max(candidates, key=lambda candidate: (expected.keys() <= candidate.keys(), len(expected.keys() & candidate.keys())))
        missing = sorted(expected.keys() - stored.keys())
        unexpected = sorted(name for name in stored.keys() - expected.keys() if not name.endswith(ignored_suffixes))
        if missing or unexpected:
            raise InputError(
                f"{what} '{weights_path}' does not match its config.json: "
                f"missing tensors [{listed(missing)}]; unexpected tensors [{listed(unexpected)}]"
            )
        flat_params = {}
        for name, (path, param) in expected.items():
            tensor = to_flax_layout(file.get_tensor(stored[name]), path)
            if tensor.shape != tuple(param.shape):
                raise InputError(
                    f"{what} '{weights_path}': tensor {name} has shape {tensor.shape} in Flax layout, "
                    f"expected {tuple(param.shape)} from config.json"
                )
            flat_params[path] = jnp.asarray(tensor, dtype)
    return unflatten_dict(flat_params)
