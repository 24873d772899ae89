"""Worker processes never outlive their parent: killed, interrupted (Ctrl-C), or one spawned process.

Each test starts tests/parallel_jobs.py as the parent in its own process group, waits until its
workers have started their never-ending jobs, stops the parent, and checks that no worker is left.
The group is killed at the end whatever happens, so a failing test leaves no process behind.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")

PARENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parallel_jobs.py")
STARTUP_TIMEOUT_S = 60
EXIT_TIMEOUT_S = 10


def is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            state = file.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    # A killed worker re-parented to an init that does not reap it stays a zombie: it is gone.
    return state != "Z"


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def running_parent(tmp_path, mode: str, num_workers: int):
    """Yields (parent Popen, worker pids) once `num_workers` workers are inside their jobs."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    with open(tmp_path / "stderr", "w") as stderr:
        parent = subprocess.Popen(
            [sys.executable, PARENT, mode, str(pid_dir)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        assert wait_until(lambda: len(os.listdir(pid_dir)) >= num_workers, STARTUP_TIMEOUT_S), (
            f"{len(os.listdir(pid_dir))} of {num_workers} workers started; stderr: {(tmp_path / 'stderr').read_text()}"
        )
        yield parent, [int(name) for name in os.listdir(pid_dir)]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)  # workers stay in the parent's group
        parent.wait()


def assert_all_exit(pids: list[int]) -> None:
    assert wait_until(lambda: not any(map(is_running, pids)), EXIT_TIMEOUT_S), (
        f"still running {EXIT_TIMEOUT_S} s after their parent ended: {[pid for pid in pids if is_running(pid)]}"
    )


def test_pool_workers_exit_when_the_parent_is_killed(tmp_path):
    with running_parent(tmp_path, "map", num_workers=2) as (parent, workers):
        parent.kill()
        parent.wait()
        assert_all_exit(workers)


def test_ctrl_c_stops_the_pool_with_one_line(tmp_path):
    with running_parent(tmp_path, "map", num_workers=2) as (parent, workers):
        os.killpg(parent.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        assert parent.wait(timeout=EXIT_TIMEOUT_S) == 130
        assert_all_exit(workers)
        # No traceback from the parent nor from any worker: the one line run_cli prints.
        assert (tmp_path / "stderr").read_text() == "interrupted\n"


def test_spawned_process_exits_when_the_parent_is_killed(tmp_path):
    with running_parent(tmp_path, "spawned", num_workers=1) as (parent, workers):
        parent.kill()
        parent.wait()
        assert_all_exit(workers)
