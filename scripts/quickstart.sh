#!/usr/bin/env bash
# One command on a fresh machine: set up .venv, build the embedded datasets into
# data/tensorflow_datasets (each skipped once built), and run the main job on them:
#   1. the synthetic RLDS dataset -> its statistics, one training batch and the pipeline throughput;
#   2. a small Meta-World dataset of scripted demonstrations (3 tasks x 10 episodes, 64x64 cameras,
#      executed with action noise 0.1 so that the data holds recoveries);
#   3. the MT10 recipe's policy (experiments/configs/metaworld_mt10.py: flow head, full state,
#      sentence-embedding instruction with FiLM) trained on it on the CPU for a few minutes
#      -> runs/quickstart/policy/ (the release format, metrics.jsonl, loss.png);
#   4. closed-loop evaluation of that policy and of the scripted expert on the three tasks
#      -> runs/quickstart/eval_policy/ and runs/quickstart/eval_scripted/ (results.json,
#      results.md, success_rates.png, episodes.jsonl, videos/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
data_dir=${OCTO_LIKE_DATA_DIR:-data/tensorflow_datasets}
tasks=reach,drawer-open,button-press-topdown
steps=${OCTO_LIKE_QUICKSTART_STEPS:-1000}

.venv/bin/python -m data_pipelines.synthetic.build --data_dir "$data_dir"
.venv/bin/python scripts/inspect_data.py --config experiments/configs/synthetic.py:default \
  --config.dataset.data_dir="$data_dir" --seconds 1 "$@"

.venv/bin/python -m data_pipelines.metaworld.build --data_dir "$data_dir" --name quickstart \
  --tasks "$tasks" --episodes_per_task 10 --image_size 64 --action_noise 0.1

.venv/bin/python scripts/train.py --config experiments/configs/metaworld_mt10.py \
  --config.dataset.mixture=metaworld/quickstart --config.dataset.data_dir="$data_dir" \
  --config.run_dir=runs/quickstart/policy --config.num_steps="$steps" --config.dataset.batch_size=32

.venv/bin/python scripts/evaluate.py --policy=scripted --tasks="$tasks" --episodes=4 \
  --videos_per_task=1 --image_size=64 --output_dir=runs/quickstart/eval_scripted
.venv/bin/python scripts/evaluate.py --policy=checkpoint --checkpoint=runs/quickstart/policy \
  --tasks="$tasks" --episodes=10 --videos_per_task=2 --image_size=64 --output_dir=runs/quickstart/eval_policy

echo "loss plot: runs/quickstart/policy/loss.png"
echo "videos:    runs/quickstart/eval_policy/videos/ (policy), runs/quickstart/eval_scripted/videos/ (expert)"
