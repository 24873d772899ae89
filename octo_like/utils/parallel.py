"""Runs independent jobs in worker processes with a progress bar (Meta-World collection, evaluation).

Workers never outlive the process that started them: they exit when it dies, even by SIGKILL
(which runs no cleanup in it), and it kills them when it stops waiting for them (a failed job,
Ctrl-C).
"""

import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import tqdm

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
ORPHAN_POLL_INTERVAL_S = 1.0


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(ORPHAN_POLL_INTERVAL_S)
    os._exit(1)


def die_with_parent(parent_pid: int) -> None:
    """In a worker or child process: exit when `parent_pid` dies, and leave Ctrl-C to the parent."""
    # Ctrl-C in a terminal reaches the whole process group; the parent stops the workers, and a
    # worker's own KeyboardInterrupt would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        # The kernel sends the signal when the *thread* that spawned this process ends. Spawned
        # workers are started by `pool.submit`, i.e. by the thread that called map_in_processes
        # (or run_in_spawned_process), which waits in it until the pool is shut down.
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    # The portable guard (and a second one on Linux): once orphaned, a process is re-parented.
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()


@contextlib.contextmanager
def _spawned_pool(num_workers: int) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    pool = concurrent.futures.ProcessPoolExecutor(
        num_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )
    try:
        yield pool
    except BaseException:
        # A failed job or Ctrl-C ends the run: kill the workers instead of waiting for the batches
        # they are running (files are written to a temporary path and renamed, so a killed job
        # leaves no half-written result). ProcessPoolExecutor has no public way to do this before
        # Python 3.14 (kill_workers).
        for process in list(pool._processes.values()):
            process.kill()
        raise
    finally:
        pool.shutdown(cancel_futures=True)


def map_in_processes(
    run_batch: Callable[[list], list],
    jobs: Sequence,
    *,
    num_workers: int | None = None,
    desc: str = "",
    unit: str = "job",
    done_before: int = 0,
    show_progress: bool = True,
) -> list[Any]:
    """`run_batch` over small batches of `jobs` in `num_workers` processes; the results, in any order.

    `run_batch` must be an importable module-level function. Consecutive jobs
    share a batch (a few per submission), so a worker that caches per-job-kind state (an
    environment per task) builds little of it, while the progress bar still moves often.
    `done_before` starts the bar at that count.

    Jobs run in spawned processes even with one worker: MuJoCo's EGL rendering (Mesa's llvmpipe)
    crashes in a process that has loaded TensorFlow (both carry LLVM), and the caller (a TFDS
    builder, a notebook kernel) often has; a spawned worker starts clean.
    """
    jobs = list(jobs)
    num_workers = max(1, min(num_workers or os.cpu_count() or 1, len(jobs) or 1))
    batch_size = max(1, min(4, len(jobs) // (4 * num_workers)))
    batches = [jobs[start : start + batch_size] for start in range(0, len(jobs), batch_size)]
    results = []
    with tqdm.tqdm(
        total=done_before + len(jobs), initial=done_before, desc=desc, unit=unit, disable=not show_progress
    ) as progress:
        with _spawned_pool(num_workers) as pool:
            futures = [pool.submit(run_batch, batch) for batch in batches]
            for future in concurrent.futures.as_completed(futures):
                results.extend(future.result())
                progress.update(len(future.result()))
    return results


def run_in_spawned_process(function: Callable, *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` in a fresh spawned process (to render where TensorFlow may be loaded)."""
    with _spawned_pool(1) as pool:
        return pool.submit(function, *args, **kwargs).result()
