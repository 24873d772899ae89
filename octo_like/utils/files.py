"""Writing files so that a reader never sees one half-written: a temporary file, then a rename."""

import os
from collections.abc import Callable


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """`write(temp_path)` then rename onto `path`; the temporary file is removed on failure.

    The temporary file is in the same directory (so the rename is atomic) and keeps the extension
    of `path` (writers such as numpy, ffmpeg and matplotlib choose the format by extension).
    """
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    stem, extension = os.path.splitext(name)
    temp_path = os.path.join(directory, f".{stem}.{os.getpid()}.tmp{extension}")
    try:
        write(temp_path)
        os.replace(temp_path, path)
    finally:
        if os.path.exists(temp_path):
            os.remove(temp_path)


def write_text_atomically(path: str, text: str) -> None:
    def write(temp_path: str) -> None:
        with open(temp_path, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())

    write_atomically(path, write)
