"""Benchmarks, printed as JSON.

    python scripts/bench.py data --config experiments/configs/synthetic.py:default [--seconds 10]

`data`: throughput of the data pipeline of a config's `dataset` section: trajectories/s (read,
restructure, normalize, chunk), frames/s (plus decode, resize, augment) and batches/s (the full
pipeline, shuffle and batch included), each with all parallelism on and with one thread per stage,
and their ratio side by side.
"""

import json
import os
import time
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import cli_common  # noqa: E402  (puts the repo root on sys.path)
from octo_like.data.dlataset import AUTOTUNE  # noqa: E402
from octo_like.data.frame_transforms import apply_frame_transforms  # noqa: E402
from octo_like.data.mixtures import make_dataset_kwargs_list, make_named_mixture  # noqa: E402
from octo_like.data.rlds import make_dataset_from_rlds  # noqa: E402
from octo_like.data.traj_transforms import apply_trajectory_transforms  # noqa: E402
from octo_like.utils.errors import InputError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config: path.py[:variant].", lock_config=True)
_SECONDS = flags.DEFINE_float("seconds", 5.0, "Measuring time per figure, after warm-up.")
BENCHMARKS = ("data",)


def _rate(iterator: Iterator, seconds: float, warmup: int = 3) -> float:
    """Elements per second drawn from `iterator` over about `seconds`, after `warmup` elements."""
    for _ in range(warmup):
        next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += 1
    return count / (time.perf_counter() - start)


def data_throughput(dataset_config: dict, seconds: float, *, serial: bool = False) -> dict[str, float]:
    """trajectories/s, frames/s and batches/s of the training pipeline of a `dataset` config section.

    With `serial`, every stage runs on one thread (reads, trajectory and frame transforms).
    """
    threads = 1 if serial else AUTOTUNE
    config = dict(dataset_config)
    if serial:
        config.update(traj_transform_threads=1, traj_read_threads=1)
        config["frame_transform_kwargs"] = {**config["frame_transform_kwargs"], "num_parallel_calls": 1}
    batches, statistics = make_named_mixture(train=True, **config)

    # Trajectory and frame rates on the mixture's first dataset, read as in training.
    kwargs_list, _ = make_dataset_kwargs_list(config["mixture"], config["data_dir"], **config["dataset_kwargs"])
    first = kwargs_list[0]
    trajectories, _ = make_dataset_from_rlds(
        **first, train=True, dataset_statistics=statistics[first["name"]],
        num_parallel_reads=threads, num_parallel_calls=threads,
    )
    trajectories = apply_trajectory_transforms(
        trajectories.repeat(), train=True, num_parallel_calls=threads, **config["traj_transform_kwargs"]
    )
    frames = apply_frame_transforms(
        trajectories.flatten(num_parallel_calls=threads), train=True,
        **{"num_parallel_calls": threads, **config["frame_transform_kwargs"]},
    )
    return {
        "trajectories_per_s": _rate(trajectories.iterator(), seconds),
        "frames_per_s": _rate(frames.iterator(), seconds),
        "batches_per_s": _rate(batches.iterator(), seconds),
    }


def bench_data(config, seconds: float) -> dict:
    dataset_config = config.dataset.to_dict()
    parallel = data_throughput(dataset_config, seconds)
    serial = data_throughput(dataset_config, seconds, serial=True)
    return {
        "benchmark": "data",
        "mixture": dataset_config["mixture"],
        "batch_size": dataset_config["batch_size"],
        "cpu_count": os.cpu_count(),
        "parallel": parallel,
        "serial": serial,
        "parallel_over_serial": {key: parallel[key] / serial[key] for key in parallel},
        "frames_per_s_in_batches": parallel["batches_per_s"] * dataset_config["batch_size"],
    }


def main(argv):
    if len(argv) != 2 or argv[1] not in BENCHMARKS:
        raise InputError(f"expected one benchmark name, one of: {', '.join(BENCHMARKS)}; got {argv[1:]}")
    if _CONFIG.value is None:
        raise InputError("--config is required, e.g. --config experiments/configs/synthetic.py:default")
    result = bench_data(_CONFIG.value, _SECONDS.value)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    cli_common.run(main)
