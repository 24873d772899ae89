import numpy as np
import pytest
import tensorflow as tf

from octo_like.data.dlataset import DLataset
from octo_like.utils.errors import InputError


def trajectories(lengths=(3, 5, 2, 4)) -> DLataset:
    """Trajectories whose step values are 100 * trajectory index + step."""

    def generator():
        for index, length in enumerate(lengths):
            yield {"value": 100 * index + np.arange(length, dtype=np.int64)}

    signature = {"value": tf.TensorSpec([None], tf.int64)}
    return DLataset(tf.data.Dataset.from_generator(generator, output_signature=signature))


def test_flatten_yields_every_step_once():
    frames = [int(f["value"]) for f in trajectories().flatten().iterator()]
    expected = [100 * i + s for i, n in enumerate((3, 5, 2, 4)) for s in range(n)]
    assert sorted(frames) == sorted(expected)


def test_maps_check_the_level():
    with pytest.raises(InputError, match="call flatten"):
        trajectories().frame_map(lambda x: x)
    with pytest.raises(InputError, match="use frame_map"):
        trajectories().flatten().traj_map(lambda x: x)


def test_seeded_maps_are_deterministic_whatever_the_parallelism():
    def noisy(frame, seed):
        return {"value": frame["value"], "noise": tf.random.stateless_uniform([], seed=seed)}

    def run(seed, threads):
        dataset = trajectories().flatten(num_parallel_calls=threads).frame_map(noisy, threads, seed=seed)
        dataset = dataset.shuffle(8, seed=seed).batch(3, drop_remainder=False)
        return [(b["value"].tolist(), b["noise"].tolist()) for b in dataset.iterator()]

    reference = run(seed=4, threads=1)
    assert run(seed=4, threads=tf.data.AUTOTUNE) == reference
    assert run(seed=5, threads=1) != reference
    # Every frame gets its own draw.
    noise = [n for _, batch_noise in reference for n in batch_noise]
    assert len(set(noise)) == len(noise)


def test_filter_and_traj_map():
    dataset = trajectories().traj_map(lambda t: {"value": t["value"] * 2}).filter(lambda t: tf.size(t["value"]) > 3)
    assert [t["value"].tolist() for t in dataset.iterator()] == [[200, 202, 204, 206, 208], [600, 602, 604, 606]]
