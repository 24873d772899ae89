"""Benchmarks, printed as JSON.

    python scripts/bench.py data --config experiments/configs/synthetic.py:default [--seconds 10]

`data`: throughput of the data pipeline of a config's `dataset` section: trajectories/s (read,
restructure, normalize, chunk), frames/s (plus decode, resize, augment) and batches/s (the full
pipeline, shuffle and batch included), each with all parallelism on and with one thread per stage,
and their ratio side by side.
"""

import json
import os

from absl import flags
from ml_collections import config_flags

import cli_common  # (puts the repo root on sys.path)
from octo_like.data.throughput import data_throughput
from octo_like.utils.errors import InputError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config: path.py[:variant].", lock_config=True)
_SECONDS = flags.DEFINE_float("seconds", 5.0, "Measuring time per figure, after warm-up.")
BENCHMARKS = ("data",)


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
