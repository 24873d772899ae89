"""A parent process of worker processes for tests/test_parallel_workers.py (not a test itself).

    python tests/parallel_jobs.py map|spawned PID_DIR

`map` runs 4 never-ending jobs in `map_in_processes` with 2 workers, `spawned` one in
`run_in_spawned_process`; each job writes its worker's pid to PID_DIR/<pid> and sleeps. The
command runs through `run_cli`, as the collection and evaluation CLIs do.
"""

import os
import time

from octo_like.utils.cli import run_cli
from octo_like.utils.parallel import map_in_processes, run_in_spawned_process


def write_pid_and_sleep(pid_dir: str) -> None:
    with open(os.path.join(pid_dir, str(os.getpid())), "w"):
        pass
    time.sleep(600)


def sleep_batch(pid_dirs: list[str]) -> list:
    for pid_dir in pid_dirs:
        write_pid_and_sleep(pid_dir)
    return pid_dirs


def main(argv: list[str]) -> None:
    mode, pid_dir = argv[1:]
    if mode == "map":
        map_in_processes(sleep_batch, [pid_dir] * 4, num_workers=2, show_progress=False)
    else:
        run_in_spawned_process(write_pid_and_sleep, pid_dir)


if __name__ == "__main__":
    run_cli(main)
