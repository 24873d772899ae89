"""The Octo-style generalist policy from scratch, in three sizes, language- and goal-conditioned.

    python scripts/train.py --config experiments/configs/octo_scratch.py:tiny \
        --config.dataset.data_dir=data/tensorflow_datasets --config.run_dir=runs/octo_tiny
    python scripts/bench.py train --config experiments/configs/octo_scratch.py:small

Variants: `tiny` (4 layers, width 128, narrow stems: CPU), `small` (12 layers, width 384, like
Octo-S) and `base` (12 layers, width 768, like Octo-B); append `,<head>` to pick the action head
(`small,l1`; default diffusion). Data: the `dataset` section of experiments/configs/synthetic.py
(two cameras, 7-d actions, goal images relabeled from the future, instructions dropped or kept):
point `--config.dataset.mixture` at your own registered mixture.

Tokens: the instruction (frozen MiniLM) and the goal image of the primary camera as task tokens;
per step the primary and wrist images (small conv stems) and the proprio; one readout token.
"""

import importlib.util
import os

import ml_collections

from octo_like.model.heads import HEADS, head_spec
from octo_like.model.scratch.observation_tokenizers import GoalImageTokenizer, ImageTokenizer, ProprioTokenizer
from octo_like.model.scratch.transformer import DEFAULT_TRANSFORMER_SIZE, TRANSFORMER_SIZES
from octo_like.model.vision.stems import TINY_SMALL_STEM_KWARGS
from octo_like.train.run_config import training_run_config
from octo_like.utils import spec
from octo_like.utils.errors import InputError


def _dataset_config() -> ml_collections.ConfigDict:
    """The synthetic.py config's dataset section (configs are files, loaded by path)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "synthetic.py")
    module_spec = importlib.util.spec_from_file_location("synthetic_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config("default").dataset


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    size, _, head = (variant or DEFAULT_TRANSFORMER_SIZE).partition(",")
    head = head or "diffusion"
    if size not in TRANSFORMER_SIZES:
        raise InputError(
            f"unknown size '{size}' in variant '{variant}'; expected one of {', '.join(TRANSFORMER_SIZES)}"
        )
    if head not in HEADS:
        raise InputError(f"unknown head '{head}' in variant '{variant}'; expected one of {', '.join(HEADS)}")
    dataset = _dataset_config()
    image_sizes = {camera: tuple(size_hw) for camera, size_hw in dataset.frame_transform_kwargs.resize_size.items()}
    stem_kwargs = TINY_SMALL_STEM_KWARGS if size == "tiny" else {}

    config = training_run_config(run_dir=f"runs/octo_scratch_{size}_{head}", num_steps=2000)
    config.model = dict(
        observation_tokenizers={
            camera: spec.create(ImageTokenizer, camera=camera, stem_kwargs=stem_kwargs, image_size=image_size)
            for camera, image_size in image_sizes.items()
        }
        | {"proprio": spec.create(ProprioTokenizer, mode="linear")},
        task_tokenizers={
            "goal_primary": spec.create(
                GoalImageTokenizer, camera="primary", stem_kwargs=stem_kwargs, image_size=image_sizes["primary"]
            ),
        },
        language=dict(
            max_length=dataset.traj_transform_kwargs.text_tokenizer.kwargs.max_length,
            tokenizer_json=None,
            checkpoint=None,
        ),
        readouts={"action": 1},
        # The size's dimensions written out, so that a flag changes one (--config.model.transformer.num_layers=2).
        transformer=dict(
            size=size, **TRANSFORMER_SIZES[size], dropout_rate=0.1 if size != "tiny" else 0.0, remat=False
        ),
        heads={"action": head_spec(head, action_dim=7)},  # chunks of the data's action_horizon
    )
    config.optimizer = dict(
        learning_rate=3e-4,
        warmup_steps=200,
        decay="rsqrt",
        weight_decay=0.01,
        clip_gradient=1.0,
        frozen_keys=("language_encoder/*",),
    )
    config.dataset = dataset
    return config
