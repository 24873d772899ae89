"""Prints what a config's data pipeline produces: datasets, statistics, one batch, throughput.

    python scripts/inspect_data.py --config experiments/configs/synthetic.py:default [--seconds 3]

Reads the datasets of the config's `dataset` section (computing and caching their statistics on
first use, next to each dataset), then prints a summary of each dataset, the structure of one
training batch (key, shape, dtype) and the pipeline throughput as JSON (see `bench.py data`).
"""

import json

import numpy as np
from absl import flags
from ml_collections import config_flags

from octo_like.utils.cli import run_config_cli
from octo_like.utils.errors import InputError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config: path.py[:variant].", lock_config=True)
_SECONDS = flags.DEFINE_float("seconds", 3.0, "Measuring time per throughput figure.")


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        flat.update(_flatten(value, path + "/") if isinstance(value, dict) else {path: value})
    return flat


def describe_statistics(name: str, statistics: dict) -> str:
    lines = [
        f"dataset {name}: {statistics['num_trajectories']} trajectories, {statistics['num_transitions']} transitions"
    ]
    for key in ("action", "proprio"):
        stats = {name: np.asarray(value, np.float64) for name, value in statistics[key].items()}
        lines.append(
            f"  {key} ({len(stats['mean'])}-d): mean {np.round(stats['mean'], 3).tolist()} std "
            f"{np.round(stats['std'], 3).tolist()}"
        )
    return "\n".join(lines)


def describe_batch(batch: dict) -> str:
    lines = ["one training batch:"]
    for path, value in _flatten(batch).items():
        lines.append(f"  {path:48s} {str(value.dtype):8s} {list(value.shape)}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise InputError(f"unexpected arguments {argv[1:]}; only flags are accepted")
    if _CONFIG.value is None:
        raise InputError("--config is required, e.g. --config experiments/configs/synthetic.py:default")
    # The data pipeline imports TensorFlow (seconds): only after the flags are checked, so a bad flag fails at once.
    from octo_like.data.mixtures import make_named_mixture
    from octo_like.data.throughput import data_throughput

    dataset_config = _CONFIG.value.dataset.to_dict()
    dataset, statistics = make_named_mixture(train=True, **dataset_config)
    for name, stats in statistics.items():
        print(describe_statistics(name, stats))
    print(describe_batch(next(dataset.iterator())))
    print("pipeline throughput:")
    print(json.dumps(data_throughput(dataset_config, _SECONDS.value), indent=2))


if __name__ == "__main__":
    run_config_cli(main)
