"""Several RLDS datasets -> one shuffled stream of batches in the batch contract.

Each dataset is read, normalized with its own statistics, chunked into windows and flattened to
frames; the frame streams are sampled with the (normalized) weights; a shuffle buffer then holds
still-encoded frames (cheap), and decoding, resizing and augmentation run last, before batching.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from octo_like.data.dlataset import DLataset
from octo_like.data.frame_transforms import apply_frame_transforms
from octo_like.data.rlds import make_dataset_from_rlds
from octo_like.data.traj_transforms import apply_trajectory_transforms
from octo_like.utils.errors import InputError

# Total threads for reading and for trajectory transforms, shared out among datasets by weight.
DEFAULT_READ_THREADS = 16
DEFAULT_TRANSFORM_THREADS = 16


def normalize_weights(sample_weights: Sequence[float] | None, num_datasets: int) -> np.ndarray:
    weights = np.ones(num_datasets) if sample_weights is None else np.asarray(sample_weights, np.float64)
    if weights.shape != (num_datasets,):
        raise InputError(f"sample_weights has {weights.size} entries; expected one per dataset ({num_datasets})")
    if np.any(weights < 0) or weights.sum() <= 0:
        raise InputError(f"sample_weights {weights.tolist()} must be non-negative with a positive sum")
    return weights / weights.sum()


def allocate_threads(total: int, weights: np.ndarray) -> list[int]:
    """Splits `total` threads in proportion to `weights`, at least one each."""
    if total < len(weights):
        return [1] * len(weights)
    threads = np.maximum(1, np.floor(weights * total)).astype(int)
    # Hand out what flooring left over to the datasets whose share was rounded down the most.
    for index in np.argsort(-(weights * total - threads))[: max(0, total - threads.sum())]:
        threads[index] += 1
    return threads.tolist()


def make_interleaved_dataset(
    dataset_kwargs_list: Sequence[Mapping[str, Any]],
    sample_weights: Sequence[float] | None = None,
    *,
    train: bool,
    shuffle_buffer_size: int,
    batch_size: int | None,
    balance_weights: bool = False,
    traj_transform_kwargs: Mapping[str, Any] | None = None,
    frame_transform_kwargs: Mapping[str, Any] | None = None,
    traj_transform_threads: int = DEFAULT_TRANSFORM_THREADS,
    traj_read_threads: int = DEFAULT_READ_THREADS,
    seed: int = 0,
    repeat: bool | None = None,
) -> tuple[DLataset, dict[str, dict]]:
    """Interleaves datasets by weight; returns (batches or frames, statistics by dataset name).

    Args:
      dataset_kwargs_list: one `make_dataset_from_rlds` kwargs dict per dataset (name, data_dir, ...).
      sample_weights: relative sampling weights (default: equal); normalized to sum to 1.
      balance_weights: multiply the weights by each dataset's number of transitions, so that
        weights are per transition rather than per dataset.
      traj_transform_kwargs / frame_transform_kwargs: `apply_trajectory_transforms` /
        `apply_frame_transforms` arguments shared by all datasets. Action and proprio are padded to
        the largest dimension in the mixture unless max_action_dim / max_proprio_dim are given.
      batch_size: None returns unbatched frames.
      repeat: cycle through the datasets forever (default: when training). Validation repeats too
        when it wants a fixed number of batches from a split smaller than that.
    """
    if not dataset_kwargs_list:
        raise InputError("dataset_kwargs_list is empty; expected at least one dataset")
    names = [kwargs["name"] for kwargs in dataset_kwargs_list]
    if len(set(names)) != len(names):
        raise InputError(f"dataset names must be unique in a mixture; got {names}")
    weights = normalize_weights(sample_weights, len(dataset_kwargs_list))

    statistics = {}
    for kwargs in dataset_kwargs_list:
        _, statistics[kwargs["name"]] = make_dataset_from_rlds(**{**kwargs, "train": train})
    if balance_weights:
        weights = normalize_weights(weights * [statistics[n]["num_transitions"] for n in names], len(names))

    traj_transform_kwargs = dict(traj_transform_kwargs or {})
    traj_transform_kwargs.setdefault("max_action_dim", max(len(s["action"]["mean"]) for s in statistics.values()))
    traj_transform_kwargs.setdefault("max_proprio_dim", max(len(s["proprio"]["mean"]) for s in statistics.values()))
    read_threads = allocate_threads(traj_read_threads, weights)
    transform_threads = allocate_threads(traj_transform_threads, weights)

    frame_datasets = []
    for index, kwargs in enumerate(dataset_kwargs_list):
        dataset, _ = make_dataset_from_rlds(
            **{
                **kwargs,
                "train": train,
                "dataset_statistics": statistics[kwargs["name"]],
                "num_parallel_reads": read_threads[index],
                "num_parallel_calls": transform_threads[index],
                "seed": seed + index,
            }
        )
        if train if repeat is None else repeat:
            dataset = dataset.repeat()
        dataset = apply_trajectory_transforms(
            dataset, train=train, num_parallel_calls=transform_threads[index], seed=seed + 1000 * (index + 1),
            **traj_transform_kwargs,
        )
        frame_datasets.append(dataset.flatten(num_parallel_calls=transform_threads[index]))

    dataset = DLataset.sample_from_datasets(frame_datasets, weights.tolist(), seed=seed)
    if train:
        dataset = dataset.shuffle(shuffle_buffer_size, seed=seed)
    dataset = apply_frame_transforms(dataset, train=train, seed=seed, **dict(frame_transform_kwargs or {}))
    if batch_size is not None:
        dataset = dataset.batch(batch_size)
    return dataset, statistics


# Per-dataset reading kwargs for `make_dataset_from_rlds`, by dataset name. Camera names must agree
# across datasets that are mixed (None marks a camera the dataset lacks).
DATASET_CONFIGS: dict[str, dict[str, Any]] = {
    "synthetic_rlds/default": dict(
        image_obs_keys={"primary": "image", "wrist": "wrist_image"},
        proprio_obs_key="state",
        language_key="language_instruction",
        action_normalization_mask=[True] * 6 + [False],  # the gripper stays in {0, 1}
    ),
    "synthetic_rlds/no_wrist": dict(
        image_obs_keys={"primary": "image", "wrist": None},
        proprio_obs_key="state",
        language_key="language_instruction",
        action_normalization_mask=[True, False],
    ),
    # Any config of the Meta-World scripted dataset (data_pipelines/metaworld), e.g. metaworld/mt10.
    "metaworld": dict(
        image_obs_keys={"primary": "image", "wrist": "wrist_image"},
        proprio_obs_key="proprio",
        language_key="language_instruction",
        action_normalization_mask=[True, True, True, False],  # the gripper command stays in [-1, 1]
    ),
}

# Named mixtures: lists of (dataset name, sampling weight). A dataset name is a mixture of itself.
MIXTURES: dict[str, list[tuple[str, float]]] = {
    "synthetic": [("synthetic_rlds/default", 1.0)],
    "synthetic_two_robots": [("synthetic_rlds/default", 0.7), ("synthetic_rlds/no_wrist", 0.3)],
}


def make_dataset_kwargs_list(
    mixture: str, data_dir: str, **common_kwargs: Any
) -> tuple[list[dict[str, Any]], list[float]]:
    """A named mixture -> (dataset kwargs list, sample weights) for `make_interleaved_dataset`.

    `mixture` is a registered mixture or a single dataset name. `common_kwargs` (e.g.
    action_proprio_normalization_type) apply to every dataset.
    """
    if mixture in MIXTURES:
        entries = MIXTURES[mixture]
    elif dataset_config(mixture) is not None:
        entries = [(mixture, 1.0)]
    else:
        raise InputError(
            f"unknown mixture '{mixture}'; expected a registered mixture ({', '.join(sorted(MIXTURES))}) "
            f"or a dataset with an entry in DATASET_CONFIGS ({', '.join(sorted(DATASET_CONFIGS))})"
        )
    kwargs_list, weights = [], []
    for name, weight in entries:
        config = dataset_config(name)
        if config is None:
            raise InputError(f"mixture '{mixture}' names dataset '{name}', which has no entry in DATASET_CONFIGS")
        kwargs_list.append({"name": name, "data_dir": data_dir, **config, **common_kwargs})
        weights.append(weight)
    return kwargs_list, weights


def dataset_config(name: str) -> dict[str, Any] | None:
    """The DATASET_CONFIGS entry of `name[/config][:version]`: its own, else its builder's."""
    name = name.partition(":")[0]
    return DATASET_CONFIGS.get(name, DATASET_CONFIGS.get(name.partition("/")[0]))


def make_named_mixture(
    mixture: str,
    data_dir: str,
    *,
    train: bool,
    dataset_kwargs: Mapping[str, Any] | None = None,
    **interleave_kwargs: Any,
) -> tuple[DLataset, dict[str, dict]]:
    """`make_interleaved_dataset` for a registered mixture: the `dataset` section of a config."""
    kwargs_list, weights = make_dataset_kwargs_list(mixture, data_dir, **dict(dataset_kwargs or {}))
    return make_interleaved_dataset(kwargs_list, weights, train=train, **interleave_kwargs)
