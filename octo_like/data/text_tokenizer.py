"""Language tokenization inside the tf.data pipeline, with the `tokenizers` library.

Instructions become fixed-length `input_ids`/`attention_mask` (int32 [..., max_length]) so batches
have static shapes. A dataset has few distinct instructions, so encodings are cached by string.
"""

import tensorflow as tf

from octo_like.utils.text_tokenizer import FixedLengthTokenizer


class TextTokenizer(FixedLengthTokenizer):
    """The pipeline's tokenizer: `FixedLengthTokenizer` plus tokenization of tf.string tensors."""

    def tf_tokenize(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
        """tf.string [...] -> {"input_ids", "attention_mask"}: int32 [..., max_length] (graph mode)."""
        ids, mask = tf.numpy_function(self._encode_bytes, [texts], [tf.int32, tf.int32], stateful=False)
        shape = texts.shape.concatenate([self.max_length])
        ids.set_shape(shape)
        mask.set_shape(shape)
        return {"input_ids": ids, "attention_mask": mask}
