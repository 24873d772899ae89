"""DLataset: a thin, deterministic wrapper over `tf.data` for trajectory datasets.

The pipeline has two levels. A *trajectory* is a dict of tensors that all share a leading length
axis N (one entry per step); `traj_map` transforms whole trajectories. `flatten` turns trajectories
into *frames* (one element per step) and `frame_map` transforms frames. Methods return new
DLatasets and check the level they are called at, so a frame transform cannot be applied to
trajectories by mistake.

Randomness is explicit: a map given a `seed` receives a per-element stateless seed (int64[2]) drawn
from `tf.data.Dataset.random(seed)`, zipped in order with the data. Together with ordered parallel
maps (`deterministic=True`) and fixed interleave cycle lengths, the same seed gives the same
elements in the same order however many threads run the maps.

A DLataset read from RLDS remembers its TFRecord files: when reading fails on damaged data
(tf.errors.DataLossError), the iterator reads each file again to name the damaged one.
"""

import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds

from octo_like.utils.errors import InputError

AUTOTUNE = tf.data.AUTOTUNE
# Frames of this many trajectories are interleaved by `flatten`. Fixed (not AUTOTUNE, which follows
# the core count) so that the frame order does not depend on the machine.
DEFAULT_FLATTEN_CYCLE_LENGTH = 16


def _deterministic_options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    return options


@dataclasses.dataclass(frozen=True)
class RecordFiles:
    """The TFRecord files one dataset reads (re-read only to name a damaged one after a read fails)."""

    dataset_name: str
    directory: str
    paths: tuple[str, ...]


def _tf_error_summary(error: tf.errors.OpError) -> str:
    """The reason of a TF runtime error, without its "{{function_node ...}}" and "[Op:...]" decorations."""
    return " ".join(re.sub(r"\{\{.*?\}\}|\[Op:.*", "", error.message).split())


def _damaged_file(paths: tuple[str, ...]) -> tuple[str, str] | None:
    """(path, reason) of the first file that fails a full read with TFRecord CRC checks, else None."""
    for path in paths:
        try:
            tf.data.TFRecordDataset(path).reduce(0, lambda count, _: count + 1)
        except tf.errors.DataLossError as error:
            return path, _tf_error_summary(error)
    return None


def _broadcast_episode_metadata(episode: dict) -> dict:
    """RLDS episode -> trajectory dict: the steps, plus episode metadata repeated for every step."""
    traj = dict(episode["steps"])
    length = tf.shape(tf.nest.flatten(traj)[0])[0]
    if "episode_metadata" in episode:
        traj["traj_metadata"] = tf.nest.map_structure(
            lambda value: tf.repeat(value[None], length, axis=0), episode["episode_metadata"]
        )
    return traj


class DLataset:
    """A `tf.data.Dataset` of trajectories or frames with level-checked, seedable maps."""

    def __init__(
        self, dataset: tf.data.Dataset, *, is_flattened: bool = False, sources: tuple[RecordFiles, ...] = ()
    ):
        self.dataset = dataset.with_options(_deterministic_options())
        self.is_flattened = is_flattened
        self.sources = sources

    def _wrap(self, dataset: tf.data.Dataset, is_flattened: bool | None = None) -> "DLataset":
        return DLataset(
            dataset, is_flattened=self.is_flattened if is_flattened is None else is_flattened, sources=self.sources
        )

    @property
    def name(self) -> str:
        """The names of the datasets read, for messages ("" when built from tensors)."""
        return ", ".join(source.dataset_name for source in self.sources)

    @classmethod
    def from_rlds(
        cls,
        builder: tfds.core.DatasetBuilder,
        split: str = "train",
        shuffle: bool = True,
        *,
        seed: int = 0,
        num_parallel_reads: int = AUTOTUNE,
        shard_index: int = 0,
        num_shards: int = 1,
    ) -> "DLataset":
        """Trajectories of an RLDS dataset, images left encoded (decoded later, per frame).

        With `num_shards > 1` (one shard per host), shard `shard_index` reads a disjoint, even part
        of the split; together the shards cover it exactly once.
        """
        if not 0 <= shard_index < num_shards:
            raise InputError(f"shard_index={shard_index} must be in [0, num_shards={num_shards})")
        if num_shards > 1:
            split = tfds.even_splits(split, n=num_shards)[shard_index]
        read_config = tfds.ReadConfig(
            shuffle_seed=seed,
            interleave_cycle_length=num_parallel_reads,
            try_autocache=False,
        )
        # Skipping the decoding of `steps` yields every step feature stacked along the episode axis,
        # with images still as encoded bytes: trajectories stay small until frames are decoded.
        dataset = builder.as_dataset(
            split=split,
            shuffle_files=shuffle,
            read_config=read_config,
            decoders={"steps": tfds.decode.SkipDecoding()},
        )
        dataset = dataset.map(_broadcast_episode_metadata, num_parallel_calls=AUTOTUNE, deterministic=True)
        files = RecordFiles(
            dataset_name=builder.info.full_name,
            directory=str(builder.data_dir),
            paths=tuple(dict.fromkeys(str(f.filename) for f in builder.info.splits[split].file_instructions)),
        )
        return cls(dataset, sources=(files,))

    def _map(self, fn: Callable, num_parallel_calls: int, seed: int | None) -> "DLataset":
        if seed is None:
            dataset = self.dataset.map(fn, num_parallel_calls=num_parallel_calls, deterministic=True)
        else:
            seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
            dataset = tf.data.Dataset.zip((self.dataset, seeds)).map(
                fn, num_parallel_calls=num_parallel_calls, deterministic=True
            )
        return self._wrap(dataset)

    def traj_map(self, fn: Callable, num_parallel_calls: int = AUTOTUNE, *, seed: int | None = None) -> "DLataset":
        """Map over trajectories; with `seed`, `fn(traj, seed_2)` gets a stateless per-element seed."""
        if self.is_flattened:
            raise InputError("traj_map called on a flattened (frame) dataset; use frame_map")
        return self._map(fn, num_parallel_calls, seed)

    def frame_map(self, fn: Callable, num_parallel_calls: int = AUTOTUNE, *, seed: int | None = None) -> "DLataset":
        """Map over frames; with `seed`, `fn(frame, seed_2)` gets a stateless per-element seed."""
        if not self.is_flattened:
            raise InputError("frame_map called on a trajectory dataset; call flatten() first")
        return self._map(fn, num_parallel_calls, seed)

    def flatten(
        self, num_parallel_calls: int = AUTOTUNE, cycle_length: int = DEFAULT_FLATTEN_CYCLE_LENGTH
    ) -> "DLataset":
        """Trajectories -> frames: the steps of `cycle_length` trajectories at a time, interleaved."""
        if self.is_flattened:
            raise InputError("flatten called on a dataset that is already flattened")
        dataset = self.dataset.interleave(
            tf.data.Dataset.from_tensor_slices,
            cycle_length=cycle_length,
            num_parallel_calls=num_parallel_calls,
            deterministic=True,
        )
        return self._wrap(dataset, is_flattened=True)

    def filter(self, predicate: Callable[[Any], tf.Tensor]) -> "DLataset":
        return self._wrap(self.dataset.filter(predicate))

    def shuffle(self, buffer_size: int, seed: int) -> "DLataset":
        return self._wrap(self.dataset.shuffle(buffer_size, seed=seed, reshuffle_each_iteration=True))

    def repeat(self, count: int | None = None) -> "DLataset":
        return self._wrap(self.dataset.repeat(count))

    def take(self, count: int) -> "DLataset":
        return self._wrap(self.dataset.take(count))

    def batch(self, batch_size: int, drop_remainder: bool = True) -> "DLataset":
        return self._wrap(
            self.dataset.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE, deterministic=True)
        )

    def with_ram_budget(self, gigabytes: float) -> "DLataset":
        """Caps the memory tf.data's autotuner may use for buffers (prefetch, parallel maps)."""
        options = tf.data.Options()
        options.autotune.ram_budget = int(gigabytes * 1024**3)
        return self._wrap(self.dataset.with_options(options))

    @staticmethod
    def sample_from_datasets(datasets: list["DLataset"], weights: list[float], seed: int) -> "DLataset":
        """Interleaves datasets at random with the given (normalized) probabilities."""
        levels = {dataset.is_flattened for dataset in datasets}
        if len(levels) != 1:
            raise InputError("sample_from_datasets needs datasets at the same level (all frames or all trajectories)")
        mixed = tf.data.Dataset.sample_from_datasets(
            [dataset.dataset for dataset in datasets], weights=weights, seed=seed, stop_on_empty_dataset=False
        )
        return DLataset(mixed, is_flattened=levels.pop(), sources=tuple(s for d in datasets for s in d.sources))

    @property
    def element_spec(self):
        return self.dataset.element_spec

    def iterator(self, prefetch: int = AUTOTUNE) -> Iterator[Any]:
        """Yields elements as (nested dicts of) numpy arrays.

        A damaged (truncated or corrupted) TFRecord file fails as one InputError naming it.
        """
        return self._naming_damaged_files(self.dataset.prefetch(prefetch).as_numpy_iterator())

    def _naming_damaged_files(self, elements: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from elements
        except tf.errors.DataLossError as error:
            if not self.sources:
                raise  # not read from files: nothing to name
            for source in self.sources:
                damaged = _damaged_file(source.paths)
                if damaged is not None:
                    path, reason = damaged
                    raise InputError(
                        f"TFRecord file '{path}' of dataset '{source.dataset_name}' is truncated or corrupted "
                        f"({reason}); rebuild or re-download the dataset"
                    ) from None
            directories = ", ".join(f"'{source.directory}'" for source in self.sources)
            raise InputError(
                f"reading dataset '{self.name}' from {directories} failed ({_tf_error_summary(error)}), "
                "though each of its TFRecord files reads back whole"
            ) from None

    def __iter__(self) -> Iterator[Any]:
        return self.iterator()
