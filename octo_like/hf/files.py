"""What the loaders of transformers checkpoint directories share: required files, tensor names and layouts.

Flax modules here are named like the transformers modules they mirror, so a parameter path maps to
a tensor name mechanically: ("encoder", "layers_3", "self_attn", "q_proj", "kernel") is
"encoder.layers.3.self_attn.q_proj.weight". Torch stores Linear weights [out, in] (Flax: [in, out])
and Conv2d weights [out, in, h, w] (Flax: [h, w, in, out]).
"""

import json
import os
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors import safe_open

from octo_like.utils.errors import InputError

MAX_NAMES_LISTED = 8
INDEX_FILE = "model.safetensors.index.json"
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


def read_json(path: str, what: str) -> dict:
    try:
        with open(path) as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise InputError(f"{what} '{path}' is not valid JSON: {error}") from None


def read_config(checkpoint_dir: str, family: str, model_types: Sequence[str]) -> tuple[str, dict]:
    """(path, contents) of the directory's config.json, whose model_type (the first of `model_types`
    when absent) must be one of `model_types`."""
    path = required_file(checkpoint_dir, "config.json", f"{family} checkpoint")
    raw = read_json(path, f"{family} config")
    model_type = raw.setdefault("model_type", model_types[0])
    if model_type not in model_types:
        expected = f"'{model_types[0]}'" if len(model_types) == 1 else f"one of {', '.join(model_types)}"
        raise InputError(f"{family} config '{path}': model_type is '{model_type}', expected {expected}")
    return path, raw


def square_size(value, key: str, where: str) -> int:
    """transformers accepts an int or an (h, w) pair for image_size / patch_size; the towers here are square."""
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[0] != value[1]:
            raise InputError(f"{where}: {key} is {value}; expected one size (square)")
        value = value[0]
    return int(value)


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


class CheckpointTensors:
    """The tensors of a checkpoint directory: model.safetensors, or the shards that
    model.safetensors.index.json maps names to (as `save_pretrained` writes large models)."""

    def __init__(self, directory: str, what: str = "checkpoint"):
        index_path = os.path.join(directory, INDEX_FILE)
        if os.path.isfile(index_path):
            with open(index_path) as file:
                try:
                    weight_map = json.load(file)["weight_map"]
                except (json.JSONDecodeError, KeyError) as error:
                    raise InputError(
                        f"{what} index '{index_path}' is not a safetensors index ({error}); expected a weight_map"
                    ) from None
            self.path = index_path
            self._file_of = {name: os.path.join(directory, shard) for name, shard in weight_map.items()}
            for shard in sorted(set(self._file_of.values())):
                if not os.path.isfile(shard):
                    raise InputError(f"{what} shard '{shard}' named by '{index_path}' does not exist")
        else:
            self.path = required_file(directory, "model.safetensors", what)
            with safe_open(self.path, framework="numpy") as file:
                self._file_of = {name: self.path for name in file.keys()}
        self._open: dict[str, Any] = {}

    def names(self) -> list[str]:
        return list(self._file_of)

    def get(self, name: str) -> np.ndarray:
        path = self._file_of[name]
        if path not in self._open:
            self._open[path] = safe_open(path, framework="numpy")
        return self._open[path].get_tensor(name)


def load_flax_params(
    tensors: CheckpointTensors,
    param_shapes: dict,
    *,
    prefixes: Sequence[str] = ("",),
    ignored_suffixes: tuple[str, ...] = (),
    dtype=jnp.float32,
    what: str = "checkpoint",
) -> dict:
    """The checkpoint's tensors as the Flax params `param_shapes` (a tree of shapes) describes.

    Tensor names may carry one of `prefixes` (the first under which every expected tensor exists
    wins: transformers 4.x and 5.x, and models that wrap others, name the same tensor differently).
    Tensors under that prefix that the params do not use (other than `ignored_suffixes`) are
    unexpected; both lists, or a shape that disagrees, are one InputError."""
    expected = {torch_name(path): (path, shape) for path, shape in flatten_dict(param_shapes).items()}
    names = tensors.names()
    candidates = [{name[len(prefix) :]: name for name in names if name.startswith(prefix)} for prefix in prefixes]
    stored = max(
        candidates, key=lambda candidate: (expected.keys() <= candidate.keys(), len(expected.keys() & candidate.keys()))
    )
    missing = sorted(expected.keys() - stored.keys())
    unexpected = sorted(name for name in stored.keys() - expected.keys() if not name.endswith(ignored_suffixes))
    if missing or unexpected:
        raise InputError(
            f"{what} '{tensors.path}' does not match its config.json: "
            f"missing tensors [{listed(missing)}]; unexpected tensors [{listed(unexpected)}]"
        )
    flat_params = {}
    for name, (path, param) in expected.items():
        tensor = to_flax_layout(tensors.get(stored[name]), path)
        if tensor.shape != tuple(param.shape):
            raise InputError(
                f"{what} '{tensors.path}': tensor {name} has shape {tensor.shape} in Flax layout, "
                f"expected {tuple(param.shape)} from config.json"
            )
        flat_params[path] = jnp.asarray(tensor, dtype)
    return unflatten_dict(flat_params)
