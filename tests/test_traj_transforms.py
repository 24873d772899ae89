import numpy as np
import pytest
import tensorflow as tf

from octo_like.data import traj_transforms
from octo_like.data.dlataset import DLataset
from octo_like.utils.errors import InputError

LENGTH, ACTION_DIM, PROPRIO_DIM = 5, 3, 2


def make_traj(length: int = LENGTH, language: bytes = b"push the button") -> dict:
    """A restructured trajectory whose values name their step: action[t] = [t, 10 t, 100 t]."""
    steps = np.arange(length)
    images = tf.constant([f"img{t}".encode() for t in steps])
    return {
        "observation": {
            "image_primary": images,
            "proprio": tf.constant(np.stack([steps, -steps], -1), tf.float32),
            "timestep": tf.constant(steps, tf.int32),
            "pad_mask_dict": {
                "image_primary": tf.ones([length], tf.bool),
                "proprio": tf.ones([length], tf.bool),
            },
        },
        "task": {
            "language_instruction": tf.fill([length], language),
            "pad_mask_dict": {"language_instruction": tf.fill([length], language != b"")},
        },
        "action": tf.constant(steps[:, None] * np.array([1, 10, 100]), tf.float32),
        "dataset_name": tf.fill([length], b"toy"),
    }


def test_chunk_act_obs_pads_window_at_start_and_chunk_at_end():
    window, horizon = 3, 2
    out = traj_transforms.chunk_act_obs(make_traj(), window, horizon)
    timestep = out["observation"]["timestep"].numpy()
    pad = out["observation"]["timestep_pad_mask"].numpy()
    for t in range(LENGTH):
        for w in range(window):
            source = t - window + 1 + w
            # Before the episode start: the first frame repeated, marked as padding.
            assert timestep[t, w] == max(source, 0)
            assert pad[t, w] == (source >= 0)
            assert out["observation"]["image_primary"].numpy()[t, w] == f"img{max(source, 0)}".encode()
            for h in range(horizon):
                target = max(source, 0) + h
                np.testing.assert_array_equal(
                    out["action"].numpy()[t, w, h], np.array([1, 10, 100]) * min(target, LENGTH - 1)
                )
                # Past the episode end: the last action repeated, marked as padding.
                assert np.all(out["action_pad_mask"].numpy()[t, w, h] == (target < LENGTH))
    assert out["action"].shape == (LENGTH, window, horizon, ACTION_DIM)
    assert out["observation"]["proprio"].shape == (LENGTH, window, PROPRIO_DIM)


def test_pad_action_and_proprio_dims_masks_padded_action_dims():
    out = traj_transforms.chunk_act_obs(make_traj(), 1, 2)
    out = traj_transforms.pad_action_and_proprio_dims(out, max_action_dim=5, max_proprio_dim=4)
    assert out["action"].shape == (LENGTH, 1, 2, 5)
    np.testing.assert_array_equal(out["action"].numpy()[..., 3:], 0)
    assert not out["action_pad_mask"].numpy()[..., 3:].any()
    np.testing.assert_array_equal(
        out["action_pad_mask"].numpy()[..., :3], traj_transforms.chunk_act_obs(make_traj(), 1, 2)["action_pad_mask"]
    )
    assert out["observation"]["proprio"].shape == (LENGTH, 1, 4)
    with pytest.raises(InputError, match="max_action_dim=2"):
        traj_transforms.pad_action_and_proprio_dims(out, max_action_dim=2, max_proprio_dim=None)


def test_goal_relabeling_only_picks_current_or_future_steps():
    length = 12
    traj = make_traj(length)
    seen_offsets = set()
    for seed in range(40):
        out = traj_transforms.relabel_goal_uniform(traj, tf.constant([seed, 7], tf.int64))
        goals = [int(g.decode()[3:]) for g in out["task"]["image_primary"].numpy()]
        for t, goal in enumerate(goals):
            assert t <= goal < length
            seen_offsets.add(goal - t)
        assert out["task"]["pad_mask_dict"]["image_primary"].numpy().all()
        assert goals[-1] == length - 1  # the last step can only be its own goal
    # Uniform over the future: every offset up to the longest is drawn at some point.
    assert seen_offsets == set(range(length))


def test_drop_task_keys_keeps_exactly_one_of_image_and_language():
    traj = traj_transforms.relabel_goal_uniform(make_traj(200), tf.constant([0, 1], tf.int64))
    out = traj_transforms.drop_task_keys(traj, tf.constant([3, 4], tf.int64), keep_image_prob=0.25)
    has_language = out["task"]["pad_mask_dict"]["language_instruction"].numpy()
    has_image = out["task"]["pad_mask_dict"]["image_primary"].numpy()
    np.testing.assert_array_equal(has_language, ~has_image)
    np.testing.assert_array_equal(out["task"]["language_instruction"].numpy()[~has_language], b"")
    np.testing.assert_array_equal(out["task"]["image_primary"].numpy()[~has_image], b"")
    assert 0.15 < has_image.mean() < 0.35  # keep_image_prob=0.25 over 200 steps


def test_drop_task_keys_leaves_unlabeled_steps_alone():
    traj = traj_transforms.relabel_goal_uniform(make_traj(50, language=b""), tf.constant([0, 1], tf.int64))
    out = traj_transforms.drop_task_keys(traj, tf.constant([3, 4], tf.int64), keep_image_prob=0.0)
    assert out["task"]["pad_mask_dict"]["image_primary"].numpy().all()


def test_subsample_keeps_order_and_length():
    out = traj_transforms.subsample(make_traj(30), tf.constant([1, 2], tf.int64), max_length=8)
    timestep = out["observation"]["timestep"].numpy()
    assert len(timestep) == 8 and np.all(np.diff(timestep) > 0)
    np.testing.assert_array_equal(out["action"].numpy()[:, 0], timestep)
    short = traj_transforms.subsample(make_traj(5), tf.constant([1, 2], tf.int64), max_length=8)
    np.testing.assert_array_equal(short["observation"]["timestep"].numpy(), np.arange(5))


def test_apply_trajectory_transforms_filters_large_actions_and_tokenizes():
    trajs = [make_traj(4), make_traj(6)]  # max |action| 300 and 500

    def generator():
        for traj in trajs:
            yield tf.nest.map_structure(lambda x: x.numpy(), traj)

    spec = tf.nest.map_structure(lambda x: tf.TensorSpec([None, *x.shape[1:]], x.dtype), trajs[0])
    dataset = DLataset(tf.data.Dataset.from_generator(generator, output_signature=spec))
    out = traj_transforms.apply_trajectory_transforms(
        dataset,
        train=True,
        window_size=2,
        action_horizon=3,
        max_action=400.0,
        text_tokenizer={
            "module": "octo_like.data.text_tokenizer",
            "name": "TextTokenizer",
            "args": [],
            "kwargs": {"max_length": 8},
        },
    )
    results = list(out.iterator())
    assert len(results) == 1 and results[0]["action"].shape == (4, 2, 3, ACTION_DIM)
    tokens = results[0]["task"]["language_instruction"]
    assert tokens["input_ids"].shape == (4, 8) and tokens["input_ids"].dtype == np.int32
    # "[CLS] push the button [SEP]" then padding: 5 real tokens per step.
    np.testing.assert_array_equal(tokens["attention_mask"].sum(-1), 5)


def test_unknown_strategies_are_rejected_with_one_line():
    dataset = DLataset(tf.data.Dataset.from_tensors(make_traj()))
    with pytest.raises(InputError, match="goal_relabeling_strategy 'future'") as error:
        traj_transforms.apply_trajectory_transforms(dataset, train=True, goal_relabeling_strategy="future")
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="task_augment_strategy"):
        traj_transforms.apply_trajectory_transforms(dataset, train=True, task_augment_strategy="drop")
