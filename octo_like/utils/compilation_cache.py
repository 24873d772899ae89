"""The persistent JAX compilation cache, on by default for every command (train, finetune, evaluate,
serve, bench): a second run of the same program loads its compiled XLA executables from disk
instead of compiling them again.

Where: `--compilation_cache=DIR` (every CLI has the flag), else $OCTO_LIKE_COMPILATION_CACHE, else
$JAX_COMPILATION_CACHE_DIR, else the user's cache directory ($XDG_CACHE_HOME or ~/.cache, then
octo_like/jax). `off` (flag or variable) turns it off.
"""

import os
import sys

VARIABLE = "OCTO_LIKE_COMPILATION_CACHE"
OFF = "off"


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "octo_like", "jax")


def cache_dir(setting: str | None = None) -> str | None:
    """The directory `setting` (a flag's value, or None) chooses, or None for off."""
    chosen = setting or os.environ.get(VARIABLE) or os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_cache_dir()
    return None if chosen == OFF else chosen


def enable_compilation_cache(setting: str | None = None) -> str | None:
    """Points JAX (this process, and the processes it starts, through the environment) at the
    cache `setting` chooses; returns the directory, or None when it is off."""
    directory = cache_dir(setting)
    if directory is None:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    else:
        os.makedirs(directory, exist_ok=True)
        os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
    if "jax" in sys.modules:  # imported already: the environment is read only at import
        import jax

        jax.config.update("jax_compilation_cache_dir", directory)
    return directory
