"""Fits a FAST action tokenizer (DCT + BPE) on the action chunks of a config's dataset.

    python scripts/fit_fast.py --config experiments/configs/metaworld_scratch.py:diffusion \
        --config.dataset.mixture=metaworld/quickstart --output_dir=runs/fast_metaworld \
        [--vocab_size=1024 --scale=10 --max_chunks=20000]

Reads training batches (normalized actions, the last timestep's chunk of every window; padding
past an episode's end is the pipeline's own) until --max_chunks chunks, trains the BPE on their
scaled, rounded DCT coefficients and writes OUTPUT_DIR/tokenizer.json and OUTPUT_DIR/fast.json
(horizon, action dimensions, scale). Prints how many tokens a chunk takes (mean, max) and the
round-trip error of the rounding, as JSON.
"""

import json

import numpy as np
from absl import flags
from ml_collections import config_flags
from tqdm import tqdm

from octo_like.utils.cli import run_config_cli
from octo_like.utils.errors import InputError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config: path.py[:variant].", lock_config=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where tokenizer.json and fast.json go.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 1024, "BPE vocabulary size (at least the 511 coefficient values).")
_SCALE = flags.DEFINE_float("scale", 10.0, "DCT coefficients are multiplied by this before rounding.")
_MAX_CHUNKS = flags.DEFINE_integer("max_chunks", 20000, "How many action chunks to fit on.")


def main(argv):
    if len(argv) > 1:
        raise InputError(f"unexpected arguments {argv[1:]}; only flags are accepted")
    if _CONFIG.value is None or _OUTPUT_DIR.value is None:
        raise InputError("--config and --output_dir are required")
    if _SCALE.value <= 0 or _MAX_CHUNKS.value < 1:
        raise InputError(f"--scale={_SCALE.value} and --max_chunks={_MAX_CHUNKS.value} must be positive")
    # The data pipeline imports TensorFlow (seconds): only after the flags are checked, so a bad flag fails at once.
    from octo_like.data.mixtures import make_named_mixture
    from octo_like.model.vla.action_tokenizers import fit_fast

    dataset, _ = make_named_mixture(train=True, **_CONFIG.value.dataset.to_dict())
    chunks = []
    with tqdm(total=_MAX_CHUNKS.value, desc="Reading action chunks", unit="chunk") as progress:
        for batch in dataset.iterator():
            batch_chunks = np.asarray(batch["action"])[:, -1]
            chunks.append(batch_chunks)
            progress.update(len(batch_chunks))
            if sum(len(c) for c in chunks) >= _MAX_CHUNKS.value:
                break
    chunks_NHA = np.concatenate(chunks)[: _MAX_CHUNKS.value]
    tokenizer = fit_fast(chunks_NHA, _VOCAB_SIZE.value, _SCALE.value)
    tokenizer.save(_OUTPUT_DIR.value)
    lengths = [len(tokenizer.encode(chunk)) for chunk in chunks_NHA[:1000]]
    errors = [np.abs(tokenizer.decode(tokenizer.encode(chunk))[0] - chunk).max() for chunk in chunks_NHA[:1000]]
    print(
        json.dumps(
            {
                "output_dir": _OUTPUT_DIR.value,
                "chunks": len(chunks_NHA),
                "horizon": tokenizer.horizon,
                "action_dim": tokenizer.action_dim,
                "vocab_size": tokenizer.vocab_size,
                "tokens_per_chunk_mean": float(np.mean(lengths)),
                "tokens_per_chunk_max": int(np.max(lengths)),
                "coefficients_per_chunk": tokenizer.horizon * tokenizer.action_dim,
                "max_abs_round_trip_error": float(np.max(errors)),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    run_config_cli(main)
