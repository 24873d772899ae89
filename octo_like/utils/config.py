"""Experiment configs: loading a config file and checking `--config.*` override keys.

Pure logic on strings and ConfigDicts; the library never parses flags. The CLIs in `scripts/` use
this to validate their command line before absl and `ml_collections.config_flags` see it:
config_flags raises a multi-line traceback on an unknown override key, whether or not the config is
locked.
"""

import copy
import difflib
import importlib.util
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

from octo_like.utils.errors import InputError


def load_config_module(path: str):
    """The imported python file of a config (for configs that build on another's helpers)."""
    if not os.path.isfile(path):
        raise InputError(f"config file '{path}' not found; expected --config path/to/config.py[:variant]")
    module_spec = importlib.util.spec_from_file_location("octo_like_config_file", path)
    if module_spec is None:
        raise InputError(f"config file '{path}' cannot be imported; expected a .py file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_config(config_arg: str) -> ml_collections.ConfigDict:
    """The ConfigDict of "path/to/file.py" or "path/to/file.py:variant".

    Calls the file's `get_config()`, or `get_config(variant)` when a variant is given: exactly what
    `config_flags.DEFINE_config_file` does, so a check here sees the config the flag will hold.
    """
    path, *variant = config_arg.split(":", 1)
    module = load_config_module(path)
    if not callable(getattr(module, "get_config", None)):
        raise InputError(f"config file '{path}' has no get_config function; expected get_config(variant=None)")
    config = module.get_config(*variant)
    if not isinstance(config, ml_collections.ConfigDict):
        raise InputError(f"get_config() of '{path}' returned {type(config).__name__}; expected a ConfigDict")
    return config


def _children(config: ml_collections.ConfigDict) -> dict:
    """The fields of `config`, FieldReferences (placeholders included) kept as such."""
    return dict(config.items(preserve_field_references=True))


def config_keys(config: ml_collections.ConfigDict) -> list[str]:
    """Every dotted path of `config`, inner nodes before their leaves: ["optimizer", "optimizer.lr", ...]."""
    keys = []
    for name, value in _children(config).items():
        keys.append(name)
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(f"{name}.{key}" for key in config_keys(value))
    return keys


def _deepest_node(config: ml_collections.ConfigDict, dotted_key: str) -> tuple[str, object]:
    """(path, value) of the deepest existing prefix of `dotted_key`, stopping at a missing or leaf field.

    Returns (dotted_key, value) when the whole key exists; a FieldReference means that everything
    below it counts as existing (its value is not a ConfigDict we could look into).
    """
    path, node = "", config
    for part in dotted_key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            break
        path, node = f"{path}.{part}".lstrip("."), _children(node)[part]
        if isinstance(node, config_dict.FieldReference):
            return dotted_key, node
    return path, node


def check_override_keys(config: ml_collections.ConfigDict, dotted_keys: Iterable[str]) -> None:
    """Raises InputError naming the first key of `dotted_keys` that `config` does not have.

    The message lists the closest valid keys, or, when none is close, the valid keys under the
    deepest part of the key that exists. Keys below a placeholder or FieldReference are accepted.
    """
    valid_keys = config_keys(config)
    for key in dotted_keys:
        path, node = _deepest_node(config, key)
        if path == key:
            continue
        # The existing ancestors of `key` share its prefix but are not what was meant.
        candidates = [valid for valid in valid_keys if not key.startswith(f"{valid}.")]
        close = difflib.get_close_matches(key, candidates, n=3)
        if close:
            raise InputError(f"unknown config key '{key}'; closest valid keys: {', '.join(close)}")
        if not isinstance(node, ml_collections.ConfigDict):  # the key goes below a leaf: list the leaf's level
            path = path.rpartition(".")[0]
            node = _deepest_node(config, path)[1]
        level = f"under '{path}'" if path else "at the top level"
        siblings = ", ".join(f"{path}.{name}".lstrip(".") for name in node.keys())
        raise InputError(f"unknown config key '{key}'; valid keys {level}: {siblings}")


def with_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with each dotted key of `overrides` set: `--config.<key>=<value>` from Python.

        config = with_overrides(load_config("experiments/configs/octo_scratch.py:tiny"), {"num_steps": 100})
        run_training(config.to_dict())

    An unknown key is one line naming the closest valid keys; a value of the wrong type is one line
    naming the key and the type it holds."""
    check_override_keys(config, overrides)
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        try:
            node[leaf] = value
        except TypeError as error:
            raise InputError(f"config.{key}={value!r}: {error}") from error
    return config


def override_keys_from_argv(argv: Sequence[str], flag_name: str = "config") -> list[str]:
    """The dotted keys overridden in `argv`, each once, in order of first appearance.

    "--config.a.b=1", "--config.a.b 1", "--config.flag" and "--noconfig.flag" give "a.b" and "flag";
    the arguments are matched the way `config_flags` does: one or two dashes, optional "no" prefix.
    """
    pattern = re.compile(rf"^-{{1,2}}(?:no)?{re.escape(flag_name)}\.([^=]+)")
    return list(dict.fromkeys(match.group(1) for arg in argv if (match := pattern.match(arg))))


def config_arg_from_argv(argv: Sequence[str], flag_name: str = "config") -> str | None:
    """The value of "--config=VALUE" or "--config VALUE" in `argv` (the last one given), or None."""
    value = None
    for i, arg in enumerate(argv):
        name, equals, rest = arg.partition("=")
        if re.fullmatch(rf"-{{1,2}}{re.escape(flag_name)}", name):
            value = rest if equals else (argv[i + 1] if i + 1 < len(argv) else None)
    return value
