"""How every command-line entry point runs: quiet logs, the persistent compilation cache
(octo_like/utils/compilation_cache.py, `--compilation_cache`), bad input as one `error:` line,
Ctrl-C as one line.

    if __name__ == "__main__":
        run_cli(main)          # in place of absl.app.run(main)
        run_config_cli(main)   # the same, for a CLI with a `--config path.py[:variant]` flag

The scripts in scripts/ run against the installed package (`pip install -e .`, done by
scripts/setup_env.sh): none of them changes where Python looks for modules.
"""

import functools
import os
import sys
from collections.abc import Callable

from absl import app, flags, logging
from ml_collections import ConfigDict

from octo_like.utils.compilation_cache import OFF, enable_compilation_cache
from octo_like.utils.config import check_override_keys, config_arg_from_argv, load_config, override_keys_from_argv
from octo_like.utils.errors import InputError

_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache",
    None,
    f"Persistent JAX compilation cache directory, or '{OFF}' (default: $OCTO_LIKE_COMPILATION_CACHE, "
    "else $JAX_COMPILATION_CACHE_DIR, else ~/.cache/octo_like/jax).",
)

USAGE_ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


def exit_with_line(line: str, exit_code: int) -> None:
    """`line` on stderr, then exit at once with `exit_code` (os._exit, after flushing).

    With a tf.data iterator alive, TensorFlow's thread pools can hang a normal interpreter
    shutdown, and there is nothing left to finish: every file is written to a temporary path and
    renamed, and the `finally` blocks (checkpoint saves, worker processes) ran on the way here.
    """
    print(line, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def exit_with_error_line(error: InputError) -> None:
    """`error: <message>` on stderr, exit status 2: what a CLI does with an InputError."""
    exit_with_line(f"error: {' '.join(str(error).splitlines())}", USAGE_ERROR_EXIT_CODE)


def run_cli(main: Callable[[list[str]], object], interrupted_line: str = "interrupted") -> None:
    """`absl.app.run(main)`, with InputErrors reported in one line and INFO logs off by default.

    Ctrl-C prints `interrupted_line` (which can say what a rerun does) instead of a traceback and
    exits with status 130.
    """

    @functools.wraps(main)
    def main_reporting_input_errors(argv):
        # TFDS logs every file it opens at INFO: keep the output to what the command prints,
        # unless --verbosity is given.
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        # A second run of the same program loads its executables instead of compiling them.
        enable_compilation_cache(_COMPILATION_CACHE.value)
        try:
            return main(argv)
        except InputError as error:
            exit_with_error_line(error)
        except KeyboardInterrupt:
            exit_with_line(interrupted_line, INTERRUPTED_EXIT_CODE)

    app.run(main_reporting_input_errors)


def check_config_args(argv: list[str], flag_name: str = "config") -> None:
    """Loads the config named by `--config` (or the flag's default) and checks the override keys."""
    overrides = override_keys_from_argv(argv, flag_name)
    config_arg = config_arg_from_argv(argv, flag_name)
    if config_arg is not None:
        config = load_config(config_arg)
    else:  # no --config given: the overrides apply to the flag's default config, if it has one
        config = flags.FLAGS[flag_name].value if flag_name in flags.FLAGS else None
    if overrides and not isinstance(config, ConfigDict):
        raise InputError(
            f"--{flag_name}.{overrides[0]} given without a config; expected --{flag_name} path.py[:variant]"
        )
    if overrides:
        check_override_keys(config, overrides)


def run_config_cli(main: Callable[[list[str]], object], flag_name: str = "config", **run_cli_kwargs) -> None:
    """`run_cli(main)`, with the `--config` file and its `--config.*` override keys checked before absl
    parses the flags (config_flags would fail on an unknown key with a long traceback)."""
    try:
        check_config_args(sys.argv, flag_name)
    except InputError as error:
        exit_with_error_line(error)
    run_cli(main, **run_cli_kwargs)
