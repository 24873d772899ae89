"""The one error type for bad user input."""


class InputError(ValueError):
    """Bad user input: a config key, path, name or shape that is not what was expected.

    The message is one line that names the offending key/path/shape and what was expected; CLIs
    print it as `error: <message>` and exit with status 2, without a traceback.
    """
