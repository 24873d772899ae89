"""The SigLIP vision tower from a directory written by transformers (`SiglipVisionModel` or `SiglipModel`).

    siglip = load_siglip_vision("/path/to/siglip-so400m-patch14-224")
    outputs = siglip.encode_image(pixels_BHWC)   # {"last_hidden_state"[, "pooler_output"]}

Pixels are normalized as the checkpoint's preprocessor does it (SigLIP: (x - 0.5) / 0.5).
transformers 4.x writes a SiglipVisionModel's tensors under `vision_model.`, 5.x without a prefix;
both load. Values config.json leaves out take transformers' SiglipVisionConfig defaults.
"""

import jax
import jax.numpy as jnp

from octo_like.hf.files import CheckpointTensors, load_flax_params, read_config, square_size
from octo_like.model.vision.siglip import SiglipVisionConfig, SiglipVisionTransformer

# transformers' SiglipVisionConfig defaults (what save_pretrained omits).
_VISION_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=16,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
    vision_use_head=True,
)
_MODEL_TYPES = ("siglip_vision_model", "siglip")
# Where the vision tower's tensors sit: SiglipVisionModel (5.x, 4.x) and SiglipModel.
VISION_PREFIXES = ("", "vision_model.")


def siglip_vision_config_from_dict(raw: dict, where: str) -> SiglipVisionConfig:
    """A transformers vision config dict (possibly with omitted defaults) -> SiglipVisionConfig."""
    vision = {**_VISION_DEFAULTS, **raw}
    sizes = {key: square_size(vision[key], key, f"SigLIP config '{where}'") for key in ("image_size", "patch_size")}
    config = SiglipVisionConfig(
        hidden_size=vision["hidden_size"],
        num_layers=vision["num_hidden_layers"],
        num_heads=vision["num_attention_heads"],
        intermediate_size=vision["intermediate_size"],
        hidden_act=vision["hidden_act"],
        layer_norm_eps=vision["layer_norm_eps"],
        num_channels=vision["num_channels"],
        use_head=bool(vision["vision_use_head"]),
        **sizes,
    )
    config.check(f"SigLIP config '{where}'")
    return config


def _config_and_prefixes(checkpoint_dir: str) -> tuple[SiglipVisionConfig, tuple[str, ...]]:
    """The tower's config and where its tensors sit: a SiglipModel (model_type "siglip") nests the
    vision config and also holds the text tower and logit scale/bias, so only `vision_model.*` is read."""
    path, raw = read_config(checkpoint_dir, "SigLIP", _MODEL_TYPES)
    if raw["model_type"] == "siglip":
        return siglip_vision_config_from_dict(raw.get("vision_config", {}), path), VISION_PREFIXES[1:]
    return siglip_vision_config_from_dict(raw, path), VISION_PREFIXES


def siglip_vision_config_from_hf(checkpoint_dir: str) -> SiglipVisionConfig:
    return _config_and_prefixes(checkpoint_dir)[0]


def siglip_vision_param_shapes(config: SiglipVisionConfig) -> dict:
    pixels = jnp.zeros((1, config.image_size, config.image_size, config.num_channels), jnp.float32)
    return jax.eval_shape(SiglipVisionTransformer(config).init, jax.random.key(0), pixels)["params"]


class LoadedSiglipVision:
    def __init__(self, config: SiglipVisionConfig, params: dict):
        self.config = config
        self.params = params
        self.module = SiglipVisionTransformer(config)
        self._apply = jax.jit(self.module.apply)

    def encode_image(self, pixels_BHWC) -> dict[str, jax.Array]:
        return self._apply({"params": self.params}, jnp.asarray(pixels_BHWC))


def load_siglip_vision(path: str, dtype=jnp.float32) -> LoadedSiglipVision:
    """A SiglipVisionModel (or SiglipModel) directory: config.json and model.safetensors (or shards and their index)."""
    config, prefixes = _config_and_prefixes(path)
    params = load_flax_params(
        CheckpointTensors(path, "SigLIP checkpoint"),
        siglip_vision_param_shapes(config),
        prefixes=prefixes,
        ignored_suffixes=("position_ids",),
        dtype=dtype,
        what="SigLIP checkpoint",
    )
    return LoadedSiglipVision(config, params)
