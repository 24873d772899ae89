"""Multi-process (multi-host) start-up from the `distributed` section of a config.

    distributed:
      coordinator_address: None   "host:port" of process 0, the same in every process; None: one
                                  process, unless `auto`
      num_processes: None         with coordinator_address: how many processes take part
      process_id: None            with coordinator_address: this process's index, 0 .. num_processes-1
      auto: False                 True: JAX finds all three itself (Cloud TPU pods, SLURM, Open MPI,
                                  Kubernetes)

After `initialize`, `jax.devices()` lists the devices of every process, a mesh spans them all, and
each process feeds only its own devices: it reads shard `jax.process_index()` of the data with
`jax.process_count()` shards and a `batch_size / process_count` local batch (see `local_batch_size`).
"""

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

from octo_like.utils.errors import InputError


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> None:
    """`jax.distributed.initialize` when the settings ask for more than one process; must run
    before the first JAX computation of the process. Does nothing for a single process."""
    if coordinator_address is None and not auto:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise InputError(
                f"distributed.num_processes={num_processes} / process_id={process_id} need "
                "distributed.coordinator_address='host:port' (or distributed.auto=True)"
            )
        return
    if coordinator_address is not None:
        if not isinstance(coordinator_address, str) or not coordinator_address.rpartition(":")[2].isdigit():
            raise InputError(f"distributed.coordinator_address={coordinator_address!r}: expected 'host:port'")
        if not isinstance(num_processes, int) or num_processes < 1:
            raise InputError(
                f"distributed.num_processes={num_processes!r}: expected a positive integer with a coordinator_address"
            )
        if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
            raise InputError(
                f"distributed.process_id={process_id!r}: expected an integer in [0, num_processes={num_processes})"
            )
    if jax.distributed.is_initialized():
        return
    # Cross-process collectives of the CPU backend (tests, CPU clusters); GPUs and TPUs use their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )


def is_primary() -> bool:
    """Process 0 writes what exists once per run (metadata, metrics, plots) and prints progress."""
    return jax.process_index() == 0


def raise_everywhere(primary_error: Exception | None) -> None:
    """Raises in every process when process 0 met `primary_error` (e.g. its run directory is
    locked): the others would otherwise go on to the first collective and wait there for it."""
    failed = primary_error is not None
    if jax.process_count() > 1:
        failed = bool(multihost_utils.broadcast_one_to_all(np.int32(failed)))
    if primary_error is not None:
        raise primary_error
    if failed:
        raise InputError("process 0 stopped before training (its error names the cause); stopping this process too")


def local_batch_size(global_batch_size: int) -> int:
    """This process's part of the global batch."""
    if global_batch_size % jax.process_count():
        raise InputError(
            f"batch_size={global_batch_size} (the global batch) is not divisible by the {jax.process_count()} processes"
        )
    return global_batch_size // jax.process_count()


class PreemptionNotice:
    """Whether a SIGTERM (the preemption notice of TPU and cluster schedulers) asked the run to stop.

    One process: a signal handler sets a flag, and the loop finishes its step, saves and stops.
    Several processes: the notice may reach one process only, and all must save the same step,
    so JAX's preemption sync service (which catches SIGTERM itself) agrees on the step to stop at;
    `reached(step)` must then be called at every step by every process.
    """

    def __enter__(self) -> "PreemptionNotice":
        self._event = threading.Event()
        self._previous_handler = None
        if jax.process_count() == 1:
            self._previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: self._event.set())
        return self

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._event.is_set()

    def __exit__(self, *exc_info) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
