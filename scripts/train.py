"""Trains a policy from an experiment config.

    python scripts/train.py --config experiments/configs/metaworld_scratch.py:diffusion \
        [--config.run_dir=runs/NAME] [--config.num_steps=3000] [--config.dataset.batch_size=64]

Writes the run directory (the release format that `PolicyModel.load_pretrained`, finetuning and
`scripts/evaluate.py --policy=checkpoint` read): config.json, dataset_statistics.json,
example_batch.msgpack, orbax steps <step>/{params,state}, metrics.jsonl (train and val metrics per
logged step), tensorboard/ and loss.png. Training resumes from the latest step of an existing
run directory with the same config. From Python: `octo_like.train.loop.run_training(config)`.
"""

from ml_collections import config_flags

from octo_like.utils.cli import run_config_cli
from octo_like.utils.errors import InputError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config: path.py[:variant].", lock_config=True)


def main(argv):
    if len(argv) > 1:
        raise InputError(f"unexpected arguments {argv[1:]}; only flags are accepted")
    if _CONFIG.value is None:
        raise InputError("--config is required, e.g. --config experiments/configs/metaworld_scratch.py:diffusion")
    # The data pipeline imports TensorFlow (seconds): only after the flags are checked, so a bad flag fails at once.
    from octo_like.train.loop import run_training

    run_training(_CONFIG.value.to_dict())


if __name__ == "__main__":
    run_config_cli(main)
