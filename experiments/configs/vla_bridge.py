"""Dual-system bridges: the backbone read once per chunk conditions a separate action policy.

    python -m data_pipelines.metaworld.build --name quickstart --tasks reach,drawer-open,button-press-topdown \
        --episodes_per_task 6 --image_size 64
    python scripts/train.py --config experiments/configs/vla_bridge.py:token --config.run_dir=runs/vla_bridge_token
    python scripts/train.py --config experiments/configs/vla_bridge.py:cross,layers=2 --config.run_dir=runs/vla_cross
    python scripts/evaluate.py --policy=checkpoint --checkpoint=runs/vla_bridge_token \
        --tasks=reach,drawer-open,button-press-topdown --episodes=20 --image_size=64

Variant: the bridge, then options:
- `token` (CogACT): a learned <ACT> token after the prefix and the proprio token; its last hidden
  state conditions a diffusion head (the from-scratch DDPM head, 20 steps);
- `pool` (DexVLA): the prefix and proprio token's hidden states, mean-pooled (`pooling=max` or
  `pooling=attention`: a learned query per head), condition a flow-matching head (10 Euler steps);
- `cross` (SmolVLA, GR00T N1): a width-64 action expert whose layers alternate cross-attention to
  the backbone's states and self-attention over the proprio and noisy-action tokens, flow matching;
- `layers=N`: the backbone runs (and trains) only its first N layers (layer skipping), any bridge;
- `head=diffusion|flow|l1`: the head of `token` or `pool`;
- `lora`, `pod`: as vla_tokens.py (`cross,pod` gets pi0's width-1024 expert).
E.g. `token`, `pool,pooling=attention`, `cross,layers=2`, `token,head=flow,pod`.

The backbone runs once per chunk; the head's (or expert's) denoising steps read its cached output.
Actions and proprio are normalized to mean 0, std 1.
"""

import os

import ml_collections

from octo_like.utils.config import load_config_module
from octo_like.utils.errors import InputError

BRIDGES = {"token": "token_bridge", "pool": "pool_bridge", "cross": "cross_bridge"}
HEAD_BRIDGES = ("token", "pool")


def parse_settings(bridge: str, options: list[str]) -> tuple[dict, list[str]]:
    """(model.vla.action settings from the `key=value` options, the plain options left)."""
    action, plain = {}, []
    for option in options:
        key, _, value = option.partition("=")
        if not value:
            plain.append(option)
        elif key == "layers" and value.isdigit():
            action["backbone_layers"] = int(value)
        elif key == "pooling" and bridge == "pool":
            action["pooling"] = value
        elif key == "head" and bridge in HEAD_BRIDGES:
            action["head"] = {"name": value}
        else:
            raise InputError(
                f"option '{option}' of the {bridge} bridge; expected layers=N"
                + (", head=NAME" if bridge in HEAD_BRIDGES else "")
                + (", pooling=mean|max|attention" if bridge == "pool" else "")
            )
    return action, plain


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    bridge, *options = (variant or "token").split(",")
    if bridge not in BRIDGES:
        raise InputError(f"unknown bridge '{bridge}' in variant '{variant}'; expected one of {', '.join(BRIDGES)}")
    action, plain = parse_settings(bridge, options)
    vla_tokens = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "vla_tokens.py"))
    run_name = "_".join(["vla_bridge", bridge, *(option.replace("=", "") for option in options)])
    return vla_tokens.vla_config(BRIDGES[bridge], plain, run_name=run_name, action_settings=action)
