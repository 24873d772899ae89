"""The data pipeline on the synthetic RLDS dataset (the embedded default of the quickstart).

    python -m data_pipelines.synthetic.build --data_dir data/tensorflow_datasets
    python scripts/inspect_data.py --config experiments/configs/synthetic.py:default
    python scripts/bench.py data --config experiments/configs/synthetic.py:two_robots

Variants: `default` (one robot, two cameras) and `two_robots` (a 0.7/0.3 mixture with a robot that
has no wrist camera, a 2-d action and 3-d proprio, padded to the first robot's dimensions).
"""

import ml_collections
from ml_collections import config_dict

from octo_like.utils import spec
from octo_like.utils.errors import InputError

MIXTURES = {"default": "synthetic", "two_robots": "synthetic_two_robots"}

COLOR_AUGMENT = dict(
    random_brightness=(0.1,),
    random_contrast=(0.9, 1.1),
    random_saturation=(0.9, 1.1),
    random_hue=(0.05,),
)


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = variant or "default"
    if variant not in MIXTURES:
        raise InputError(f"unknown variant '{variant}' of synthetic.py; expected one of {', '.join(MIXTURES)}")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.dataset = ml_collections.ConfigDict(
        dict(
            mixture=MIXTURES[variant],
            data_dir="data/tensorflow_datasets",
            dataset_kwargs=dict(action_proprio_normalization_type="normal"),
            batch_size=8,
            shuffle_buffer_size=1000,
            balance_weights=False,
            traj_transform_kwargs=dict(
                window_size=2,
                action_horizon=4,
                goal_relabeling_strategy="uniform",
                task_augment_strategy="drop_task_keys",
                task_augment_kwargs=dict(keep_image_prob=0.5),
                subsample_length=config_dict.placeholder(int),
                max_action=config_dict.placeholder(float),
                # named, not imported: loading the config stays free of TensorFlow, so that a bad flag fails at once
                text_tokenizer=spec.create("octo_like.data.text_tokenizer:TextTokenizer", max_length=16),
            ),
            frame_transform_kwargs=dict(
                resize_size={"primary": (64, 64), "wrist": (32, 32)},
                image_augment_kwargs={
                    "primary": dict(
                        random_resized_crop=dict(scale=(0.8, 1.0), ratio=(0.9, 1.1)),
                        **COLOR_AUGMENT,
                        augment_order=("random_resized_crop", *COLOR_AUGMENT),
                    ),
                    "wrist": dict(**COLOR_AUGMENT, augment_order=tuple(COLOR_AUGMENT)),
                },
            ),
        )
    )
    return config
