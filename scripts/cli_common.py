"""What every CLI in scripts/ shares: the repo on sys.path and one-line errors for bad input.

    import cli_common  # before any `import octo_like`
    ...
    if __name__ == "__main__":
        cli_common.run(main)

`run` validates the `--config` file and its `--config.*` override keys before absl parses the
flags (config_flags would fail on an unknown key with a long traceback), then runs `main` through
`octo_like.utils.cli.run_cli`: an InputError raised at any point becomes `error: <message>` on
stderr and exit status 2.
"""

import os
import sys
from collections.abc import Callable

# `python scripts/foo.py` puts scripts/ on sys.path, not the repo root, so `octo_like` (and the
# config files, which import it) would only be found if installed. Put the working tree right
# after scripts/, ahead of any installed copy.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(1, REPO_ROOT)

from absl import flags  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from octo_like.utils.config import (  # noqa: E402
    check_override_keys,
    config_arg_from_argv,
    load_config,
    override_keys_from_argv,
)
from octo_like.utils.cli import exit_with_error_line, run_cli  # noqa: E402
from octo_like.utils.errors import InputError  # noqa: E402


def check_config_args(argv: list[str], flag_name: str = "config") -> None:
    """Loads the config named by `--config` (or the flag's default) and checks the override keys."""
    overrides = override_keys_from_argv(argv, flag_name)
    config_arg = config_arg_from_argv(argv, flag_name)
    if config_arg is not None:
        config = load_config(config_arg)
    else:  # no --config given: the overrides apply to the flag's default config, if it has one
        config = flags.FLAGS[flag_name].value if flag_name in flags.FLAGS else None
    if overrides and not isinstance(config, ConfigDict):
        raise InputError(f"--{flag_name}.{overrides[0]} given without a config; expected --{flag_name} path.py[:variant]")
    if overrides:
        check_override_keys(config, overrides)


def run(main: Callable[[list[str]], object], flag_name: str = "config") -> None:
    """`run_cli(main)` (one-line InputErrors, quiet logs), with the config checked before absl parses it."""
    try:
        check_config_args(sys.argv, flag_name)
    except InputError as error:
        exit_with_error_line(error)
    run_cli(main)
