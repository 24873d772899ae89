#!/usr/bin/env bash
# One command on a fresh machine: set up .venv, build the embedded synthetic RLDS dataset into
# data/tensorflow_datasets (skipped when built), and run the main job on it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
data_dir=${OCTO_LIKE_DATA_DIR:-data/tensorflow_datasets}
.venv/bin/python -m data_pipelines.synthetic.build --data_dir "$data_dir"
.venv/bin/python scripts/inspect_data.py --config experiments/configs/synthetic.py:default \
  --config.dataset.data_dir="$data_dir" "$@"
