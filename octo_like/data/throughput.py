"""Throughput of a config's data pipeline, stage by stage (used by `bench.py data` and `inspect_data.py`)."""

from octo_like.data.dlataset import AUTOTUNE
from octo_like.data.frame_transforms import apply_frame_transforms
from octo_like.data.mixtures import make_dataset_kwargs_list, make_named_mixture
from octo_like.data.rlds import make_dataset_from_rlds
from octo_like.data.traj_transforms import apply_trajectory_transforms
from octo_like.utils.timing import calls_per_second


def data_throughput(dataset_config: dict, seconds: float, *, serial: bool = False) -> dict[str, float]:
    """trajectories/s, frames/s and batches/s of the training pipeline of a `dataset` config section.

    With `serial`, every stage runs on one thread (reads, trajectory and frame transforms).
    """
    threads = 1 if serial else AUTOTUNE
    config = dict(dataset_config)
    if serial:
        config.update(traj_transform_threads=1, traj_read_threads=1)
        config["frame_transform_kwargs"] = {**config["frame_transform_kwargs"], "num_parallel_calls": 1}
    batches, statistics = make_named_mixture(train=True, **config)

    # Trajectory and frame rates on the mixture's first dataset, read as in training.
    kwargs_list, _ = make_dataset_kwargs_list(config["mixture"], config["data_dir"], **config["dataset_kwargs"])
    first = kwargs_list[0]
    trajectories, _ = make_dataset_from_rlds(
        **first, train=True, dataset_statistics=statistics[first["name"]],
        num_parallel_reads=threads, num_parallel_calls=threads,
    )
    trajectories = apply_trajectory_transforms(
        trajectories.repeat(), train=True, num_parallel_calls=threads, **config["traj_transform_kwargs"]
    )
    frames = apply_frame_transforms(
        trajectories.flatten(num_parallel_calls=threads), train=True,
        **{"num_parallel_calls": threads, **config["frame_transform_kwargs"]},
    )
    return {
        "trajectories_per_s": calls_per_second(trajectories.iterator().__next__, seconds, warmup=3),
        "frames_per_s": calls_per_second(frames.iterator().__next__, seconds, warmup=3),
        "batches_per_s": calls_per_second(batches.iterator().__next__, seconds, warmup=3),
    }
