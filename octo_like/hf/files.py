"""What the loaders of transformers checkpoint directories share: required files and tensor-name lists."""

import os
from collections.abc import Sequence

from octo_like.utils.errors import InputError

MAX_NAMES_LISTED = 8


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
