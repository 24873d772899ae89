"""One writer per run directory: an advisory `fcntl.flock` on `<run_dir>/run.lock`, held for the
life of a training run.

Two runs on one directory would interleave orbax saves (one dies in the other's cleanup) and
metrics.jsonl records; the second now fails at once, naming the holder. The lock file holds the
holder's pid, host and start time; the kernel drops the lock when the holder exits however it
exits, so a killed run never leaves a stale lock. The file is removed when the run ends (and the
directory too, when the run created it and wrote nothing else into it).
"""

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator

from octo_like.utils.errors import InputError

LOCK_FILE = "run.lock"


def _holder(path: str) -> str:
    try:
        with open(path) as file:
            holder = json.load(file)
        return f"pid {holder['pid']} on host {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"


def _open_locked(path: str) -> int:
    """A descriptor of `path` holding its exclusive lock, or an InputError naming the holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(
                f"run directory '{os.path.dirname(path)}' is in use by another training run ({_holder(path)}); "
                "expected one writer per run directory: wait for it or set another --config.run_dir"
            ) from None
        # The previous holder may have removed the file between our open and our lock: then the
        # lock is on a file nobody else will open, so try again with the new one.
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def hold_run_lock(run_dir: str, active: bool = True) -> Iterator[None]:
    """Holds the run directory's lock for the `with` block (`active=False`: does nothing, for the
    processes other than the first of a multi-host run). Creates the directory; one that cannot be
    created or written is one line."""
    if not active:
        yield
        return
    created = not os.path.exists(run_dir)
    path = os.path.join(run_dir, LOCK_FILE)
    try:
        os.makedirs(run_dir, exist_ok=True)
        fd = _open_locked(path)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
    except OSError as error:
        raise InputError(
            f"cannot write the run directory '{run_dir}': {error.strerror or error}; "
            "expected a writable directory (--config.run_dir)"
        ) from None
    try:
        yield
    finally:
        # Unlinked before the lock is released: a process that opened the old file retries (above).
        os.unlink(path)
        os.close(fd)
        if created and not os.listdir(run_dir):
            os.rmdir(run_dir)
