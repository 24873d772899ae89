"""Trajectory-level transforms: windows and action chunks, goal relabeling, subsampling, task dropout.

They act on restructured trajectories (see `rlds.py`): every tensor has a leading step axis N.
Random transforms take a stateless `seed` (int64[2]) so a DLataset map given a seed is reproducible.
`apply_trajectory_transforms` chains them in the order the training pipeline uses.
"""

from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from octo_like.data.dlataset import AUTOTUNE, DLataset
from octo_like.data.text_tokenizer import TextTokenizer
from octo_like.utils import spec as spec_lib
from octo_like.utils.errors import InputError

GOAL_RELABELING_STRATEGIES = ("uniform",)
TASK_AUGMENT_STRATEGIES = ("drop_task_keys",)


def _length(traj: dict) -> tf.Tensor:
    return tf.shape(traj["action"])[0]


def _goal_keys(traj: dict) -> list[str]:
    return [key for key in traj["observation"] if key.startswith(("image_", "depth_"))]


def chunk_act_obs(traj: dict, window_size: int, action_horizon: int) -> dict:
    """Every step t gets the observation window [t-W+1, t] and, for each of those W steps, H actions.

    The window runs before the episode start at the first W-1 steps: those slots repeat the first
    observation and have `timestep_pad_mask` False. Action chunks run past the episode end at the
    last H-1 steps: those slots repeat the last action and have `action_pad_mask` False.
    Result: observation values [N, W, ...], action [N, W, H, A], action_pad_mask [N, W, H, A].
    """
    length = _length(traj)
    history_NW = tf.range(length)[:, None] + tf.range(-window_size + 1, 1)[None, :]
    timestep_pad_mask_NW = history_NW >= 0
    history_NW = tf.maximum(history_NW, 0)

    observation = tf.nest.map_structure(lambda x: tf.gather(x, history_NW), traj["observation"])
    observation["timestep_pad_mask"] = timestep_pad_mask_NW

    action_index_NWH = history_NW[:, :, None] + tf.range(action_horizon)[None, None, :]
    action_valid_NWH = action_index_NWH < length
    action_NWHA = tf.gather(traj["action"], tf.minimum(action_index_NWH, length - 1))
    action_pad_mask_NWHA = tf.broadcast_to(action_valid_NWH[..., None], tf.shape(action_NWHA))

    return {**traj, "observation": observation, "action": action_NWHA, "action_pad_mask": action_pad_mask_NWHA}


def pad_action_and_proprio_dims(traj: dict, max_action_dim: int | None, max_proprio_dim: int | None) -> dict:
    """Zero-pads the last axis of action and proprio so datasets of different robots can be mixed.

    Padded action dimensions get `action_pad_mask` False (no loss on them). Call after chunk_act_obs.
    """
    traj = {**traj, "observation": dict(traj["observation"])}
    if max_action_dim is not None:
        action_dim = traj["action"].shape[-1]
        if action_dim > max_action_dim:
            raise InputError(f"action dim {action_dim} exceeds max_action_dim={max_action_dim}")
        paddings = [[0, 0]] * (traj["action"].shape.rank - 1) + [[0, max_action_dim - action_dim]]
        traj["action"] = tf.pad(traj["action"], paddings)
        traj["action_pad_mask"] = tf.pad(traj["action_pad_mask"], paddings, constant_values=False)
    if max_proprio_dim is not None:
        proprio = traj["observation"]["proprio"]
        proprio_dim = proprio.shape[-1]
        if proprio_dim > max_proprio_dim:
            raise InputError(f"proprio dim {proprio_dim} exceeds max_proprio_dim={max_proprio_dim}")
        paddings = [[0, 0]] * (proprio.shape.rank - 1) + [[0, max_proprio_dim - proprio_dim]]
        traj["observation"]["proprio"] = tf.pad(proprio, paddings)
    return traj


def relabel_goal_uniform(traj: dict, seed: tf.Tensor) -> dict:
    """Goal images: for each step t, the observation at a step drawn uniformly from [t, N-1]."""
    length = _length(traj)
    steps = tf.range(length)
    uniform = tf.random.stateless_uniform([length], seed=seed)
    # floor(u * remaining) with u in [0, 1) stays in [0, N - t - 1]: only current or future steps.
    goal_index_N = steps + tf.cast(uniform * tf.cast(length - steps, tf.float32), tf.int32)
    goal_index_N = tf.minimum(goal_index_N, length - 1)
    task = dict(traj["task"])
    task_pad_mask = dict(task.get("pad_mask_dict", {}))
    for key in _goal_keys(traj):
        task[key] = tf.gather(traj["observation"][key], goal_index_N)
        task_pad_mask[key] = tf.gather(traj["observation"]["pad_mask_dict"][key], goal_index_N)
    task["pad_mask_dict"] = task_pad_mask
    return {**traj, "task": task}


def drop_task_keys(traj: dict, seed: tf.Tensor, keep_image_prob: float) -> dict:
    """Task augmentation: per step, keep either the goal image(s) or the language instruction.

    Only steps that have both lose one of them: the goal images with probability
    1 - keep_image_prob, else the instruction. A dropped key becomes b"" with its pad mask False.
    """
    task = dict(traj["task"])
    pad_mask = dict(task["pad_mask_dict"])
    image_keys = [key for key in task if key.startswith(("image_", "depth_"))]
    if not image_keys or "language_instruction" not in task:
        return traj
    has_image_N = tf.reduce_any(tf.stack([pad_mask[key] for key in image_keys]), axis=0)
    has_both_N = has_image_N & pad_mask["language_instruction"]
    keep_image_N = tf.random.stateless_uniform([_length(traj)], seed=seed) < keep_image_prob
    drop_language_N = has_both_N & keep_image_N
    drop_image_N = has_both_N & ~keep_image_N
    task["language_instruction"] = tf.where(drop_language_N, tf.constant(b""), task["language_instruction"])
    pad_mask["language_instruction"] = pad_mask["language_instruction"] & ~drop_language_N
    for key in image_keys:
        task[key] = tf.where(drop_image_N, tf.zeros_like(task[key]), task[key])
        pad_mask[key] = pad_mask[key] & ~drop_image_N
    task["pad_mask_dict"] = pad_mask
    return {**traj, "task": task}


def subsample(traj: dict, seed: tf.Tensor, max_length: int) -> dict:
    """Keeps a random, order-preserving subset of `max_length` steps of longer trajectories."""
    length = _length(traj)
    shuffled = tf.random.experimental.stateless_shuffle(tf.range(length), seed=seed)
    keep_N = tf.sort(shuffled[:max_length])
    return tf.cond(
        length > max_length,
        lambda: tf.nest.map_structure(lambda x: tf.gather(x, keep_N), traj),
        lambda: traj,
    )


def max_abs_action_below(traj: dict, max_action: float) -> tf.Tensor:
    """Filter predicate: True when every |action| of the trajectory is <= max_action."""
    return tf.reduce_all(tf.abs(traj["action"]) <= max_action)


def has_language(traj: dict) -> tf.Tensor:
    """Filter predicate: True when some step has a non-empty instruction."""
    return tf.reduce_any(traj["task"]["pad_mask_dict"]["language_instruction"])


def tokenize_language(traj: dict, tokenizer: TextTokenizer) -> dict:
    task = dict(traj["task"])
    task["language_instruction"] = tokenizer.tf_tokenize(task["language_instruction"])
    return {**traj, "task": task}


def apply_trajectory_transforms(
    dataset: DLataset,
    *,
    train: bool,
    window_size: int = 1,
    action_horizon: int = 1,
    goal_relabeling_strategy: str | None = None,
    task_augment_strategy: str | None = None,
    task_augment_kwargs: Mapping[str, Any] | None = None,
    subsample_length: int | None = None,
    max_action: float | None = None,
    max_action_dim: int | None = None,
    max_proprio_dim: int | None = None,
    text_tokenizer: TextTokenizer | Mapping | None = None,
    num_parallel_calls: int = AUTOTUNE,
    seed: int = 0,
) -> DLataset:
    """The trajectory stage of the pipeline, in order: filter by |action|, subsample (train),
    goal relabeling, task dropout (train), tokenization, chunking into windows, dimension padding.

    `text_tokenizer` is a TextTokenizer or a spec of one (see `octo_like.utils.spec`).
    """
    if goal_relabeling_strategy not in (None, *GOAL_RELABELING_STRATEGIES):
        raise InputError(
            f"unknown goal_relabeling_strategy '{goal_relabeling_strategy}'; expected one of "
            f"{', '.join(GOAL_RELABELING_STRATEGIES)} or None"
        )
    if task_augment_strategy not in (None, *TASK_AUGMENT_STRATEGIES):
        raise InputError(
            f"unknown task_augment_strategy '{task_augment_strategy}'; expected one of "
            f"{', '.join(TASK_AUGMENT_STRATEGIES)} or None"
        )
    if window_size < 1 or action_horizon < 1:
        raise InputError(f"window_size={window_size} and action_horizon={action_horizon} must both be >= 1")

    if max_action is not None:
        dataset = dataset.filter(lambda traj: max_abs_action_below(traj, max_action))
    if train and subsample_length is not None:
        dataset = dataset.traj_map(lambda traj, s: subsample(traj, s, subsample_length), num_parallel_calls, seed=seed)
    if goal_relabeling_strategy == "uniform":
        dataset = dataset.traj_map(relabel_goal_uniform, num_parallel_calls, seed=seed + 1)
    if train and task_augment_strategy == "drop_task_keys":
        kwargs = dict(task_augment_kwargs or {})
        dataset = dataset.traj_map(lambda traj, s: drop_task_keys(traj, s, **kwargs), num_parallel_calls, seed=seed + 2)
    if text_tokenizer is not None:
        if spec_lib.is_spec(text_tokenizer):
            text_tokenizer = spec_lib.instantiate(text_tokenizer)
        dataset = dataset.traj_map(lambda traj: tokenize_language(traj, text_tokenizer), num_parallel_calls)
    dataset = dataset.traj_map(lambda traj: chunk_act_obs(traj, window_size, action_horizon), num_parallel_calls)
    if max_action_dim is not None or max_proprio_dim is not None:
        dataset = dataset.traj_map(
            lambda traj: pad_action_and_proprio_dims(traj, max_action_dim, max_proprio_dim), num_parallel_calls
        )
    return dataset
