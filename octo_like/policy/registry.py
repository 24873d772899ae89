"""The components a release may name, and the check that holds a release's config.json to them.

A release's config.json names its tokenizers and action heads by spec dicts (octo_like/utils/spec.py),
and building the network imports and calls whatever a spec names. A release is data read from disk,
possibly written by someone else, so loading it must never import or call a name the project has not
declared here: `read_release_config` rejects, in one line naming the key path, any spec-like mapping
anywhere in the file (nested specs in `args`/`kwargs` included) whose target is not registered,
before anything is built. The registry holds "module:name" strings, so checking imports nothing.

Configs written in Python (experiments/configs) keep full power: they are code the user runs, not
data the user loads, and their specs are never checked against this registry. A release may only
name what they name, though: tests/test_release_registry.py checks that every spec of every
experiment config variant is registered here.
"""

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from octo_like.utils.errors import InputError
from octo_like.utils.spec import SPEC_KEYS, is_spec

RELEASE_CONFIG = "config.json"

RELEASE_COMPONENTS = frozenset(
    {
        # Action heads (every class of octo_like.model.heads.HEADS).
        "octo_like.model.heads:ContinuousActionHead",
        "octo_like.model.heads:DiscreteActionHead",
        "octo_like.model.heads:DiffusionActionHead",
        "octo_like.model.heads:FlowMatchingActionHead",
        # Observation and task tokenizers.
        "octo_like.model.scratch.observation_tokenizers:ImageTokenizer",
        "octo_like.model.scratch.observation_tokenizers:GoalImageTokenizer",
        "octo_like.model.scratch.observation_tokenizers:ProprioTokenizer",
        "octo_like.model.scratch.text_aware:TextAwareImageTokenizer",
        # The data pipeline's instruction tokenizer (dataset.traj_transform_kwargs.text_tokenizer).
        "octo_like.data.text_tokenizer:TextTokenizer",
    }
)
_REGISTERED: set[str] = set()  # added by the user's code (register_release_component)

# Modules that releases written before model/ split into its two families name, and where those
# components live now: reading a config.json renames them, so that older releases load and resume.
MOVED_MODULES = {
    "octo_like.model.tokenizers": "octo_like.model.scratch.observation_tokenizers",
    "octo_like.model.text_aware": "octo_like.model.scratch.text_aware",
    "octo_like.data.language": "octo_like.data.text_tokenizer",
}


def _mappings(tree: Any) -> Iterator[tuple[str, Mapping]]:
    """(key path, mapping) of every mapping in a JSON tree, in document order. Iterative, so that a
    deeply nested file is one more tree to walk rather than a RecursionError."""
    stack = [("", tree)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, Mapping):
            yield path, node
            children = [(f"{path}.{key}" if path else str(key), value) for key, value in node.items()]
        elif isinstance(node, list | tuple):
            children = [(f"{path}[{index}]", value) for index, value in enumerate(node)]
        else:
            continue
        stack.extend(reversed(children))


def check_release_config(config: Mapping, source: str) -> None:
    """Raises InputError (one line naming `source`, the key path and the target) at the first mapping
    with a "module" key that is not a well-formed spec of a registered component."""
    for path, node in _mappings(config):
        if "module" not in node:
            continue
        where = f"{source}: {path or 'the top level'}"
        if not is_spec(node) or set(node) - set(SPEC_KEYS):
            raise InputError(
                f"{where} is a malformed component spec (keys [{', '.join(map(str, node))}]); expected "
                "string 'module' and 'name' naming a registered component, and optional 'args', 'kwargs'"
            )
        target = f"{node['module']}:{node['name']}"
        if target not in RELEASE_COMPONENTS and target not in _REGISTERED:
            raise InputError(
                f"{where} names '{target}', which is not a registered component; a release may name only "
                "the components of octo_like/policy/registry.py and those registered with "
                "register_release_component"
            )


def rename_moved_modules(config: Any) -> None:
    """Renames, in place, the "module" of every mapping in `config` that names a moved module."""
    for _, node in _mappings(config):
        module = node.get("module")
        if isinstance(module, str) and module in MOVED_MODULES:
            node["module"] = MOVED_MODULES[module]


def register_release_component(target: str) -> None:
    """Lets releases name `target` ("pkg.module:Name", e.g. your own action head) from now on in this
    process: a choice made in your code, never by a file being loaded."""
    module_name, _, name = target.partition(":")
    if not all(part.isidentifier() for part in [*module_name.split("."), *name.split(".")]):
        raise InputError(f"cannot register '{target}'; expected 'pkg.module:Name'")
    _REGISTERED.add(target)


def read_config_json(run_dir: str) -> dict:
    """The run directory's config.json as a JSON object with a `model` section (moved modules renamed),
    or one InputError saying what is wrong with the file. Nothing in it is checked or built (see
    `read_release_config`)."""
    path = os.path.join(run_dir, RELEASE_CONFIG)
    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    except OSError as error:
        raise InputError(
            f"cannot read release config '{path}' ({error.strerror}); expected a run directory with {RELEASE_CONFIG}"
        ) from error
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(
            f"release config '{path}' is not valid JSON ({error}); expected the JSON object that save_pretrained writes"
        ) from error
    if not isinstance(config, dict):
        raise InputError(f"release config '{path}' holds a JSON {type(config).__name__}; expected a JSON object")
    if not isinstance(config.get("model"), dict):
        raise InputError(
            f"release config '{path}' has no 'model' object; expected the model section that save_pretrained writes"
        )
    rename_moved_modules(config)
    return config


def read_release_config(run_dir: str) -> dict:
    """The run directory's config.json (`read_config_json`), checked to name only registered components."""
    config = read_config_json(run_dir)
    check_release_config(config, source=f"release config '{os.path.join(run_dir, RELEASE_CONFIG)}'")
    return config
