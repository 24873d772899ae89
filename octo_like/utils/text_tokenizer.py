"""Fixed-length text tokenization with the `tokenizers` library (no TensorFlow or JAX)."""

import os
import threading

import numpy as np
import tokenizers

from octo_like.utils.assets import installed_minilm_dir
from octo_like.utils.errors import InputError


class FixedLengthTokenizer:
    """Fixed-length tokenizer from a `tokenizer.json`, or a checkpoint directory holding one
    (default: the installed all-MiniLM-L6-v2).

    Used by the data pipeline (through `octo_like.data.text_tokenizer.TextTokenizer`) and by the policy
    model's `create_tasks`, so an instruction gets the same ids in training and at inference.
    """

    def __init__(self, tokenizer_json: str | None = None, max_length: int = 16):
        if tokenizer_json is None:
            tokenizer_json = installed_minilm_dir()
        if os.path.isdir(tokenizer_json):
            tokenizer_json = os.path.join(tokenizer_json, "tokenizer.json")
        if not os.path.isfile(tokenizer_json):
            raise InputError(f"tokenizer_json '{tokenizer_json}' does not exist; expected a tokenizer.json file")
        self.tokenizer_json = tokenizer_json
        self.max_length = max_length
        self._tokenizer = tokenizers.Tokenizer.from_file(tokenizer_json)
        pad_id = (self._tokenizer.padding or {}).get("pad_id", 0)
        self._tokenizer.enable_padding(length=max_length, pad_id=pad_id)
        self._tokenizer.enable_truncation(max_length)
        self._cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Strings -> {"input_ids", "attention_mask"}: int32 [len(texts), max_length]."""
        ids, mask = self._encode_bytes(np.array([text.encode() for text in texts], dtype=object))
        return {"input_ids": ids, "attention_mask": mask}

    def _encode_bytes(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            missing = sorted({text for text in texts.reshape(-1) if text not in self._cache})
        encodings = self._tokenizer.encode_batch([text.decode() for text in missing])
        with self._lock:
            for text, encoding in zip(missing, encodings):
                self._cache[text] = (
                    np.asarray(encoding.ids, np.int32),
                    np.asarray(encoding.attention_mask, np.int32),
                )
            pairs = [self._cache[text] for text in texts.reshape(-1)]
        shape = (*texts.shape, self.max_length)
        ids = np.stack([p[0] for p in pairs]).reshape(shape) if pairs else np.zeros(shape, np.int32)
        mask = np.stack([p[1] for p in pairs]).reshape(shape) if pairs else np.zeros(shape, np.int32)
        return ids, mask
