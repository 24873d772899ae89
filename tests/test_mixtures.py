import numpy as np
import pytest

from octo_like.data.mixtures import allocate_threads, make_named_mixture, normalize_weights
from octo_like.utils.errors import InputError

TRAJ_KWARGS = dict(
    window_size=2,
    action_horizon=3,
    goal_relabeling_strategy="uniform",
    text_tokenizer={
        "module": "octo_like.data.text_tokenizer",
        "name": "TextTokenizer",
        "args": [],
        "kwargs": {"max_length": 12},
    },
)
FRAME_KWARGS = dict(
    resize_size={"primary": (32, 32), "wrist": (16, 16)},
    image_augment_kwargs={"primary": dict(random_brightness=(0.2,), augment_order=("random_brightness",))},
)


def make_mixture(data_dir, mixture="synthetic_two_robots", seed=0, batch_size=16, **kwargs):
    return make_named_mixture(
        mixture,
        data_dir,
        train=True,
        batch_size=batch_size,
        shuffle_buffer_size=64,
        traj_transform_kwargs=TRAJ_KWARGS,
        frame_transform_kwargs=FRAME_KWARGS,
        seed=seed,
        **kwargs,
    )


def test_batches_follow_the_batch_contract(synthetic_data_dir):
    dataset, statistics = make_mixture(synthetic_data_dir)
    batch = next(dataset.iterator())
    B, T, H, A = 16, 2, 3, 7  # the 2-d action robot is padded to the 7-d one
    observation = batch["observation"]
    assert observation["image_primary"].shape == (B, T, 32, 32, 3) and observation["image_primary"].dtype == np.uint8
    assert observation["image_wrist"].shape == (B, T, 16, 16, 3)
    assert observation["proprio"].shape == (B, T, 8) and observation["proprio"].dtype == np.float32
    assert observation["timestep"].shape == (B, T) and observation["timestep"].dtype == np.int32
    assert observation["timestep_pad_mask"].shape == (B, T) and observation["timestep_pad_mask"].dtype == bool
    assert set(observation["pad_mask_dict"]) >= {"image_primary", "image_wrist", "proprio"}
    language = batch["task"]["language_instruction"]
    assert language["input_ids"].shape == (B, 12) and language["attention_mask"].dtype == np.int32
    assert batch["task"]["image_primary"].shape == (B, 32, 32, 3)
    assert batch["action"].shape == (B, T, H, A) and batch["action"].dtype == np.float32
    assert batch["action_pad_mask"].shape == (B, T, H, A)
    assert batch["dataset_name"].shape == (B,)
    # The no-wrist robot: its padded action dims are masked out and its wrist camera is zeros.
    no_wrist = batch["dataset_name"] == b"synthetic_rlds/no_wrist"
    assert not batch["action_pad_mask"][no_wrist][..., 2:].any()
    assert not observation["pad_mask_dict"]["image_wrist"][no_wrist].any()
    assert not observation["image_wrist"][no_wrist].any()
    assert set(statistics) == {"synthetic_rlds/default", "synthetic_rlds/no_wrist"}


def test_sampling_frequencies_match_weights(synthetic_data_dir):
    dataset, _ = make_mixture(synthetic_data_dir, batch_size=50)
    iterator = dataset.iterator()
    names = np.concatenate([next(iterator)["dataset_name"] for _ in range(20)])
    share = np.mean(names == b"synthetic_rlds/default")
    # 1000 draws with p = 0.7: the standard deviation of the share is 0.0145; allow 4 of them.
    assert abs(share - 0.7) < 0.06, share


def test_balance_weights_scales_by_transitions(synthetic_data_dir):
    dataset, statistics = make_mixture(synthetic_data_dir, batch_size=50, balance_weights=True)
    transitions = {name: stats["num_transitions"] for name, stats in statistics.items()}
    expected = normalize_weights(
        [0.7 * transitions["synthetic_rlds/default"], 0.3 * transitions["synthetic_rlds/no_wrist"]], 2
    )[0]
    iterator = dataset.iterator()
    names = np.concatenate([next(iterator)["dataset_name"] for _ in range(20)])
    assert abs(np.mean(names == b"synthetic_rlds/default") - expected) < 0.06


def test_same_seed_same_batches_other_seed_other_batches(synthetic_data_dir):
    def first_batches(seed):
        iterator = make_mixture(synthetic_data_dir, seed=seed)[0].iterator()
        return [next(iterator) for _ in range(3)]

    first, again, other = first_batches(1), first_batches(1), first_batches(2)
    for a, b in zip(first, again):
        for key in ("action", "dataset_name"):
            np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a["observation"]["image_primary"], b["observation"]["image_primary"])
    assert not all(np.array_equal(a["action"], c["action"]) for a, c in zip(first, other))


def test_weights_and_threads():
    np.testing.assert_allclose(normalize_weights([2, 6], 2), [0.25, 0.75])
    assert allocate_threads(16, np.array([0.7, 0.3])) == [11, 5]
    assert allocate_threads(2, np.array([0.5, 0.3, 0.2])) == [1, 1, 1]
    with pytest.raises(InputError, match="one per dataset"):
        normalize_weights([1.0], 2)
    with pytest.raises(InputError, match="unknown mixture 'nope'"):
        make_named_mixture("nope", "/tmp", train=True, shuffle_buffer_size=1, batch_size=1)
