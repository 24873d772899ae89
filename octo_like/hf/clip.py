"""CLIP from a directory written by transformers' `CLIPModel.save_pretrained` (+ its tokenizer.json).

    clip = load_clip("/path/to/clip-vit-base-patch16")
    image = clip.encode_image(pixels_BHWC)      # {"image_embeds", "last_hidden_state", "patch_embeds"}
    tokens = clip.tokenize(["open the drawer"])  # {"input_ids", "attention_mask"}, padded to 77
    text = clip.encode_text(tokens["input_ids"], tokens["attention_mask"])  # {"text_embeds", "last_hidden_state", ...}

Pixels are already normalized as the checkpoint's preprocessor does it (`clip.config.vision.image_mean`
and `image_std`, read from preprocessor_config.json when the directory has one). config.json is read
the way transformers reads it: `save_pretrained` leaves out values equal to the class defaults, so
those defaults fill what is missing. Tensor names and layouts map as `octo_like/hf/files.py` says.
"""

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from octo_like.hf.files import CheckpointTensors, load_flax_params, read_config, read_json, square_size
from octo_like.model.vision.clip import (
    OPENAI_IMAGE_MEAN,
    OPENAI_IMAGE_STD,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
)
from octo_like.utils.errors import InputError
from octo_like.utils.text_tokenizer import FixedLengthTokenizer

# transformers' CLIPTextConfig / CLIPVisionConfig defaults (what save_pretrained omits).
_TEXT_DEFAULTS = dict(
    vocab_size=49408,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    bos_token_id=49406,
    eos_token_id=49407,
)
_VISION_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
_TOWER_FIELDS = dict(
    hidden_size="hidden_size",
    num_layers="num_hidden_layers",
    num_heads="num_attention_heads",
    intermediate_size="intermediate_size",
    hidden_act="hidden_act",
    layer_norm_eps="layer_norm_eps",
)
# Tensors a CLIPModel checkpoint may hold that the towers do not read (position-id buffers).
_UNUSED_SUFFIXES = ("embeddings.position_ids",)


def clip_config_from_hf(checkpoint_dir: str) -> CLIPConfig:
    """config.json (+ preprocessor_config.json when present) of a CLIPModel directory -> CLIPConfig."""
    path, raw = read_config(checkpoint_dir, "CLIP", ("clip",))
    text = {**_TEXT_DEFAULTS, **(raw.get("text_config") or raw.get("text_config_dict") or {})}
    vision = {**_VISION_DEFAULTS, **(raw.get("vision_config") or raw.get("vision_config_dict") or {})}
    eos = text["eos_token_id"]
    if isinstance(eos, list):  # transformers allows several; the first is the one the tokenizer appends
        eos = eos[0]
    mean, std = OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD
    preprocessor_path = os.path.join(checkpoint_dir, "preprocessor_config.json")
    if os.path.isfile(preprocessor_path):
        preprocessor = read_json(preprocessor_path, "CLIP preprocessor config")
        mean, std = tuple(preprocessor.get("image_mean", mean)), tuple(preprocessor.get("image_std", std))
    return CLIPConfig(
        vision=CLIPVisionConfig(
            **{field: vision[key] for field, key in _TOWER_FIELDS.items()},
            image_size=square_size(vision["image_size"], "vision_config.image_size", f"CLIP config '{path}'"),
            patch_size=square_size(vision["patch_size"], "vision_config.patch_size", f"CLIP config '{path}'"),
            num_channels=vision["num_channels"],
            image_mean=mean,
            image_std=std,
        ),
        text=CLIPTextConfig(
            **{field: text[key] for field, key in _TOWER_FIELDS.items()},
            vocab_size=text["vocab_size"],
            max_position_embeddings=text["max_position_embeddings"],
            bos_token_id=text["bos_token_id"],
            eos_token_id=eos,
        ),
        projection_dim=raw.get("projection_dim", 512),
    )


def clip_param_shapes(config: CLIPConfig) -> dict:
    vision = config.vision
    pixels = jnp.zeros((1, vision.image_size, vision.image_size, vision.num_channels), jnp.float32)
    ids = jnp.zeros((1, 1), jnp.int32)
    return jax.eval_shape(CLIPModel(config).init, jax.random.key(0), pixels, ids, ids)["params"]


def load_clip_params(checkpoint_dir: str, config: CLIPConfig, dtype=jnp.float32) -> dict:
    """model.safetensors of a CLIPModel directory -> the Flax params of `CLIPModel(config)`."""
    # CLIPModel subclasses with a head keep the model under a `clip.` prefix.
    return load_flax_params(
        CheckpointTensors(checkpoint_dir, "CLIP checkpoint"),
        clip_param_shapes(config),
        prefixes=("", "clip."),
        ignored_suffixes=_UNUSED_SUFFIXES,
        dtype=dtype,
        what="CLIP checkpoint",
    )


class LoadedCLIP:
    """A CLIP checkpoint: config, params, jitted encoders and the checkpoint's tokenizer."""

    def __init__(self, config: CLIPConfig, params: dict, tokenizer_json: str | None):
        self.config = config
        self.params = params
        self.module = CLIPModel(config)
        self.tokenizer_json = tokenizer_json
        self._encode_image = jax.jit(
            lambda params, pixels: self.module.apply({"params": params}, pixels, method=CLIPModel.encode_image)
        )
        self._encode_text = jax.jit(
            lambda params, ids, mask: self.module.apply({"params": params}, ids, mask, method=CLIPModel.encode_text)
        )
        self._tokenizers: dict[int, FixedLengthTokenizer] = {}

    def encode_image(self, pixels_BHWC) -> dict[str, jax.Array]:
        return self._encode_image(self.params, jnp.asarray(pixels_BHWC))

    def encode_text(self, input_ids_BL, attention_mask_BL) -> dict[str, jax.Array]:
        return self._encode_text(
            self.params, jnp.asarray(input_ids_BL, jnp.int32), jnp.asarray(attention_mask_BL, jnp.int32)
        )

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, np.ndarray]:
        """Strings -> int32 [B, max_length] ids and mask (default length: the text tower's maximum)."""
        if self.tokenizer_json is None:
            raise InputError("this CLIP checkpoint has no tokenizer.json")
        max_length = max_length or self.config.text.max_position_embeddings
        if max_length not in self._tokenizers:
            self._tokenizers[max_length] = FixedLengthTokenizer(self.tokenizer_json, max_length)
        return self._tokenizers[max_length](list(texts))


def load_clip(path: str, dtype=jnp.float32) -> LoadedCLIP:
    """A directory with config.json and model.safetensors (and tokenizer.json for `tokenize`)."""
    config = clip_config_from_hf(path)
    tokenizer_json = os.path.join(path, "tokenizer.json")
    return LoadedCLIP(
        config, load_clip_params(path, config, dtype), tokenizer_json if os.path.isfile(tokenizer_json) else None
    )
