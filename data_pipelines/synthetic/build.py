"""Builds the synthetic RLDS dataset (both configs) into a TFDS data directory.

    python -m data_pipelines.synthetic.build --data_dir data/tensorflow_datasets

Writes <data_dir>/synthetic_rlds/{default,no_wrist}/1.0.0/ (TFRecord shards, dataset_info.json,
features.json). TFDS writes into a temporary `incomplete.*` directory and renames it when done, so
an interrupted build leaves no half-written version; already-built configs are skipped.
"""

from absl import flags

import octo_like  # noqa: F401  (quiet TensorFlow, set before it is imported)
from data_pipelines.synthetic.builder import build
from octo_like.utils.cli import run_cli
from octo_like.utils.errors import InputError

_DATA_DIR = flags.DEFINE_string("data_dir", "data/tensorflow_datasets", "TFDS data directory to write into.")
_CONFIGS = flags.DEFINE_list("configs", ["default", "no_wrist"], "Builder configs to build.")


def main(argv):
    if len(argv) > 1:
        raise InputError(f"unexpected arguments {argv[1:]}; only flags are accepted")
    for path in build(_DATA_DIR.value, _CONFIGS.value):
        print(f"built {path}")


if __name__ == "__main__":
    run_cli(main)
