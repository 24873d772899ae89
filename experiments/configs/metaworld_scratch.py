"""The from-scratch policy on Meta-World scripted demonstrations (CPU-sized by default).

    python -m data_pipelines.metaworld.build --name quickstart --tasks reach,drawer-open,button-press-topdown \
        --episodes_per_task 6 --image_size 64
    python scripts/train.py --config experiments/configs/metaworld_scratch.py:diffusion \
        --config.dataset.mixture=metaworld/quickstart --config.run_dir=runs/metaworld_diffusion
    python scripts/evaluate.py --policy=checkpoint --checkpoint=runs/metaworld_diffusion \
        --tasks=reach,drawer-open,button-press-topdown --episodes=50 --image_size=64

Variant: the action head, `l1`, `mse`, `discrete`, `diffusion` or `flow` (default `diffusion`),
optionally followed by a model size: `diffusion,small` (tiny, small or base).

Model: one image per camera per step (primary 64x64, wrist 32x32) through small conv stems, the
proprio (hand position and gripper) as one token, the instruction through the frozen MiniLM, a
2-step window, one readout token, and a 4-action chunk. Training: AdamW 3e-4 with warm-up and
cosine decay, gradient clipping at 1.
"""

import ml_collections
from ml_collections import config_dict

from octo_like.model.heads import HEADS, head_spec
from octo_like.model.scratch.observation_tokenizers import ImageTokenizer, ProprioTokenizer
from octo_like.model.scratch.transformer import DEFAULT_TRANSFORMER_SIZE, TRANSFORMER_SIZES
from octo_like.model.vision.stems import TINY_SMALL_STEM_KWARGS
from octo_like.train.run_config import training_run_config
from octo_like.utils import spec
from octo_like.utils.errors import InputError

ACTION_DIM = 4  # Meta-World: end-effector delta xyz and gripper
WINDOW_SIZE = 2
ACTION_HORIZON = 4
IMAGE_SIZES = {"primary": (64, 64), "wrist": (32, 32)}


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    head, _, size = (variant or "diffusion").partition(",")
    size = size or DEFAULT_TRANSFORMER_SIZE
    if head not in HEADS:
        raise InputError(f"unknown head '{head}' in variant '{variant}'; expected one of {', '.join(HEADS)}")
    if size not in TRANSFORMER_SIZES:
        raise InputError(
            f"unknown size '{size}' in variant '{variant}'; expected one of {', '.join(TRANSFORMER_SIZES)}"
        )
    config = training_run_config(run_dir=f"runs/metaworld_{head}_{size}", num_steps=1500)
    # The tiny model gets a narrow stem too: at 64x64 the default stem is most of a CPU step.
    stem_kwargs = TINY_SMALL_STEM_KWARGS if size == "tiny" else {}
    config.model = dict(
        observation_tokenizers={
            camera: spec.create(
                ImageTokenizer, camera=camera, stem="small_stem", stem_kwargs=stem_kwargs, image_size=image_size
            )
            for camera, image_size in IMAGE_SIZES.items()
        }
        | {"proprio": spec.create(ProprioTokenizer, mode="linear")},
        task_tokenizers={},
        language=dict(max_length=16, tokenizer_json=None, checkpoint=None),
        readouts={"action": 1},
        # The size's dimensions written out, so that a flag changes one (--config.model.transformer.num_layers=2).
        transformer=dict(size=size, **TRANSFORMER_SIZES[size], dropout_rate=0.0, remat=False, scan_layers=False),
        heads={"action": head_spec(head, action_dim=ACTION_DIM)},  # chunks of the data's action_horizon
    )
    config.optimizer = dict(
        learning_rate=3e-4,
        warmup_steps=200,
        decay="cosine",
        final_lr_fraction=0.05,
        weight_decay=0.01,
        clip_gradient=1.0,
        frozen_keys=("language_encoder/*",),
    )
    config.dataset = ml_collections.ConfigDict(
        dict(
            mixture="metaworld/quickstart",
            data_dir="data/tensorflow_datasets",
            dataset_kwargs=dict(action_proprio_normalization_type="normal"),
            batch_size=32,
            shuffle_buffer_size=5000,
            balance_weights=False,
            traj_transform_kwargs=dict(
                window_size=WINDOW_SIZE,
                action_horizon=ACTION_HORIZON,
                goal_relabeling_strategy=config_dict.placeholder(str),
                subsample_length=config_dict.placeholder(int),
                max_action=config_dict.placeholder(float),
                text_tokenizer=spec.create("octo_like.data.text_tokenizer:TextTokenizer", max_length=16),
            ),
            frame_transform_kwargs=dict(
                resize_size=IMAGE_SIZES,
                image_augment_kwargs={
                    "primary": dict(
                        random_resized_crop=dict(scale=(0.9, 1.0), ratio=(0.95, 1.05)),
                        random_brightness=(0.1,),
                        augment_order=("random_resized_crop", "random_brightness"),
                    ),
                },
            ),
        )
    )
    return config
