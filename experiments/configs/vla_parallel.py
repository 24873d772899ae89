"""Parallel decoding (OpenVLA-OFT): the whole chunk from one forward pass of the backbone.

    python -m data_pipelines.metaworld.build --name quickstart --tasks reach,drawer-open,button-press-topdown \
        --episodes_per_task 6 --image_size 64
    python scripts/train.py --config experiments/configs/vla_parallel.py:l1 --config.run_dir=runs/vla_parallel_l1
    python scripts/evaluate.py --policy=checkpoint --checkpoint=runs/vla_parallel_l1 \
        --tasks=reach,drawer-open,button-press-topdown --episodes=20 --image_size=64

Variant: `l1` (default) or `bins`, then optionally `lora` and/or `pod` (as vla_tokens.py).

Model: vla_tokens.py's prefix and proprio token, then H * A = 16 learned empty action slots that
attend the prefix and each other (the prefix never attends them). `l1`: the from-scratch L1 head
regresses the chunk from the slots' last hidden states (OFT's continuous actions); `bins`: slot i's
logits over the 256 bin ids of the vocabulary are action entry i (OFT's parallel decoding of
OpenVLA's bins; the bins model's vocabulary, targets and cross-entropy). Actions are normalized to
their bounds, as OpenVLA-OFT does.
"""

import os

import ml_collections

from octo_like.utils.config import load_config_module
from octo_like.utils.errors import InputError

LOSSES = {"l1": "parallel_l1", "bins": "parallel_bins"}


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    loss, *options = (variant or "l1").split(",")
    if loss not in LOSSES:
        raise InputError(f"unknown parallel decoding '{loss}' in variant '{variant}'; expected one of l1, bins")
    vla_tokens = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "vla_tokens.py"))
    return vla_tokens.vla_config(LOSSES[loss], options, run_name="_".join(["vla_parallel", loss, *options]))
