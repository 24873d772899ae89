"""PaliGemma from a directory written by transformers' `PaliGemmaForConditionalGeneration.save_pretrained`.

    paligemma = load_paligemma("/path/to/paligemma-3b-pt-224")
    logits_BLV = paligemma.logits(pixels_BHWC, input_ids_BL, attention_mask_BL, token_type_ids_BL)

Tensor names differ between transformers versions and are all accepted: the vision tower under
`vision_tower.vision_model.` (4.x) or `vision_tower.` (5.x files), or `model.vision_tower.`; the
decoder under `language_model.model.` or `model.language_model.`; the projector under
`multi_modal_projector.` or `model.multi_modal_projector.`. The lm_head is tied to the embedding.
"""

import jax
import jax.numpy as jnp

from octo_like.hf.files import CheckpointTensors, load_flax_params, read_config
from octo_like.hf.gemma import gemma_config_from_dict
from octo_like.hf.siglip import siglip_vision_config_from_dict
from octo_like.model.vla.paligemma import PaliGemma, PaliGemmaConfig, check_image_tokens

_PREFIXES = {
    "vision_tower": (
        "vision_tower.",
        "vision_tower.vision_model.",
        "model.vision_tower.",
        "model.vision_tower.vision_model.",
    ),
    "multi_modal_projector": ("multi_modal_projector.", "model.multi_modal_projector."),
    "language_model": ("language_model.model.", "model.language_model.", "language_model."),
}


def paligemma_config_from_hf(checkpoint_dir: str) -> PaliGemmaConfig:
    path, raw = read_config(checkpoint_dir, "PaliGemma", ("paligemma",))
    # PaliGemma builds its own prefix-LM mask; the text config's bidirectional flag is about Gemma alone.
    text = {key: value for key, value in raw.get("text_config", {}).items() if key != "use_bidirectional_attention"}
    vision = {"vision_use_head": False, **raw.get("vision_config", {})}
    image_token_id = raw.get("image_token_id", raw.get("image_token_index", 256000))
    return PaliGemmaConfig(
        siglip_vision_config_from_dict(vision, path), gemma_config_from_dict(text, path), image_token_id
    )


def paligemma_param_shapes(config: PaliGemmaConfig) -> dict:
    vision = config.vision
    pixels = jnp.zeros((1, vision.image_size, vision.image_size, vision.num_channels), jnp.float32)
    ids = jnp.zeros((1, 1), jnp.int32)
    return jax.eval_shape(PaliGemma(config).init, jax.random.key(0), pixels, ids, ids)["params"]


class LoadedPaliGemma:
    def __init__(self, config: PaliGemmaConfig, params: dict):
        self.config = config
        self.params = params
        self.module = PaliGemma(config)
        self._apply = jax.jit(self.module.apply)

    def logits(self, pixels_BHWC, input_ids_BL, attention_mask_BL, token_type_ids_BL=None) -> jax.Array:
        check_image_tokens(input_ids_BL, self.config)
        token_type_ids = None if token_type_ids_BL is None else jnp.asarray(token_type_ids_BL, jnp.int32)
        return self._apply(
            {"params": self.params},
            jnp.asarray(pixels_BHWC),
            jnp.asarray(input_ids_BL, jnp.int32),
            jnp.asarray(attention_mask_BL, jnp.int32),
            token_type_ids,
        )


def load_paligemma_params(path: str, config: PaliGemmaConfig, dtype=jnp.float32) -> dict:
    """The Flax parameters {vision_tower, multi_modal_projector, language_model} of a checkpoint, for `config`."""
    tensors = CheckpointTensors(path, "PaliGemma checkpoint")
    shapes = paligemma_param_shapes(config)
    return {
        part: load_flax_params(
            tensors,
            shapes[part],
            prefixes=prefixes,
            ignored_suffixes=("position_ids",),
            dtype=dtype,
            what=f"PaliGemma checkpoint ({part})",
        )
        for part, prefixes in _PREFIXES.items()
    }


def load_paligemma(path: str, dtype=jnp.float32) -> LoadedPaliGemma:
    """A PaliGemmaForConditionalGeneration directory: config.json and model.safetensors (or shards and their index)."""
    config = paligemma_config_from_hf(path)
    return LoadedPaliGemma(config, load_paligemma_params(path, config, dtype))
