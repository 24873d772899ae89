"""Finetunes a released policy on a new config (new data, action space, head, cameras or language).

    python scripts/finetune.py --pretrained=runs/metaworld_diffusion_tiny \
        --config experiments/configs/metaworld_scratch.py:l1 --config.run_dir=runs/finetune_l1 \
        [--mode=full|head_only|head_mlp_only] [--pretrained_step=N]

The model is built from the new config; every parameter whose path and shape match the
pretrained release is loaded from it, the rest keep their fresh initialization, and pretrained
parameters the new model has no place for are dropped. The three groups are printed. Modes:
`full` trains everything (the frozen language encoder excepted); `head_only` trains the action
heads and the readout tokens; `head_mlp_only` trains the action heads only. Writes a run directory
like scripts/train.py (octo_like.train.loop.run_finetuning).
"""

from absl import flags
from ml_collections import config_flags

from octo_like.train.loop import TRAINABLE_KEYS, run_finetuning
from octo_like.utils.cli import run_config_cli
from octo_like.utils.errors import InputError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config of the finetuning run.", lock_config=True)
_PRETRAINED = flags.DEFINE_string("pretrained", None, "Run directory of the pretrained release.")
_PRETRAINED_STEP = flags.DEFINE_integer("pretrained_step", None, "Checkpoint step to load (default: the latest).")
_MODE = flags.DEFINE_enum("mode", "full", list(TRAINABLE_KEYS), "Which parameters train.")


def main(argv):
    if len(argv) > 1:
        raise InputError(f"unexpected arguments {argv[1:]}; only flags are accepted")
    if _CONFIG.value is None or _PRETRAINED.value is None:
        raise InputError("--pretrained=RUN_DIR and --config=path.py[:variant] are required")
    run_finetuning(_CONFIG.value.to_dict(), _PRETRAINED.value, _PRETRAINED_STEP.value, _MODE.value)


if __name__ == "__main__":
    run_config_cli(main)
