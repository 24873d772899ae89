"""Finetunes a released policy on a new config (new data, action space, head, cameras or language).

    python scripts/finetune.py --pretrained=runs/metaworld_diffusion_tiny \
        --config experiments/configs/metaworld_scratch.py:l1 --config.run_dir=runs/finetune_l1 \
        [--mode=full|head_only|head_mlp_only] [--pretrained_step=N]

The model is built from the new config; every parameter whose path and shape match the
pretrained release is loaded from it, the rest keep their fresh initialization, and pretrained
parameters the new model has no place for are dropped. The three groups are printed. Modes:
`full` trains everything (the frozen language encoder excepted); `head_only` trains the action
heads and the readout tokens; `head_mlp_only` trains the action heads only. Writes a run directory
like scripts/train.py.
"""

import os
from collections import Counter

import numpy as np
from absl import flags
from flax.traverse_util import flatten_dict, unflatten_dict
from ml_collections import config_flags

import cli_common  # (puts the repo root on sys.path)
from training_loop import run_training
from octo_like.model.policy import PolicyModel
from octo_like.train.validate import check_training_config
from octo_like.utils.errors import InputError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config of the finetuning run.", lock_config=True)
_PRETRAINED = flags.DEFINE_string("pretrained", None, "Run directory of the pretrained release.")
_PRETRAINED_STEP = flags.DEFINE_integer("pretrained_step", None, "Checkpoint step to load (default: the latest).")
_MODE = flags.DEFINE_enum("mode", "full", ["full", "head_only", "head_mlp_only"], "Which parameters train.")

TRAINABLE_KEYS = {
    "full": None,
    "head_only": ("head_modules_*", "block_transformer/readout_*"),
    "head_mlp_only": ("head_modules_*",),
}


def merge_pretrained(fresh: dict, pretrained: dict) -> tuple[dict, dict[str, list[str]]]:
    """Fresh parameters with every (path, shape) match taken from `pretrained`; and the report."""
    fresh_flat, pretrained_flat = flatten_dict(fresh, sep="/"), flatten_dict(pretrained, sep="/")
    report = {"loaded": [], "new": [], "dropped": sorted(set(pretrained_flat) - set(fresh_flat))}
    merged = {}
    for path, value in fresh_flat.items():
        match = path in pretrained_flat and np.shape(pretrained_flat[path]) == np.shape(value)
        merged[path] = pretrained_flat[path] if match else value
        report["loaded" if match else "new"].append(path)
    return unflatten_dict(merged, sep="/"), report


def summarize(paths: list[str]) -> str:
    """Parameter paths counted by their top-level module."""
    counts = Counter(path.split("/")[0] for path in paths)
    return ", ".join(f"{module} ({count})" for module, count in sorted(counts.items())) or "none"


def main(argv):
    if len(argv) > 1:
        raise InputError(f"unexpected arguments {argv[1:]}; only flags are accepted")
    if _CONFIG.value is None or _PRETRAINED.value is None:
        raise InputError("--pretrained=RUN_DIR and --config=path.py[:variant] are required")
    if not os.path.isdir(_PRETRAINED.value):
        raise InputError(f"--pretrained '{_PRETRAINED.value}' is not a directory; expected a released run directory")
    config = _CONFIG.value.to_dict()
    check_training_config(config)  # before the release is loaded
    pretrained = PolicyModel.load_pretrained(_PRETRAINED.value, step=_PRETRAINED_STEP.value)
    if TRAINABLE_KEYS[_MODE.value] is not None:
        config["optimizer"]["trainable_keys"] = TRAINABLE_KEYS[_MODE.value]
    config["finetuned_from"] = {"run_dir": os.path.abspath(_PRETRAINED.value), "step": _PRETRAINED_STEP.value, "mode": _MODE.value}

    def init_params(model: PolicyModel) -> dict:
        params, report = merge_pretrained(model.params, pretrained.params)
        for group in ("loaded", "new", "dropped"):
            print(f"{group}: {len(report[group])} arrays: {summarize(report[group])}")
        return params

    run_training(config, init_params=init_params)


if __name__ == "__main__":
    cli_common.run(main)
