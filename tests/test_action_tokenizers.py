"""Action tokens: uniform bins (RT-2 / OpenVLA) and FAST (DCT + BPE): round trips and failure modes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from octo_like.model.vla.action_tokenizers import ActionBins, FASTTokenizer, dct_matrix, fit_fast
from octo_like.utils.errors import InputError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smooth_chunks(n=400, horizon=8, dims=3, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, horizon)[None, :, None]
    return np.sin(2 * np.pi * (t * rng.uniform(0.2, 1, (n, 1, dims)) + rng.uniform(0, 1, (n, 1, dims)))) * rng.uniform(
        0.2, 1, (n, 1, dims)
    )


def test_bins_are_the_last_ids_and_round_trip_within_half_a_bin():
    bins = ActionBins(vocab_size=1000, n_bins=256)
    actions = np.random.default_rng(0).uniform(-1.3, 1.3, (64, 7))
    ids = bins.encode(actions)
    assert ids.min() >= 1000 - 256 and ids.max() <= 999
    assert bins.encode(np.array([-1.0, 1.0])).tolist() == [744, 999]  # the bounds fall in the outer bins
    assert np.abs(bins.decode(ids) - np.clip(actions, -1, 1)).max() <= 1.0 / 256 + 1e-6


def test_dct_matrix_is_orthonormal():
    matrix = dct_matrix(10)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(10), atol=1e-12)


def test_fast_round_trips_integer_coefficients_exactly_and_compresses():
    chunks = smooth_chunks()
    tokenizer = fit_fast(chunks, vocab_size=1024, scale=10.0)
    lengths = []
    for chunk in chunks[:50]:
        ids = tokenizer.encode(chunk)
        lengths.append(len(ids))
        coefficients, valid = tokenizer.decode_coefficients(ids)
        assert valid
        np.testing.assert_array_equal(coefficients, tokenizer.coefficients(chunk))
        decoded, valid = tokenizer.decode(ids)
        # Rounding each of H orthonormal coefficients moves a value by at most sqrt(H) * 0.5 / scale.
        assert valid and np.abs(decoded - chunk).max() <= np.sqrt(8) * 0.5 / 10.0
    assert np.mean(lengths) < 8 * 3 / 2  # smooth chunks: BPE at least halves the 24 coefficients
    # Low frequencies first: the first A coefficients are every dimension's DC term.
    np.testing.assert_array_equal(tokenizer.coefficients(chunks[0])[:3], np.rint(chunks[0].sum(0) / np.sqrt(8) * 10))


def test_fast_decoding_of_invalid_sequences_returns_zeros_and_false():
    tokenizer = fit_fast(smooth_chunks(), vocab_size=1024)
    ids = tokenizer.encode(smooth_chunks()[0])
    for bad in (ids[:-1], ids + ids[:1], [], [tokenizer.vocab_size + 5], [-3], ["x"], [2**70]):
        chunk, valid = tokenizer.decode(bad)
        assert not valid and chunk.shape == (8, 3) and not chunk.any()


def test_fast_saves_and_loads_and_rejects_bad_inputs(tmp_path):
    chunks = smooth_chunks()
    tokenizer = fit_fast(chunks, vocab_size=1024)
    tokenizer.save(str(tmp_path))
    loaded = FASTTokenizer.load(str(tmp_path))
    assert loaded.encode(chunks[3]) == tokenizer.encode(chunks[3]) and loaded.scale == tokenizer.scale
    with pytest.raises(InputError, match=r"action chunk has shape \(4, 3\); the FAST tokenizer was fit on \(8, 3\)"):
        tokenizer.encode(chunks[0][:4])
    with pytest.raises(InputError, match=r"expected \[N > 0, horizon, action_dim\]"):
        fit_fast(np.zeros((0, 8, 3)))
    with pytest.raises(InputError, match="is not a FAST tokenizer: it has no tokenizer.json"):
        FASTTokenizer.load(str(tmp_path / "nothing"))


def test_fit_script_writes_a_tokenizer_that_encodes_the_dataset(synthetic_data_dir, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "scripts/fit_fast.py",
            "--config=experiments/configs/synthetic.py:default",
            f"--config.dataset.data_dir={synthetic_data_dir}",
            f"--output_dir={tmp_path}",
            "--max_chunks=200",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{") :])
    tokenizer = FASTTokenizer.load(str(tmp_path))
    assert report["chunks"] == 200 and (tokenizer.horizon, tokenizer.action_dim) == (
        report["horizon"],
        report["action_dim"],
    )
    assert 0 < report["tokens_per_chunk_mean"] <= report["coefficients_per_chunk"]
