"""One RLDS dataset on local disk -> normalized trajectories in the layout of the batch contract.

`make_dataset_from_rlds` reads a TFDS-format RLDS dataset from `data_dir`, applies an optional
per-dataset `standardize_fn`, renames observation keys to the shared layout (`image_<camera>`,
`depth_<camera>`, `proprio`, `timestep`, with `pad_mask_dict`), computes or loads the action/proprio
statistics, and normalizes. Missing cameras and proprio become empty/zero entries with pad masks
False, so datasets of different robots share one structure and can be mixed.

Restructured trajectory (N steps):
    observation: image_<cam> string[N] (encoded), depth_<cam> string[N], proprio float32[N, P],
                 timestep int32[N], pad_mask_dict {key: bool[N]}
    task:        language_instruction string[N], pad_mask_dict {language_instruction: bool[N]}
    action:      float32[N, A]
    dataset_name string[N]
"""

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from octo_like.data import statistics as statistics_lib
from octo_like.data.dlataset import AUTOTUNE, DLataset
from octo_like.utils.normalization import check_normalization_type
from octo_like.data.traj_transforms import has_language
from octo_like.utils import spec as spec_lib
from octo_like.utils.errors import InputError


def _version_dirs(dataset_dir: str) -> dict[str, str]:
    if not os.path.isdir(dataset_dir):
        return {}
    return {
        entry: os.path.join(dataset_dir, entry)
        for entry in os.listdir(dataset_dir)
        if os.path.isfile(os.path.join(dataset_dir, entry, "dataset_info.json"))
    }


def list_local_datasets(data_dir: str) -> list[str]:
    """Names ("name" or "name/config") of the prepared datasets under data_dir."""
    found = []
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = [d for d in dirs if not d.startswith((".", "incomplete"))]
        if "dataset_info.json" in files:
            found.append(os.path.relpath(os.path.dirname(root), data_dir))
            dirs[:] = []
    return sorted(set(found))


def load_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """The builder of a prepared dataset `name[/config][:version]` (latest version by default)."""
    if not os.path.isdir(data_dir):
        raise InputError(f"data_dir '{data_dir}' does not exist (needed for dataset '{name}')")
    name, _, version = name.partition(":")
    versions = _version_dirs(os.path.join(data_dir, name))
    if not versions:
        available = ", ".join(list_local_datasets(data_dir)) or "none"
        raise InputError(f"unknown dataset name '{name}' in data_dir '{data_dir}'; available: {available}")
    if version and version not in versions:
        raise InputError(f"dataset '{name}' has no version '{version}' in '{data_dir}'; available: {', '.join(sorted(versions))}")
    version = version or max(versions, key=lambda v: tfds.core.Version(v))
    return tfds.builder_from_directory(versions[version])


def split_names(builder: tfds.core.DatasetBuilder, val_percent: int) -> tuple[str, str]:
    """(train split, val split): the dataset's own "val" split, or the last `val_percent`% of train."""
    if "val" in builder.info.splits:
        return "train", "val"
    if not 0 < val_percent < 100:
        raise InputError(f"val_percent={val_percent} must be in (0, 100) for a dataset without a val split")
    return f"train[:{100 - val_percent}%]", f"train[{100 - val_percent}%:]"


def _resolve_callable(fn: Callable | Mapping | None) -> Callable | None:
    return spec_lib.resolve(fn) if spec_lib.is_spec(fn) else fn


def _callable_identity(fn: Callable | Mapping | None) -> str:
    """A stable description of a function or spec, for the statistics cache key."""
    if fn is None:
        return "None"
    if spec_lib.is_spec(fn):
        return spec_lib.to_string(fn)
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def _get_path(tree: Mapping, dotted_path: str, *, what: str, dataset: str) -> Any:
    """tree["a"]["b"] for "a.b", or one clear error naming the missing key and what exists."""
    node = tree
    for part in dotted_path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            available = ", ".join(sorted(node)) if isinstance(node, Mapping) else "not a dict"
            raise InputError(f"dataset '{dataset}' has no key '{dotted_path}' ({what}); available at that level: {available}")
        node = node[part]
    return node


def _restructure_fn(
    *,
    dataset_name: str,
    image_obs_keys: Mapping[str, str | None],
    depth_obs_keys: Mapping[str, str | None],
    proprio_obs_key: str | None,
    language_key: str | None,
    action_key: str,
    element_spec: Mapping,
) -> Callable[[dict], dict]:
    """Checks every requested key against the dataset's element spec, then returns the restructure map."""
    requested = {f"image_obs_keys['{c}']": k for c, k in image_obs_keys.items() if k is not None}
    requested |= {f"depth_obs_keys['{c}']": k for c, k in depth_obs_keys.items() if k is not None}
    if proprio_obs_key is not None:
        requested["proprio_obs_key"] = proprio_obs_key
    for what, key in requested.items():
        _get_path(element_spec.get("observation", {}), key, what=f"observation key for {what}", dataset=dataset_name)
    _get_path(element_spec, action_key, what="action_key", dataset=dataset_name)
    if language_key is not None:
        _get_path(element_spec, language_key, what="language_key", dataset=dataset_name)

    def restructure(traj: dict) -> dict:
        action = tf.cast(_get_path(traj, action_key, what="action_key", dataset=dataset_name), tf.float32)
        length = tf.shape(action)[0]
        observation, pad_mask = {}, {}
        for prefix, keys in (("image", image_obs_keys), ("depth", depth_obs_keys)):
            for camera, key in keys.items():
                name = f"{prefix}_{camera}"
                if key is None:
                    observation[name] = tf.fill([length], tf.constant(b""))
                    pad_mask[name] = tf.zeros([length], tf.bool)
                else:
                    observation[name] = traj["observation"][key]
                    pad_mask[name] = tf.ones([length], tf.bool)
        if proprio_obs_key is None:
            observation["proprio"] = tf.zeros([length, 0], tf.float32)
            pad_mask["proprio"] = tf.zeros([length], tf.bool)
        else:
            proprio = tf.cast(_get_path(traj["observation"], proprio_obs_key, what="proprio", dataset=dataset_name), tf.float32)
            observation["proprio"] = tf.reshape(proprio, [length, -1])
            pad_mask["proprio"] = tf.ones([length], tf.bool)
        observation["timestep"] = tf.range(length, dtype=tf.int32)
        observation["pad_mask_dict"] = pad_mask

        if language_key is None:
            language = tf.fill([length], tf.constant(b""))
        else:
            language = _get_path(traj, language_key, what="language_key", dataset=dataset_name)
        task = {"language_instruction": language, "pad_mask_dict": {"language_instruction": language != b""}}
        return {
            "observation": observation,
            "task": task,
            "action": tf.reshape(action, [length, -1]),
            "dataset_name": tf.fill([length], tf.constant(dataset_name.encode())),
        }

    return restructure


def make_dataset_from_rlds(
    name: str,
    data_dir: str,
    *,
    train: bool,
    image_obs_keys: Mapping[str, str | None] | None = None,
    depth_obs_keys: Mapping[str, str | None] | None = None,
    proprio_obs_key: str | None = None,
    language_key: str | None = None,
    action_key: str = "action",
    action_proprio_normalization_type: str = "normal",
    action_normalization_mask: Sequence[bool] | None = None,
    proprio_normalization_mask: Sequence[bool] | None = None,
    dataset_statistics: Mapping | str | None = None,
    force_recompute_dataset_statistics: bool = False,
    standardize_fn: Callable | Mapping | None = None,
    filter_functions: Sequence[Callable | Mapping] = (),
    skip_unlabeled: bool = False,
    val_percent: int = 5,
    shuffle: bool | None = None,
    seed: int = 0,
    num_parallel_reads: int = AUTOTUNE,
    num_parallel_calls: int = AUTOTUNE,
    shard_index: int = 0,
    num_shards: int = 1,
    statistics_cache_dir: str | None = None,
) -> tuple[DLataset, dict]:
    """Trajectories of one local RLDS dataset, restructured and normalized, and its statistics.

    Args:
      name: "dataset[/config][:version]", a directory under data_dir (latest version by default).
      image_obs_keys / depth_obs_keys: camera name -> observation key (None: camera missing here).
      proprio_obs_key / language_key / action_key: paths (dots for nesting) of those features;
        language_key and action_key are relative to the step, proprio_obs_key to the observation.
      action_proprio_normalization_type: "normal", "bounds" or "bounds_q99".
      action_normalization_mask / proprio_normalization_mask: per dimension, False = leave raw.
      dataset_statistics: a statistics dict or a path to its JSON (skips computing them).
      standardize_fn: callable or spec run first on every raw trajectory (its steps as tensors).
      filter_functions: callables or specs, trajectory -> bool, applied after restructuring.
      skip_unlabeled: drop trajectories without any language instruction.
      val_percent: size of the val split carved from train when the dataset has none.
      shuffle: shuffle file order (default: when train).
      shard_index / num_shards: this process's disjoint part of the split (multi-host).
      statistics_cache_dir: where statistics JSON is cached (default: next to the dataset).
    """
    check_normalization_type(action_proprio_normalization_type)
    builder = load_builder(name, data_dir)
    train_split, val_split = split_names(builder, val_percent)
    standardize = _resolve_callable(standardize_fn)
    filters = [_resolve_callable(fn) for fn in filter_functions]
    if skip_unlabeled:
        if language_key is None:
            raise InputError(f"skip_unlabeled=True for dataset '{name}' needs a language_key")
        filters.append(has_language)

    def process_shard(split: str) -> tuple[int, int]:
        """(shard_index, num_shards), or the whole split for a val split too small to give every
        process a trajectory (its metrics then repeat examples across processes, never fail)."""
        available = builder.info.splits[split].num_examples
        if num_shards == 1 or available >= num_shards:
            return shard_index, num_shards
        if train:
            raise InputError(f"dataset '{name}' split '{split}' holds {available} trajectories, fewer than "
                             f"num_shards={num_shards} (one shard per process); expected at least one per process")
        logging.warning("dataset '%s' split '%s' holds %d trajectories for %d processes: every process reads all of it",
                        name, split, available, num_shards)
        return 0, 1

    def trajectories(split: str, shuffle_files: bool, shard: tuple[int, int]) -> DLataset:
        dataset = DLataset.from_rlds(
            builder, split, shuffle_files, seed=seed, num_parallel_reads=num_parallel_reads,
            shard_index=shard[0], num_shards=shard[1],
        )
        if standardize is not None:
            dataset = dataset.traj_map(standardize, num_parallel_calls)
        restructure = _restructure_fn(
            dataset_name=name,
            image_obs_keys=dict(image_obs_keys or {}),
            depth_obs_keys=dict(depth_obs_keys or {}),
            proprio_obs_key=proprio_obs_key,
            language_key=language_key,
            action_key=action_key,
            element_spec=dataset.element_spec,
        )
        dataset = dataset.traj_map(restructure, num_parallel_calls)
        for predicate in filters:
            dataset = dataset.filter(predicate)
        return dataset

    if isinstance(dataset_statistics, str):
        dataset_statistics = statistics_lib.load_statistics(dataset_statistics)
    if dataset_statistics is None:
        # Statistics always come from the whole train split (never a host's shard, never val), so
        # every process and both splits normalize identically.
        hash_dependencies = (
            f"name={name}",
            f"version={builder.info.version}",
            f"data_dir={os.path.abspath(data_dir)}",
            f"split={train_split}",
            f"action_key={action_key}",
            f"proprio_obs_key={proprio_obs_key}",
            f"language_key={language_key}",
            f"standardize_fn={_callable_identity(standardize_fn)}",
            f"filters={json.dumps([_callable_identity(fn) for fn in filter_functions])}",
            f"skip_unlabeled={skip_unlabeled}",
        )
        dataset_statistics = statistics_lib.compute_dataset_statistics(
            trajectories(train_split, False, (0, 1)),
            hash_dependencies,
            statistics_cache_dir or os.path.join(data_dir, name, str(builder.info.version)),
            force_recompute=force_recompute_dataset_statistics,
        )

    split = train_split if train else val_split
    dataset = trajectories(split, train if shuffle is None else shuffle, process_shard(split))
    dataset = dataset.traj_map(
        lambda traj: statistics_lib.normalize_action_and_proprio(
            traj,
            dataset_statistics,
            action_proprio_normalization_type,
            action_mask=action_normalization_mask,
            proprio_mask=proprio_normalization_mask,
        ),
        num_parallel_calls,
    )
    return dataset, dataset_statistics
