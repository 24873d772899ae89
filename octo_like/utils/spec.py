"""JSON-serializable specs of components: which callable to import and what to call it with.

A spec is a plain dict, so it lives in a ConfigDict and in a saved `config.json`:

    {"module": "octo_like.data.text_tokenizer", "name": "TextTokenizer", "args": [], "kwargs": {"max_length": 16}}

`create` builds one from a class/function or a "pkg.mod:Attr" string, `resolve` imports the target
and binds the arguments, `instantiate` calls it. Specs that went through a ConfigDict come back as
ConfigDicts with lists possibly turned into tuples, so every function here accepts any mapping
(ConfigDict included) and any list or tuple.

Specs nested in `args`/`kwargs` are passed to the target as they are (as plain dicts): the callee
decides whether and when to instantiate them.

`resolve` imports whatever a spec names: that is full power for configs written in Python, and
why a spec read from a file (a release's config.json) is first checked against the registry of
components a release may name (octo_like/policy/registry.py).
"""

import functools
import importlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from octo_like.utils.errors import InputError

SPEC_KEYS = ("module", "name", "args", "kwargs")
_MAPPINGS = (Mapping, ml_collections.ConfigDict)  # a ConfigDict is not a collections.abc.Mapping


def _plain(value: Any) -> Any:
    """`value` with ConfigDicts turned into dicts, so callees see what a JSON-loaded spec gives them."""
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def _lookup(module_name: str, name: str, where: str) -> Any:
    """The attribute `name` (dots allowed: "Outer.inner") of module `module_name`."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise InputError(f"cannot import module '{module_name}' of {where}: {e}") from e
    target = module
    for part in name.split("."):
        if not hasattr(target, part):
            raise InputError(f"module '{module_name}' has no attribute '{name}' (missing '{part}'), named in {where}")
        target = getattr(target, part)
    return target


def _split_target(target: str) -> tuple[str, str]:
    module_name, colon, name = target.partition(":")
    parts = [*module_name.split("."), *name.split(".")]
    if not colon or not all(part.isidentifier() for part in parts):
        raise InputError(f"bad spec target '{target}'; expected 'pkg.module:Attr' (or 'pkg.module:Outer.inner')")
    return module_name, name


def _target_path(target: Callable) -> tuple[str, str]:
    """(module, qualname) of a class or function, checked to import back to the same object."""
    module_name, name = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    if not (isinstance(module_name, str) and isinstance(name, str)):
        raise InputError(f"spec target {target!r} has no import path; expected a class, function or 'pkg.mod:Attr'")
    if "<lambda>" in name or "<locals>" in name or module_name == "__main__":
        raise InputError(
            f"spec target '{module_name}:{name}' cannot be re-imported; define it at the top level of a module"
        )
    where = f"spec target '{module_name}:{name}'"
    if _lookup(module_name, name, where) != target:
        raise InputError(f"{where} does not import back to the same object; use a top-level name")
    return module_name, name


def create(target: Callable | str, *args: Any, **kwargs: Any) -> dict:
    """A spec that calls `target(*args, **kwargs)`.

    `target` is a class or top-level function (its `__module__` and `__qualname__` are recorded) or a
    string "pkg.mod:Attr", which is not imported until the spec is resolved. The arguments must be
    JSON-serializable (nested specs are).
    """
    module_name, name = _split_target(target) if isinstance(target, str) else _target_path(target)
    spec = {"module": module_name, "name": name, "args": list(args), "kwargs": dict(kwargs)}
    try:
        json.dumps(spec)
    except (TypeError, ValueError) as e:
        raise InputError(f"arguments of spec '{module_name}:{name}' are not JSON-serializable: {e}") from e
    return spec


def is_spec(obj: Any) -> bool:
    """Whether `obj` is a mapping (dict or ConfigDict) with string "module" and "name" entries."""
    return isinstance(obj, _MAPPINGS) and isinstance(obj.get("module"), str) and isinstance(obj.get("name"), str)


def _parts(spec: Any) -> tuple[str, str, tuple, dict]:
    """(module, name, args, kwargs) of a spec, or one clear error about what is wrong with it."""
    if not isinstance(spec, _MAPPINGS):
        raise InputError(f"expected a spec (a dict with keys {', '.join(SPEC_KEYS)}); got {type(spec).__name__}")
    keys = list(spec.keys())
    if not is_spec(spec) or set(keys) - set(SPEC_KEYS):
        raise InputError(
            f"malformed spec with keys [{', '.join(map(str, keys))}]; expected string 'module' and 'name' "
            f"and optional 'args', 'kwargs'"
        )
    where = f"spec '{spec['module']}:{spec['name']}'"
    args, kwargs = spec.get("args", ()), spec.get("kwargs", {})
    if not isinstance(args, (list, tuple)):
        raise InputError(f"{where} has 'args' of type {type(args).__name__}; expected a list")
    if not isinstance(kwargs, _MAPPINGS):
        raise InputError(f"{where} has 'kwargs' of type {type(kwargs).__name__}; expected a dict")
    return spec["module"], spec["name"], tuple(_plain(a) for a in args), {k: _plain(v) for k, v in kwargs.items()}


def resolve(spec: Mapping) -> Callable:
    """The spec's target with its arguments bound (`functools.partial`), or the bare target if it has none."""
    module_name, name, args, kwargs = _parts(spec)
    target = _lookup(module_name, name, where=f"spec '{module_name}:{name}'")
    return functools.partial(target, *args, **kwargs) if args or kwargs else target


def instantiate(spec: Mapping) -> Any:
    """The result of calling the spec's target with its arguments."""
    return resolve(spec)()


def _render(value: Any) -> str:
    """A repr that does not depend on mapping order or list-vs-tuple, so equal specs print alike."""
    if is_spec(value):
        return to_string(value)
    if isinstance(value, _MAPPINGS):
        items = sorted(value.items(), key=lambda item: str(item[0]))
        return "{" + ", ".join(f"{k!r}: {_render(v)}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_render, value)) + "]"
    return repr(value)


def to_string(spec: Mapping) -> str:
    """A readable, deterministic form like "pkg.mod:Attr(1, a=2)" (keyword arguments sorted)."""
    module_name, name, args, kwargs = _parts(spec)
    arguments = [*map(_render, args), *(f"{k}={_render(v)}" for k, v in sorted(kwargs.items()))]
    return f"{module_name}:{name}({', '.join(arguments)})"
