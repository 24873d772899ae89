"""The Octo-style generalist policy from scratch, in three sizes, language- and goal-conditioned.

    python scripts/train.py --config experiments/configs/octo_scratch.py:tiny \
        --config.dataset.data_dir=data/tensorflow_datasets --config.run_dir=runs/octo_tiny
    python scripts/bench.py train --config experiments/configs/octo_scratch.py:small

Variants: `tiny` (4 layers, width 128, narrow stems: CPU), `small` (12 layers, width 384, like
Octo-S) and `base` (12 layers, width 768, like Octo-B); append options after commas:
- a head name (`small,l1`; default diffusion);
- `fused_goal`: Octo's own token layout, for like-for-like comparisons and for users who want
  fewer tokens: one 128x128 primary camera with the goal image stacked on its channels (early
  fusion into the stem), no language, no proprio, one readout, no dropout. Window 2 gives
  2 x (64 + 1) = 130 tokens, as octo-small at 128x128;
- `readout_history`: observation tokens attend to the task and their own step only, and only the
  readouts read across steps (`model.transformer.history="readout"`), so at inference a frame's
  keys and values are computed once and reused while the window slides (see
  octo_like/model/scratch/transformer.py).
Data: the `dataset` section of experiments/configs/synthetic.py (two cameras, 7-d actions, goal
images relabeled from the future, instructions dropped or kept): point `--config.dataset.mixture`
at your own registered mixture.

Tokens (default): the instruction (frozen MiniLM) and the goal image of the primary camera as task
tokens; per step the primary and wrist images (small conv stems) and the proprio; one readout token.
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


FUSED_GOAL_IMAGE_SIZE = (128, 128)
OPTIONS = ("fused_goal", "readout_history")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    size, *options = (variant or DEFAULT_TRANSFORMER_SIZE).split(",")
    if size not in TRANSFORMER_SIZES:
        raise InputError(
            f"unknown size '{size}' in variant '{variant}'; expected one of {', '.join(TRANSFORMER_SIZES)}"
        )
    heads = [option for option in options if option in HEADS]
    unknown = [option for option in options if option not in HEADS and option not in OPTIONS]
    if unknown or len(heads) > 1:
        raise InputError(
            f"variant '{variant}': expected at most one head ({', '.join(HEADS)}) and options from {', '.join(OPTIONS)}"
        )
    head = heads[0] if heads else "diffusion"
    fused_goal = "fused_goal" in options
    dataset = _dataset_config()
    if fused_goal:
        dataset.frame_transform_kwargs.resize_size.primary = FUSED_GOAL_IMAGE_SIZE
    image_sizes = {camera: tuple(size_hw) for camera, size_hw in dataset.frame_transform_kwargs.resize_size.items()}
    stem_kwargs = TINY_SMALL_STEM_KWARGS if size == "tiny" else {}

    suffix = "".join(f"_{option}" for option in options if option in OPTIONS)
    config = training_run_config(run_dir=f"runs/octo_scratch_{size}_{head}{suffix}", num_steps=2000)
    language = dict(
        max_length=dataset.traj_transform_kwargs.text_tokenizer.kwargs.max_length, tokenizer_json=None, checkpoint=None
    )
    if fused_goal:
        observation_tokenizers = {
            "primary": spec.create(
                ImageTokenizer,
                camera="primary",
                stem_kwargs=stem_kwargs,
                image_size=image_sizes["primary"],
                fuse_goal=True,
            )
        }
        task_tokenizers, language = {}, None
    else:
        observation_tokenizers = {
            camera: spec.create(ImageTokenizer, camera=camera, stem_kwargs=stem_kwargs, image_size=image_size)
            for camera, image_size in image_sizes.items()
        } | {"proprio": spec.create(ProprioTokenizer, mode="linear")}
        task_tokenizers = {
            "goal_primary": spec.create(
                GoalImageTokenizer, camera="primary", stem_kwargs=stem_kwargs, image_size=image_sizes["primary"]
            ),
        }
    config.model = dict(
        observation_tokenizers=observation_tokenizers,
        task_tokenizers=task_tokenizers,
        language=language,
        readouts={"action": 1},
        # The size's dimensions written out, so that a flag changes one (--config.model.transformer.num_layers=2).
        transformer=dict(
            size=size,
            **TRANSFORMER_SIZES[size],
            dropout_rate=0.1 if size != "tiny" and not fused_goal else 0.0,
            remat=False,
            # One scanned block for all but the last layer: compiling and loading a step cost about one layer.
            scan_layers=True,
            history="readout" if "readout_history" in options else "causal",
        ),
        heads={"action": head_spec(head, action_dim=7)},  # chunks of the data's action_horizon
    )
    config.optimizer = dict(
        learning_rate=3e-4,
        warmup_steps=200,
        decay="rsqrt",
        weight_decay=0.01,
        clip_gradient=1.0,
        frozen_keys=("language_encoder/*",) if language is not None else (),
    )
    config.dataset = dataset
    return config
