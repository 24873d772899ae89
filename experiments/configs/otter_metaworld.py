"""OTTER-style policy on Meta-World: frozen CLIP, visual tokens selected by the instruction.

    python -m data_pipelines.metaworld.build --name quickstart --tasks reach,drawer-open,button-press-topdown \
        --episodes_per_task 6 --image_size 64
    python scripts/train.py --config experiments/configs/otter_metaworld.py:text_aware \
        --config.dataset.mixture=metaworld/quickstart --config.run_dir=runs/otter_text_aware
    python scripts/evaluate.py --policy=checkpoint --checkpoint=runs/otter_text_aware \
        --tasks=reach,drawer-open,button-press-topdown --episodes=20 --image_size=64

With real CLIP weights (a directory written by transformers' `CLIPModel.save_pretrained`, e.g. a
local copy of openai/clip-vit-base-patch16) and images at its resolution:

    python scripts/train.py --config experiments/configs/otter_metaworld.py:text_aware \
        --config.clip_checkpoint=/path/to/local/clip \
        --config.dataset.frame_transform_kwargs.resize_size.primary=224,224 \
        --config.dataset.frame_transform_kwargs.resize_size.wrist=224,224 ...

The checkpoint sets the CLIP architecture and weights and its tokenizer.json tokenizes the
instructions (data pipeline and inference alike). Without one, CLIP is the randomly initialized,
CPU-sized `tiny` (CLIP_SIZES; 64x64 images in 8x8 patches) with the MiniLM tokenizer's ids: a
frozen random CLIP gives random (but fixed) features, so that run tests the machinery, not
OTTER's claim that pretrained text-aligned features generalize.

Variant: `text_aware` (default) or `pooled` (the ablation: one token per image, CLIP's pooled image
embedding, no instruction-driven selection), optionally followed by the action head:
`text_aware,l1` (OTTER regresses with L1; default `flow`).

Model: per step, K=8 text-aware tokens per camera (primary and wrist, both 64x64) and the proprio
as one token; the instruction's CLIP text tokens as task tokens; a causal window of 2 steps (OTTER
uses 12; CPU-sized here), one readout token, a 4-action chunk. CLIP is frozen (`clip/*`).
"""

import os

import ml_collections
from ml_collections import config_dict

from octo_like.model.heads import HEADS, head_spec
from octo_like.model.scratch.observation_tokenizers import ProprioTokenizer
from octo_like.model.scratch.text_aware import SELECTIONS, TextAwareImageTokenizer
from octo_like.model.scratch.transformer import TRANSFORMER_SIZES
from octo_like.train.run_config import training_run_config
from octo_like.utils import spec
from octo_like.utils.config import load_config
from octo_like.utils.errors import InputError

ACTION_DIM = 4  # Meta-World: end-effector delta xyz and gripper
CAMERAS = ("primary", "wrist")
IMAGE_SIZE = (64, 64)  # the `tiny` CLIP's; a checkpoint's own size with --config.clip_checkpoint


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    selection, _, head = (variant or "text_aware").partition(",")
    head = head or "flow"
    if selection not in SELECTIONS:
        raise InputError(
            f"unknown selection '{selection}' in variant '{variant}'; expected one of {', '.join(SELECTIONS)}"
        )
    if head not in HEADS:
        raise InputError(f"unknown head '{head}' in variant '{variant}'; expected one of {', '.join(HEADS)}")
    config = training_run_config(run_dir=f"runs/otter_{selection}_{head}", num_steps=1500)
    # One reference, three readers: the model's CLIP, its inference tokenizer and the data pipeline's.
    config.clip_checkpoint = config_dict.placeholder(str)
    clip_checkpoint = config.get_ref("clip_checkpoint")
    # metaworld_scratch.py's data (same demonstrations, chunks and augmentation), every camera at
    # the CLIP's resolution, instructions tokenized by the CLIP checkpoint's tokenizer when one is given.
    config.dataset = load_config(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "metaworld_scratch.py")
    ).dataset
    config.dataset.frame_transform_kwargs.resize_size = {camera: IMAGE_SIZE for camera in CAMERAS}
    text_tokenizer = config.dataset.traj_transform_kwargs.text_tokenizer.kwargs
    text_tokenizer.tokenizer_json = clip_checkpoint
    config.model = ml_collections.ConfigDict(
        dict(
            observation_tokenizers={
                camera: spec.create(
                    TextAwareImageTokenizer, camera=camera, num_tokens=8, width=128, num_heads=4, selection=selection
                )
                for camera in CAMERAS
            }
            | {"proprio": spec.create(ProprioTokenizer, mode="linear")},
            task_tokenizers={},
            language=dict(encoder="clip", max_length=text_tokenizer.max_length, tokenizer_json=clip_checkpoint),
            clip=dict(checkpoint=clip_checkpoint, size="tiny"),
            readouts={"action": 1},
            transformer=dict(
                size="tiny", **TRANSFORMER_SIZES["tiny"], dropout_rate=0.0, remat=False, scan_layers=False
            ),
            heads={"action": head_spec(head, action_dim=ACTION_DIM)},  # chunks of the data's action_horizon
        )
    )
    config.optimizer = dict(
        learning_rate=3e-4,
        warmup_steps=200,
        decay="cosine",
        final_lr_fraction=0.05,
        weight_decay=0.01,
        clip_gradient=1.0,
        frozen_keys=("clip/*",),
    )
    return config
