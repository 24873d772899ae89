"""How every command-line entry point runs: quiet logs, and bad input as one `error:` line.

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


def exit_with_error_line(error: InputError) -> None:
    """`error: <message>` on stderr, exit status 2: what a CLI does with an InputError.

    Exits at once (os._exit, after flushing): with a tf.data iterator alive, TensorFlow's thread
    pools can hang a normal interpreter shutdown, and on bad input there is nothing to finish
    (every file is written to a temporary path and renamed).
    """
    print(f"error: {' '.join(str(error).splitlines())}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(USAGE_ERROR_EXIT_CODE)


def run_cli(main: Callable[[list[str]], object]) -> None:
    """`absl.app.run(main)`, with InputErrors reported in one line and INFO logs off by default."""

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

    app.run(main_reporting_input_errors)
