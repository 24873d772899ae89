"""Architectures named in configs: a section gives a checkpoint directory or a preset `size`, and
the resolved architecture is written into its `config`, so that a release rebuilds the model
without the checkpoint."""

from collections.abc import Callable, Mapping
from typing import Any

from octo_like.utils.errors import InputError


def resolve_architecture(
    section: Mapping,
    key: str,
    from_checkpoint: Callable[[str], Any],
    presets: Mapping[str, Any],
    to_dict: Callable[[Any], dict],
) -> dict:
    """`section` ({"checkpoint", "size", "config"} at config key `key`) with `config` filled in: from
    the checkpoint's config.json when one is given, else the `size` preset (default "tiny")."""
    section = dict(section)
    if section.get("config") is not None:
        return section
    if section.get("checkpoint"):
        architecture = from_checkpoint(section["checkpoint"])
    else:
        size = section.get("size", "tiny")
        if size not in presets:
            raise InputError(f"{key}.size='{size}'; expected one of {', '.join(presets)} (or {key}.checkpoint)")
        architecture = presets[size]
    return {**section, "config": to_dict(architecture)}
