"""The check every text encoder makes of its inputs before embedding them."""

import jax

from octo_like.utils.errors import InputError


def check_text_inputs(input_ids_BL: jax.Array, attention_mask_BL: jax.Array, max_position_embeddings: int) -> None:
    """ids and mask of the same [batch, length] shape, no longer than the position table."""
    if input_ids_BL.ndim != 2 or input_ids_BL.shape != attention_mask_BL.shape:
        raise InputError(
            f"input_ids {tuple(input_ids_BL.shape)} and attention_mask {tuple(attention_mask_BL.shape)} "
            "must both be [batch, length]"
        )
    if input_ids_BL.shape[1] > max_position_embeddings:
        raise InputError(
            f"sequence length {input_ids_BL.shape[1]} exceeds max_position_embeddings {max_position_embeddings}"
        )
