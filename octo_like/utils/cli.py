"""How every command-line entry point runs: quiet logs, bad input as one `error:` line, Ctrl-C as one line.

    if __name__ == "__main__":
        run_cli(main)   # in place of absl.app.run(main)
"""

import functools
import os
import sys
from collections.abc import Callable

from absl import app, flags, logging

from octo_like.utils.errors import InputError

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
        try:
            return main(argv)
        except InputError as error:
            exit_with_error_line(error)
        except KeyboardInterrupt:
            exit_with_line(interrupted_line, INTERRUPTED_EXIT_CODE)

    app.run(main_reporting_input_errors)
