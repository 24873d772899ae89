"""Actions as tokens of a VLM vocabulary: RT-2 / OpenVLA uniform binning, and FAST (DCT + BPE).

Axis letters: B batch, H action horizon (chunk), A action dimensions, S token sequence.

Binning: every action entry (normalized, clipped to [low, high]) falls in one of `n_bins` equal
bins, and bin k is the token `vocab_size - n_bins + k`: the last ids of the vocabulary, which a
pretrained VLM rarely uses (OpenVLA's choice). Decoding gives bin centers, so the round-trip error
is at most half a bin.

FAST (Pertsch et al. 2025): per action dimension, the orthonormal DCT-II of the chunk over time;
coefficients are scaled and rounded to integers and flattened low frequencies first (all
dimensions' first coefficient, then all second ones, ...), so that a truncated sequence keeps the
coarse motion; then a BPE (trained with `tokenizers` on a dataset's chunks, `fit_fast`) compresses
the integer sequence. Decoding a sequence that does not give exactly H * A coefficients returns
zeros and False rather than raising, so a bad sample never crashes a rollout.
"""

import dataclasses
import json
import os

import numpy as np
import tokenizers

from octo_like.model.binning import bin_center, bin_index
from octo_like.utils.errors import InputError
from octo_like.utils.files import write_text_atomically


@dataclasses.dataclass(frozen=True)
class ActionBins:
    vocab_size: int
    n_bins: int = 256
    low: float = -1.0
    high: float = 1.0

    def encode(self, actions, xp=np):
        """float [..., A] -> int32 token ids [..., A] in [vocab_size - n_bins, vocab_size); `xp`: numpy or jax.numpy."""
        bins = bin_index(actions, self.low, self.high, self.n_bins, xp)
        return (self.vocab_size - self.n_bins + bins).astype(xp.int32)

    def decode(self, token_ids, xp=np):
        """Token ids -> bin centers; ids outside the action range are clipped into it."""
        bins = xp.clip(xp.asarray(token_ids) - (self.vocab_size - self.n_bins), 0, self.n_bins - 1)
        return bin_center(bins, self.low, self.high, self.n_bins, xp)


def dct_matrix(length: int) -> np.ndarray:
    """The orthonormal DCT-II matrix [K, H]: coefficients_K = M @ signal_H, and signal_H = M.T @ coefficients_K."""
    k, n = np.arange(length)[:, None], np.arange(length)[None, :]
    matrix = np.sqrt(2.0 / length) * np.cos(np.pi * (2 * n + 1) * k / (2 * length))
    matrix[0] /= np.sqrt(2.0)
    return matrix


# Integers become characters of a private-use block, so that BPE merges runs of coefficients.
_FIRST_CODEPOINT = 0xE000
_MAX_MAGNITUDE = 255  # |coefficient| after scaling; larger ones are clipped


def _as_text(coefficients: np.ndarray) -> str:
    return "".join(chr(_FIRST_CODEPOINT + _MAX_MAGNITUDE + int(value)) for value in coefficients)


class FASTTokenizer:
    """Action chunks [H, A] <-> token ids (of the BPE vocabulary, 0 .. vocab_size - 1)."""

    def __init__(self, bpe: tokenizers.Tokenizer, horizon: int, action_dim: int, scale: float):
        self.bpe, self.horizon, self.action_dim, self.scale = bpe, horizon, action_dim, scale
        self._dct = dct_matrix(horizon)

    @property
    def vocab_size(self) -> int:
        return self.bpe.get_vocab_size()

    def coefficients(self, chunk_HA: np.ndarray) -> np.ndarray:
        """int [H * A]: scaled, rounded DCT coefficients, low frequencies first."""
        chunk_HA = np.asarray(chunk_HA, np.float64)
        if chunk_HA.shape != (self.horizon, self.action_dim):
            raise InputError(
                f"action chunk has shape {chunk_HA.shape}; the FAST tokenizer was fit on ({self.horizon}, "
                f"{self.action_dim})"
            )
        coefficients_KA = np.rint(self._dct @ chunk_HA * self.scale).astype(np.int64)
        return np.clip(coefficients_KA, -_MAX_MAGNITUDE, _MAX_MAGNITUDE).reshape(-1)

    def chunk(self, coefficients: np.ndarray) -> np.ndarray:
        """The inverse of `coefficients` (up to the rounding): float32 [H, A]."""
        coefficients_KA = np.asarray(coefficients, np.float64).reshape(self.horizon, self.action_dim) / self.scale
        return (self._dct.T @ coefficients_KA).astype(np.float32)

    def encode(self, chunk_HA: np.ndarray) -> list[int]:
        return self.bpe.encode(_as_text(self.coefficients(chunk_HA))).ids

    def decode_coefficients(self, token_ids) -> tuple[np.ndarray, bool]:
        """(int coefficients [H * A], True), or (zeros, False) when the ids do not spell exactly H * A of them."""
        invalid = np.zeros(self.horizon * self.action_dim, np.int64), False
        try:
            text = "".join(self.bpe.id_to_token(int(token_id)) or "\0" for token_id in token_ids)
        except (TypeError, ValueError, OverflowError):
            return invalid
        values = [ord(character) - _FIRST_CODEPOINT - _MAX_MAGNITUDE for character in text]
        if len(values) != self.horizon * self.action_dim or any(abs(value) > _MAX_MAGNITUDE for value in values):
            return invalid
        return np.asarray(values, np.int64), True

    def decode(self, token_ids) -> tuple[np.ndarray, bool]:
        """(chunk [H, A], True), or (zeros, False) when the ids are not a valid chunk."""
        coefficients, valid = self.decode_coefficients(token_ids)
        if not valid:
            return np.zeros((self.horizon, self.action_dim), np.float32), False
        return self.chunk(coefficients), True

    def save(self, directory: str) -> None:
        """tokenizer.json (the BPE) and fast.json (horizon, action_dim, scale), each written atomically."""
        os.makedirs(directory, exist_ok=True)
        write_text_atomically(os.path.join(directory, "tokenizer.json"), self.bpe.to_str())
        settings = {"horizon": self.horizon, "action_dim": self.action_dim, "scale": self.scale}
        write_text_atomically(os.path.join(directory, "fast.json"), json.dumps(settings, indent=2))

    @classmethod
    def load(cls, directory: str) -> "FASTTokenizer":
        for name in ("tokenizer.json", "fast.json"):
            if not os.path.isfile(os.path.join(directory, name)):
                raise InputError(
                    f"'{directory}' is not a FAST tokenizer: it has no {name} (write one with scripts/fit_fast.py)"
                )
        with open(os.path.join(directory, "fast.json")) as file:
            settings = json.load(file)
        return cls(tokenizers.Tokenizer.from_file(os.path.join(directory, "tokenizer.json")), **settings)


def fit_fast(chunks_NHA: np.ndarray, vocab_size: int = 1024, scale: float = 10.0) -> FASTTokenizer:
    """A FAST tokenizer whose BPE is trained on these (normalized) action chunks."""
    chunks_NHA = np.asarray(chunks_NHA)
    if chunks_NHA.ndim != 3 or len(chunks_NHA) == 0:
        raise InputError(f"action chunks have shape {chunks_NHA.shape}; expected [N > 0, horizon, action_dim]")
    _, horizon, action_dim = chunks_NHA.shape
    alphabet = [chr(_FIRST_CODEPOINT + value) for value in range(2 * _MAX_MAGNITUDE + 1)]
    # Every coefficient value is a base token (so any chunk encodes), and merges come from the data.
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=max(vocab_size, len(alphabet)), initial_alphabet=alphabet, show_progress=False, max_token_length=8
    )
    untrained = FASTTokenizer(bpe, horizon, action_dim, scale)
    texts = (_as_text(untrained.coefficients(chunk)) for chunk in chunks_NHA)
    bpe.train_from_iterator(texts, trainer)
    return FASTTokenizer(bpe, horizon, action_dim, scale)
