"""Dataset statistics of actions and proprio: one streaming pass, cached as JSON, and normalization.

Statistics dict (in memory; the JSON file holds the same with lists for arrays):

    {
      "action":  {"mean", "std", "min", "max", "q01", "q99": float32[A]},
      "proprio": {"mean", "std", "min", "max", "q01", "q99": float32[P]},   # P may be 0
      "num_transitions": int,
      "num_trajectories": int,
    }

std is the population std (numpy's default, ddof=0); q01/q99 are `np.quantile` with its default
(linear) interpolation. Everything is computed exactly, in float64, from all the data at once.

The cache file `dataset_statistics_<key>.json` (key: first 16 hex digits of the sha256 of the JSON
list of hash dependencies) also stores the hash dependencies, for reference; it is written
atomically, so concurrent writers (several hosts) and interrupted runs never leave a torn file.
Statistics must be finite: data with NaN/Inf fails before anything is cached, and a statistics file
holding a non-finite value (an older version cached those) is refused on writing and on reading.
"""

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp
import tqdm
from absl import logging

from octo_like.utils import normalization
from octo_like.data.dlataset import DLataset
from octo_like.utils.errors import InputError
from octo_like.utils.files import write_text_atomically

STAT_KEYS = ("mean", "std", "min", "max", "q01", "q99")
FEATURES = ("action", "proprio")
_HASH_DEPENDENCIES_KEY = "hash_dependencies"


def fallback_cache_dir() -> str:
    """Where statistics are cached when the requested cache dir cannot be written."""
    return os.path.join(os.path.expanduser("~"), ".cache", "octo_like")


def cache_key(hash_dependencies: Sequence[str]) -> str:
    """First 16 hex digits of the sha256 of the dependencies (JSON-encoded, so joins are unambiguous)."""
    return hashlib.sha256(json.dumps(list(hash_dependencies)).encode("utf-8")).hexdigest()[:16]


def cache_filename(hash_dependencies: Sequence[str]) -> str:
    return f"dataset_statistics_{cache_key(hash_dependencies)}.json"


# ---------------------------------------------------------------------------------------------
# JSON I/O


def _to_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if hasattr(value, "__array__"):  # jax / tf arrays
        return np.asarray(value).tolist()
    return value


def _from_json(value: Any) -> Any:
    """Lists under the statistic keys (mean, std, ...) -> float32 arrays, recursively."""
    if not isinstance(value, dict):
        return value
    return {
        k: np.asarray(v, dtype=np.float32) if k in STAT_KEYS and isinstance(v, list) else _from_json(v)
        for k, v in value.items()
    }


def _first_non_finite(statistics: Mapping, prefix: str = "") -> str | None:
    """Where the first non-finite statistic of a (possibly nested) statistics dict is, e.g.
    "action.mean[2] = nan"; None when all are finite."""
    for key, value in statistics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found = _first_non_finite(value, f"{name}.")
            if found is not None:
                return found
        elif key in STAT_KEYS and (flat := np.asarray(value).ravel()).dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(flat))
            if bad.size:
                return f"{name}[{bad[0]}] = {flat[bad[0]]}"
    return None


def save_statistics(statistics: Mapping, path: str, *, hash_dependencies: Sequence[str] | None = None) -> None:
    """Writes statistics (arrays as lists) to `path` atomically (a temp file in the same dir, then a rename).

    Raises InputError (writing nothing) if a statistic is not finite, OSError if the directory cannot
    be created or written.
    """
    non_finite = _first_non_finite(statistics)
    if non_finite is not None:
        raise InputError(f"refusing to write non-finite dataset statistics to '{path}': {non_finite}")
    content = _to_json(statistics)
    if hash_dependencies is not None:
        content[_HASH_DEPENDENCIES_KEY] = list(hash_dependencies)
    write_text_atomically(path, json.dumps(content, indent=1))


def load_statistics(path: str) -> dict:
    """Reads statistics written by `save_statistics`; arrays come back as float32 numpy arrays.

    The stored hash dependencies (if any) are dropped. Raises InputError if the file is missing, is
    not valid JSON or holds a non-finite statistic (Python's json reads a bare NaN token as nan).
    """
    if not os.path.isfile(path):
        raise InputError(f"dataset statistics file '{path}' does not exist")
    try:
        with open(path) as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"dataset statistics file '{path}' is not valid JSON: {e}") from None
    if not isinstance(content, dict):
        raise InputError(f"dataset statistics file '{path}' must hold a JSON object, got {type(content).__name__}")
    content.pop(_HASH_DEPENDENCIES_KEY, None)
    statistics = _from_json(content)
    non_finite = _first_non_finite(statistics)
    if non_finite is not None:
        raise InputError(f"dataset statistics file '{path}' holds a non-finite value ({non_finite})")
    return statistics


def _is_complete(statistics: Mapping) -> bool:
    return (
        all(isinstance(statistics.get(f), Mapping) and all(k in statistics[f] for k in STAT_KEYS) for f in FEATURES)
        and "num_transitions" in statistics
        and "num_trajectories" in statistics
    )


# ---------------------------------------------------------------------------------------------
# Computing


def _action_and_proprio(traj: dict) -> dict:
    return {"action": traj["action"], "proprio": traj["observation"]["proprio"]}


def _feature_statistics(values_ND: np.ndarray) -> dict:
    values_ND = values_ND.astype(np.float64)
    stats = {
        "mean": values_ND.mean(axis=0),
        "std": values_ND.std(axis=0),
        "min": values_ND.min(axis=0),
        "max": values_ND.max(axis=0),
        "q01": np.quantile(values_ND, 0.01, axis=0),
        "q99": np.quantile(values_ND, 0.99, axis=0),
    }
    return {k: v.astype(np.float32) for k, v in stats.items()}


def _check_finite(values_ND: np.ndarray, lengths: Sequence[int], feature: str, dataset_name: str) -> None:
    """NaN/Inf in the data would make the statistics, and then every loss, NaN: one line naming where."""
    finite_ND = np.isfinite(values_ND)
    if finite_ND.all():
        return
    dimension = int(np.flatnonzero(~finite_ND.all(axis=0))[0])
    rows = np.flatnonzero(~finite_ND[:, dimension])
    starts = np.cumsum([0, *lengths])
    trajectory = int(np.searchsorted(starts, rows[0], side="right") - 1)
    step = int(rows[0] - starts[trajectory])
    dataset = f"dataset '{dataset_name}'" if dataset_name else "the dataset"
    raise InputError(
        f"cannot compute statistics of {dataset}: {feature} dimension {dimension} has {rows.size} non-finite "
        f"value(s) in {len(values_ND)} steps (first: {values_ND[rows[0], dimension]} at step {step} of trajectory "
        f"{trajectory} in reading order); fix or filter those steps"
    )


def _compute(dataset: DLataset, show_progress: bool) -> dict:
    dataset = dataset.traj_map(_action_and_proprio)
    for feature in FEATURES:
        shape = dataset.element_spec[feature].shape
        if shape.rank != 2:
            raise InputError(f"trajectory '{feature}' must have shape [N, D] for statistics; got {shape}")
    cardinality = int(dataset.dataset.cardinality())
    chunks = {feature: [] for feature in FEATURES}
    progress = tqdm.tqdm(
        dataset.iterator(),
        total=cardinality if cardinality >= 0 else None,
        desc="Computing dataset statistics",
        unit="traj",
        disable=not show_progress,
    )
    for traj in progress:
        for feature in FEATURES:
            chunks[feature].append(traj[feature])
    num_trajectories = len(chunks["action"])
    if num_trajectories == 0:
        raise InputError("cannot compute dataset statistics: the dataset has no trajectories")
    statistics = {}
    for feature in FEATURES:
        widths = {chunk.shape[1] for chunk in chunks[feature]}
        if len(widths) != 1:
            raise InputError(f"trajectories disagree on the '{feature}' dimension: {sorted(widths)}")
        statistics[feature] = np.concatenate(chunks[feature], axis=0)
    num_transitions = len(statistics["action"])
    if num_transitions == 0:
        raise InputError(f"cannot compute dataset statistics: all {num_trajectories} trajectories are empty")
    for feature in FEATURES:
        _check_finite(statistics[feature], [len(chunk) for chunk in chunks[feature]], feature, dataset.name)
    result = {feature: _feature_statistics(statistics[feature]) for feature in FEATURES}
    result["num_transitions"] = int(num_transitions)
    result["num_trajectories"] = int(num_trajectories)
    return result


def compute_dataset_statistics(
    dataset: DLataset,
    hash_dependencies: Sequence[str],
    cache_dir: str,
    *,
    force_recompute: bool = False,
    show_progress: bool = True,
) -> dict:
    """Action/proprio statistics of a trajectory dataset (layout in the module docstring), cached.

    `hash_dependencies` must describe everything that determines the data (dataset, version, split,
    transforms): statistics are reused whenever they match. The cache is looked up in `cache_dir`,
    then in `fallback_cache_dir()`; a fresh result is written to `cache_dir`, or to the fallback
    (with a warning) when `cache_dir` cannot be written. Images and other keys are dropped before
    the pass, so it reads only actions and proprio. Raises InputError, caching nothing, when the
    data holds NaN/Inf; a cached file with a non-finite value is ignored (with a warning) and replaced.
    """
    hash_dependencies = [str(dep) for dep in hash_dependencies]
    filename = cache_filename(hash_dependencies)
    candidates = [os.path.join(cache_dir, filename), os.path.join(fallback_cache_dir(), filename)]
    if not force_recompute:
        for path in candidates:
            if not os.path.isfile(path):
                continue
            try:
                statistics = load_statistics(path)
            except InputError as e:
                logging.warning("Ignoring unreadable statistics cache (%s); recomputing.", e)
                continue
            if _is_complete(statistics):
                logging.info("Loaded dataset statistics from %s", path)
                return statistics
            logging.warning("Ignoring incomplete statistics cache %s; recomputing.", path)

    statistics = _compute(dataset, show_progress)
    for i, path in enumerate(candidates):
        try:
            save_statistics(statistics, path, hash_dependencies=hash_dependencies)
        except OSError as e:
            if i + 1 < len(candidates):
                logging.warning(
                    "Cannot write dataset statistics to %s (%s); caching them in %s instead.",
                    path, e, os.path.dirname(candidates[i + 1]),
                )
            else:
                logging.warning("Cannot cache dataset statistics at %s either (%s); not cached.", path, e)
            continue
        logging.info("Wrote dataset statistics to %s", path)
        break
    return statistics


# ---------------------------------------------------------------------------------------------
# Normalization inside the tf.data pipeline


def _float32_stats(statistics: Mapping, feature: str) -> dict:
    if feature not in statistics:
        raise InputError(f"dataset statistics have no '{feature}' entry; have keys {', '.join(sorted(statistics))}")
    return {k: np.asarray(v, dtype=np.float32) for k, v in statistics[feature].items() if k in STAT_KEYS}


def _check_mask(mask, stats: Mapping, name: str) -> None:
    if mask is None or "mean" not in stats:
        return  # normalization.normalize checks what is left
    expected = len(stats["mean"])
    shape = np.shape(mask)
    if len(shape) != 1 or shape[0] != expected:
        raise InputError(f"{name} has shape {tuple(shape)}; expected length {expected} (one bool per dimension)")


def normalize_action_and_proprio(
    traj: dict,
    statistics: Mapping,
    normalization_type: str,
    action_mask: Sequence[bool] | None = None,
    proprio_mask: Sequence[bool] | None = None,
) -> dict:
    """Normalizes traj["action"] and traj["observation"]["proprio"] (float32 out); for `traj_map`.

    Works eagerly and in graph mode (tf.data map): statistics become constants of the graph.
    Bad inputs raise a one-line InputError, also while tf.data traces the map.
    """
    try:
        return _normalize_action_and_proprio(traj, statistics, normalization_type, action_mask, proprio_mask)
    except InputError as e:
        # Autograph (which converts the lambda a tf.data map is given) would otherwise re-raise the
        # error as a multi-line StagingError; `ag_pass_through` lets it through unchanged.
        e.ag_pass_through = True
        raise


@tf.autograph.experimental.do_not_convert
def _normalize_action_and_proprio(traj, statistics, normalization_type, action_mask, proprio_mask) -> dict:
    normalization.check_normalization_type(normalization_type)
    action_stats = _float32_stats(statistics, "action")
    proprio_stats = _float32_stats(statistics, "proprio")
    _check_mask(action_mask, action_stats, "action_normalization_mask")
    _check_mask(proprio_mask, proprio_stats, "proprio_normalization_mask")
    traj = dict(traj)
    traj["action"] = tf.cast(
        normalization.normalize(
            tf.cast(traj["action"], tf.float32), action_stats, normalization_type,
            mask=action_mask, xp=tnp,
        ),
        tf.float32,
    )
    observation = dict(traj["observation"])
    observation["proprio"] = tf.cast(
        normalization.normalize(
            tf.cast(observation["proprio"], tf.float32), proprio_stats, normalization_type,
            mask=proprio_mask, xp=tnp,
        ),
        tf.float32,
    )
    traj["observation"] = observation
    return traj
