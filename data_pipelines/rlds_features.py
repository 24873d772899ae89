"""The TFDS features every RLDS step here carries besides its observation and action."""

import numpy as np
import tensorflow_datasets as tfds


def standard_step_features() -> dict:
    """reward, discount, is_first / is_last / is_terminal and the language instruction of a step."""
    return {
        "reward": tfds.features.Scalar(dtype=np.float32),
        "discount": tfds.features.Scalar(dtype=np.float32),
        "is_first": tfds.features.Scalar(dtype=np.bool_),
        "is_last": tfds.features.Scalar(dtype=np.bool_),
        "is_terminal": tfds.features.Scalar(dtype=np.bool_),
        "language_instruction": tfds.features.Text(),
    }
