"""Checksums of every array of a pytree, and whether every value is finite.

A checkpoint records them at save time and verifies them after a restore, so damage to the files
(a flipped bit, a half-copied shard) is found even where the file format itself does not notice.
They guard against damage, not against someone who rewrites the checksums too.

An array this process holds whole (every single-process run) gets the 128-bit XXH3 hash of its
bytes, on the host: no compilation, about 10 GB/s per core (SHA-256 does 1.5 and would cost a
noticeable part of a save; a checksum against damage needs no cryptographic strength).
An array split over several processes gets `fmix64`, computed where it lives: two 32-bit sums of
murmur3-mixed (value bits, index) words. Integer addition is exact and order-free, so the result
does not depend on how the array is sharded (a checkpoint saved on 8 hosts verifies on 1), and a
changed value always changes the first sum. A checksum is written as "<algorithm>:<hex>" and
verified with the algorithm it names.
"""

import concurrent.futures
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import xxhash
from jax.experimental import multihost_utils

ALGORITHMS = ("xxh3_128", "fmix64")


def _fmix32(h_N: jax.Array) -> jax.Array:
    """murmur3's finalizer, a bijection of uint32 in which every input bit flips each output bit
    with probability about 1/2."""
    h_N = h_N ^ (h_N >> 16)
    h_N = h_N * jnp.uint32(0x85EBCA6B)
    h_N = h_N ^ (h_N >> 13)
    h_N = h_N * jnp.uint32(0xC2B2AE35)
    return h_N ^ (h_N >> 16)


def _plain(x):
    """Typed PRNG keys as their raw key data (what orbax stores)."""
    return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def _fmix64(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(uint32[2] checksum, all values finite) of an array, on its devices."""
    x = _plain(x)
    flat = x.reshape(-1)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[flat.dtype.itemsize]
    words_N = (flat if flat.dtype == jnp.bool_ else jax.lax.bitcast_convert_type(flat, unsigned)).astype(jnp.uint32)
    index_N = jax.lax.iota(jnp.uint32, words_N.shape[0])
    # Bijective in the word for a fixed index: one changed word always changes the first sum.
    hashed_N = _fmix32(words_N ^ (index_N * jnp.uint32(0x9E3779B9)))
    sums = jnp.stack([jnp.sum(hashed_N, dtype=jnp.uint32), jnp.sum(hashed_N * (index_N | 1), dtype=jnp.uint32)])
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
    return sums, finite


@jax.jit
def _fmix64_all(arrays: list[jax.Array]) -> list[tuple[jax.Array, jax.Array]]:
    """`_fmix64` of every array in one program: a train state compiles once, not once per shape."""
    return [_fmix64(x) for x in arrays]


def _fmix64_checksums(arrays: list) -> list[tuple[str, bool]]:
    def on_host(value: jax.Array) -> np.ndarray:
        # Full reductions are replicated: this process's copy is the whole value.
        return np.asarray(value if value.is_fully_addressable else value.addressable_data(0))

    return [
        ("fmix64:" + "".join(f"{int(word):08x}" for word in on_host(sums)), bool(on_host(finite)))
        for sums, finite in _fmix64_all([jnp.asarray(x) for x in arrays])
    ]


def _split_over_processes(x) -> bool:
    return isinstance(x, jax.Array) and not x.is_fully_addressable


def _host_array(x) -> np.ndarray:
    if _split_over_processes(x):
        # Only to verify an XXH3 hash recorded by a single process: the array fit in one host's memory then.
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.ascontiguousarray(np.asarray(_plain(x) if isinstance(x, jax.Array) else x))


def _xxh3_checksum(x, check_finite: bool) -> tuple[str, bool]:
    """("xxh3_128:<hex>", all values finite) of one array, on the host. Without `check_finite`,
    the finiteness test is skipped (reported finite)."""
    array = _host_array(x)
    finite = not check_finite or not np.issubdtype(array.dtype, np.inexact) or bool(np.isfinite(array).all())
    return f"xxh3_128:{xxhash.xxh3_128_hexdigest(array.reshape(-1).view(np.uint8))}", finite


def tree_checksums(
    tree, algorithms: Mapping[str, str] | None = None, check_finite: bool = True
) -> tuple[dict[str, str], list[str]]:
    """({array path: "<algorithm>:<hex>"}, [paths of arrays holding NaN or Inf]) of a pytree of
    arrays; `algorithms` ({path: algorithm}, e.g. from recorded checksums) fixes an array's
    algorithm, otherwise an array split over processes gets fmix64 and any other XXH3;
    `check_finite=False` (verifying a restore, whose values the checksums already pin down) skips
    the host pass's finiteness test and reports none. Every process must call it (an array split
    over processes is reduced jointly)."""
    named = [
        (jax.tree_util.keystr(path, simple=True, separator="/"), leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]
    algorithms = algorithms or {}
    # One job per distinct (array, algorithm): a train state holds the very arrays of the parameters.
    jobs = {}
    for name, leaf in named:
        algorithm = algorithms.get(name) or ("fmix64" if _split_over_processes(leaf) else "xxh3_128")
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"unknown checksum algorithm '{algorithm}' for {name}; expected one of {', '.join(ALGORITHMS)}"
            )
        jobs[(id(leaf), algorithms.get(name))] = (leaf, algorithm)

    by_device = [key for key, (_, algorithm) in jobs.items() if algorithm == "fmix64"]
    gathered = [
        key for key, (leaf, algorithm) in jobs.items() if algorithm == "xxh3_128" and _split_over_processes(leaf)
    ]
    on_host = [
        key for key, (leaf, algorithm) in jobs.items() if algorithm == "xxh3_128" and not _split_over_processes(leaf)
    ]
    # Collectives in the same order on every process; host hashing in threads (xxhash and numpy release the GIL).
    results = dict(zip(by_device, _fmix64_checksums([jobs[key][0] for key in by_device]) if by_device else []))
    results.update({key: _xxh3_checksum(jobs[key][0], check_finite) for key in gathered})
    with concurrent.futures.ThreadPoolExecutor(max(1, min(len(on_host), os.cpu_count() or 1))) as pool:
        results.update(zip(on_host, pool.map(lambda key: _xxh3_checksum(jobs[key][0], check_finite), on_host)))
    outcome = {name: results[(id(leaf), algorithms.get(name))] for name, leaf in named}
    return {name: checksum for name, (checksum, _) in outcome.items()}, [
        name for name, (_, finite) in outcome.items() if not finite
    ]


def first_mismatch(recorded: Mapping[str, str], actual: Mapping[str, str]) -> str | None:
    """The first array path (in sorted order) whose checksum differs or is missing on either side."""
    for name in sorted(set(recorded) | set(actual)):
        if recorded.get(name) != actual.get(name):
            return name
    return None
