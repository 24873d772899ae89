"""Runs independent jobs in worker processes with a progress bar (Meta-World collection, evaluation)."""

import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any

import tqdm


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
    with tqdm.tqdm(total=done_before + len(jobs), initial=done_before, desc=desc, unit=unit,
                   disable=not show_progress) as progress:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
            futures = [pool.submit(run_batch, batch) for batch in batches]
            try:
                for future in concurrent.futures.as_completed(futures):
                    results.extend(future.result())
                    progress.update(len(future.result()))
            except BaseException:
                # A failed job (or Ctrl-C) ends the run: drop the batches not started yet.
                for future in futures:
                    future.cancel()
                raise
    return results


def run_in_spawned_process(function: Callable, *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` in a fresh spawned process (to render where TensorFlow may be loaded)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(function, *args, **kwargs).result()
