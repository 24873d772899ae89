"""The MT10 recipe: a language-conditioned multi-task policy trained on 2 CPU cores in 30 minutes.

    python -m data_pipelines.metaworld.build --name mt10 --tasks mt10 --episodes_per_task 50 \
        --image_size 64 --action_noise 0.1
    python scripts/train.py --config experiments/configs/metaworld_mt10.py \
        --config.run_dir=runs/mt10
    python scripts/evaluate.py --policy=checkpoint --checkpoint=runs/mt10 --tasks=mt10 \
        --episodes=50 --output_dir=runs/mt10/eval
    python scripts/evaluate.py --policy=checkpoint --checkpoint=runs/mt10 --tasks=mt10 \
        --episodes=50 --instructions=heldout --output_dir=runs/mt10/eval_heldout

The collection settings above are the ones this config expects: 64x64 cameras (the config trains
the primary camera at 64x64 and the wrist camera at 32x32, and evaluation renders at the release's
own size), 50 demonstrations per task, each with one of the task's three training paraphrases,
and executed actions perturbed by Gaussian noise of std 0.1 (the labels stay the expert's), so
the data holds recoveries from off-path states.

What the recipe settles (the ablations so far are in the README, "The MT10 recipe"):
- proprio: the full 39-d Meta-World state (hand, gripper, object and goal positions), not only
  the hand. At 64x64 the goal of reach, push and pick-place is a one-pixel marker whose depth one
  camera cannot tell; with the hand alone those three tasks fail.
- language: the sentence embedding of the frozen all-MiniLM-L6-v2 as one token, and FiLM of the
  same embedding into the primary camera's stem. Reach and pick-place have the same scene and
  goal; only the instruction tells them apart, and it must still do so for rewordings it never
  saw. During training the sentence token is jittered (Gaussian noise of std 0.04 per dimension,
  then unit length again): the policy then answers for a neighbourhood of each training
  instruction, and held-out paraphrases land in it (0.94 with them against 0.95 with the training
  instructions; 0.88 against 0.94 without the jitter).

Variant: comma-separated `knob=value` changes to the recipe, one per ablation, e.g.
`metaworld_mt10.py:proprio=hand` or `metaworld_mt10.py:head=diffusion,language=all`:
  head      flow | l1 | mse | discrete | diffusion       (the action head)
  proprio   state | hand                                 (39-d state or hand xyz + gripper)
  language  sentence | all                               (one sentence token or every token state)
  noise     float >= 0                                   (train-time jitter of the sentence token;
                                                          0.04, or 0 with language=all)
  film      on | off                                     (instruction FiLM in the primary stem)
  wrist     on | off                                     (the 32x32 gripper camera)
  chunk     int                                          (actions predicted per step)
  window    int                                          (observation history)
"""

import os

import ml_collections

from octo_like.model.heads import HEADS, head_spec
from octo_like.model.scratch.observation_tokenizers import ImageTokenizer, ProprioTokenizer
from octo_like.model.vision.stems import TINY_SMALL_STEM_KWARGS
from octo_like.utils import spec
from octo_like.utils.config import load_config_module
from octo_like.utils.errors import InputError

RECIPE = dict(
    head="flow", proprio="state", language="sentence", noise="0.04", film="on", wrist="on", chunk="4", window="2"
)
KNOB_CHOICES = dict(
    head=tuple(HEADS),
    proprio=("state", "hand"),
    language=("sentence", "all"),
    film=("on", "off"),
    wrist=("on", "off"),
)
# The dataset's observation key of each proprio choice (data_pipelines/metaworld writes both).
PROPRIO_KEYS = {"state": "full_state", "hand": "proprio"}
# Configs are files loaded by path: the tiny from-scratch Meta-World config this recipe changes.
metaworld_scratch = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "metaworld_scratch.py"))
NUM_STEPS = 2000
BATCH_SIZE = 64


def _is_non_negative_number(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


def parse_variant(variant: str | None) -> dict[str, str]:
    settings = dict(RECIPE)
    given = set()
    for item in filter(None, (variant or "").split(",")):
        knob, sep, value = item.partition("=")
        if not sep or knob not in RECIPE:
            raise InputError(f"variant item '{item}'; expected knob=value with a knob among {', '.join(RECIPE)}")
        choices = KNOB_CHOICES.get(knob)
        if choices is not None and value not in choices:
            raise InputError(f"variant {knob}='{value}'; expected one of {', '.join(choices)}")
        if knob == "noise":
            if not _is_non_negative_number(value):
                raise InputError(f"variant noise='{value}'; expected a number >= 0")
        elif choices is None and not (value.isdigit() and int(value) >= 1):
            raise InputError(f"variant {knob}='{value}'; expected a positive integer")
        settings[knob] = value
        given.add(knob)
    if settings["language"] != "sentence" and "noise" not in given:
        settings["noise"] = "0"  # the recipe's jitter is of the sentence token; every token state gets none
    if float(settings["noise"]) > 0 and settings["language"] != "sentence":
        raise InputError(f"variant noise={settings['noise']} jitters the sentence token; it needs language=sentence")
    return settings


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    settings = parse_variant(variant)
    chunk, window = int(settings["chunk"]), int(settings["window"])
    config = metaworld_scratch.get_config(f"{settings['head']},tiny")
    config.run_dir = "runs/mt10"
    config.num_steps = NUM_STEPS
    config.save_interval = 500
    config.eval_interval = 500

    image_sizes = dict(metaworld_scratch.IMAGE_SIZES)
    if settings["wrist"] == "off":
        del image_sizes["wrist"]
    tokenizers = {
        camera: spec.create(
            ImageTokenizer,
            camera=camera,
            stem="small_stem",
            stem_kwargs=TINY_SMALL_STEM_KWARGS,
            image_size=size,
            use_film=camera == "primary" and settings["film"] == "on",
        )
        for camera, size in image_sizes.items()
    }
    tokenizers["proprio"] = spec.create(ProprioTokenizer, mode="linear")
    config.model.observation_tokenizers = tokenizers
    config.model.language.tokens = "all" if settings["language"] == "all" else "sentence"
    config.model.language.noise_std = float(settings["noise"])
    config.model.heads = {"action": head_spec(settings["head"], action_dim=metaworld_scratch.ACTION_DIM)}

    config.dataset.mixture = "metaworld/mt10"
    config.dataset.batch_size = BATCH_SIZE
    config.dataset.dataset_kwargs.proprio_obs_key = PROPRIO_KEYS[settings["proprio"]]
    config.dataset.traj_transform_kwargs.window_size = window
    config.dataset.traj_transform_kwargs.action_horizon = chunk
    config.dataset.frame_transform_kwargs.resize_size = image_sizes
    if settings["wrist"] == "off":  # the wrist images are not even read
        config.dataset.dataset_kwargs.image_obs_keys = {"primary": "image"}
    return config
