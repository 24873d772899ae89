"""A VLM-initialized policy with discrete action tokens (RT-2 / OpenVLA bins, or FAST) on Meta-World.

    python -m data_pipelines.metaworld.build --name quickstart --tasks reach,drawer-open,button-press-topdown \
        --episodes_per_task 6 --image_size 64
    python scripts/train.py --config experiments/configs/vla_tokens.py:bins --config.run_dir=runs/vla_bins
    python scripts/evaluate.py --policy=checkpoint --checkpoint=runs/vla_bins \
        --tasks=reach,drawer-open,button-press-topdown --episodes=20 --image_size=64

FAST needs its tokenizer fit on the same data first (it writes tokenizer.json and fast.json):

    python scripts/fit_fast.py --config experiments/configs/vla_tokens.py:fast --output_dir runs/fast_quickstart
    python scripts/train.py --config experiments/configs/vla_tokens.py:fast \
        --config.model.vla.action.fast_tokenizer=runs/fast_quickstart --config.run_dir=runs/vla_fast

From a PaliGemma checkpoint (a directory written by transformers' PaliGemmaForConditionalGeneration
`save_pretrained`, with its tokenizer.json) and images at its resolution:

    python scripts/train.py --config experiments/configs/vla_tokens.py:bins \
        --config.backbone_checkpoint=/path/to/paligemma-3b-pt-224 \
        --config.dataset.frame_transform_kwargs.resize_size.primary=224,224 \
        --config.dataset.frame_transform_kwargs.resize_size.wrist=224,224 ...

Variant: `bins` (default) or `fast`, then optionally `lora` (rank-16 LoRA on the backbone's
attention and MLP, base frozen) and/or `pod` (the 3B backbone, 224x224 cameras, FSDP over every
device, bf16 compute, multi-host auto-detection): `bins,lora`, `fast,pod`, `bins,lora,pod`.

Model: both cameras (64x64, 16 SigLIP patches each) of the current step, the instruction
(tokenized by the MiniLM tokenizer without a checkpoint: the tiny backbone's vocabulary holds its
ids), the proprio as one token, and a 4-action chunk as 16 bin tokens (or FAST tokens, up to 32).
Bins cover [-1, 1], so actions are normalized to their bounds. Training: AdamW 1e-4, warm-up,
cosine decay, clipping at 1; the whole backbone trains (or, with LoRA, only the factors and the
new projections).
"""

import os

import ml_collections
from ml_collections import config_dict

from octo_like.train.mesh import VLA_FSDP_RULES
from octo_like.train.run_config import training_run_config
from octo_like.utils.config import load_config
from octo_like.utils.errors import InputError

ACTION_DIM = 4  # Meta-World: end-effector delta xyz and gripper
CAMERAS = ("primary", "wrist")
KINDS = ("bins", "fast")
OPTIONS = ("lora", "pod")
# Kinds that read actions normalized to their bounds: bins cover [-1, 1], and OpenVLA-OFT's L1
# regression keeps OpenVLA's normalization; the generative heads read mean 0, std 1.
BOUNDS_KINDS = ("bins", "fast", "parallel_bins", "parallel_l1")
EXPERT_KINDS = ("flow", "cross_bridge")  # with pod: pi0's width-1024 expert


def vla_config(
    kind: str, options: list[str], run_name: str, allowed=OPTIONS, action_settings=None
) -> ml_collections.ConfigDict:
    """The VLA run for action `kind` (a key of octo_like.model.vla.kinds.VLA_ACTIONS) with `options`
    (any of `allowed`) and extra `model.vla.action` settings; vla_flow.py, vla_parallel.py and
    vla_bridge.py build on it."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InputError(f"unknown option(s) {unknown}; expected any of {', '.join(allowed)}")
    pod = "pod" in options
    config = training_run_config(run_dir=f"runs/{run_name}", num_steps=1500)
    # One reference, read by the backbone, its inference tokenizer and the data pipeline's tokenizer.
    config.backbone_checkpoint = config_dict.placeholder(str)
    checkpoint = config.get_ref("backbone_checkpoint")
    image_size = (224, 224) if pod else (64, 64)
    config.dataset = load_config(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "metaworld_scratch.py")
    ).dataset
    config.dataset.frame_transform_kwargs.resize_size = {camera: image_size for camera in CAMERAS}
    # One step (OpenVLA and pi0 read the current frame); bins need actions in [-1, 1].
    config.dataset.traj_transform_kwargs.window_size = 1
    config.dataset.dataset_kwargs.action_proprio_normalization_type = "bounds" if kind in BOUNDS_KINDS else "normal"
    text_tokenizer = config.dataset.traj_transform_kwargs.text_tokenizer.kwargs
    text_tokenizer.max_length = 24
    text_tokenizer.tokenizer_json = checkpoint
    action = dict(
        kind=kind,
        horizon=config_dict.placeholder(int),  # the data's action_horizon
        action_dim=ACTION_DIM,
        fast_tokenizer=config_dict.placeholder(str),
    )
    if kind in EXPERT_KINDS and pod:
        action["expert"] = dict(hidden_size=1024, intermediate_size=4096)  # pi0's Gemma-300M expert
    action.update(action_settings or {})
    config.model = ml_collections.ConfigDict(
        dict(
            language=dict(encoder="backbone", max_length=text_tokenizer.max_length, tokenizer_json=checkpoint),
            vla=dict(
                backbone=dict(
                    checkpoint=checkpoint, size="3B" if pod else "tiny", config=config_dict.placeholder(dict)
                ),
                action=action,
                lora=dict(rank=16, alpha=16.0) if "lora" in options else config_dict.placeholder(dict),
            ),
        )
    )
    # FSDP along the model width (the rules hold on any mesh; with fsdp=1 everything is replicated).
    config.sharding_rules = VLA_FSDP_RULES
    config.optimizer = dict(
        learning_rate=1e-4,
        warmup_steps=100,
        decay="cosine",
        final_lr_fraction=0.05,
        weight_decay=1e-4,
        clip_gradient=1.0,
    )
    if pod:
        config.num_steps = 30000
        config.log_interval, config.eval_interval, config.save_interval = 100, 2000, 2000
        config.mesh = dict(data=1, fsdp=-1)  # FSDP over every device of every host
        config.compute_dtype = "bfloat16"
        config.distributed.auto = True
        config.dataset.batch_size = 256
    return config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    kind, *options = (variant or "bins").split(",")
    if kind not in KINDS:
        raise InputError(f"unknown action kind '{kind}' in variant '{variant}'; expected one of {', '.join(KINDS)}")
    return vla_config(kind, options, run_name="_".join(["vla", kind, *options]))
