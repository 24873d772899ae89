"""The Gemma decoder from a directory written by transformers' `GemmaForCausalLM.save_pretrained`.

    gemma = load_gemma("/path/to/gemma-2b")
    logits_BLV = gemma.logits(input_ids_BL, attention_mask_BL)   # causal; right padding

config.json may omit what equals transformers' GemmaConfig defaults; the RoPE base is read from
`rope_parameters` (5.x) or `rope_theta` (4.x), and the legacy `hidden_act="gelu"` means the tanh
approximation, as transformers reads it. With tied embeddings (Gemma's default) a stored
`lm_head.weight` is ignored.
"""

import jax
import jax.numpy as jnp

from octo_like.hf.files import CheckpointTensors, load_flax_params, read_config
from octo_like.model.language.gemma import GemmaConfig, GemmaForCausalLM
from octo_like.utils.errors import InputError

# transformers' GemmaConfig defaults (what save_pretrained omits).
_DEFAULTS = dict(
    vocab_size=256000,
    hidden_size=3072,
    intermediate_size=24576,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=16,
    head_dim=256,
    hidden_act="gelu_pytorch_tanh",
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    attention_bias=False,
)


def gemma_config_from_dict(raw: dict, where: str) -> GemmaConfig:
    """A transformers Gemma config dict (possibly with omitted defaults) -> GemmaConfig."""
    values = {**_DEFAULTS, **raw}
    if values.get("use_bidirectional_attention"):
        raise InputError(f"Gemma config '{where}': use_bidirectional_attention is not supported")
    activation = values.get("hidden_activation") or values["hidden_act"]
    rope = values.get("rope_parameters") or {}
    return GemmaConfig(
        vocab_size=values["vocab_size"],
        hidden_size=values["hidden_size"],
        num_layers=values["num_hidden_layers"],
        num_heads=values["num_attention_heads"],
        num_kv_heads=values["num_key_value_heads"],
        head_dim=values["head_dim"],
        intermediate_size=values["intermediate_size"],
        hidden_act="gelu_pytorch_tanh" if activation == "gelu" else activation,
        rms_norm_eps=values["rms_norm_eps"],
        rope_theta=float(rope.get("rope_theta", values.get("rope_theta", 10000.0))),
        max_position_embeddings=values["max_position_embeddings"],
        attention_bias=bool(values["attention_bias"]),
        tie_word_embeddings=bool(values["tie_word_embeddings"]),
    )


def gemma_config_from_hf(checkpoint_dir: str) -> GemmaConfig:
    path, raw = read_config(checkpoint_dir, "Gemma", ("gemma",))
    return gemma_config_from_dict(raw, path)


def gemma_param_shapes(config: GemmaConfig) -> dict:
    ids = jnp.zeros((1, 1), jnp.int32)
    return jax.eval_shape(GemmaForCausalLM(config).init, jax.random.key(0), ids, ids)["params"]


class LoadedGemma:
    def __init__(self, config: GemmaConfig, params: dict):
        self.config = config
        self.params = params
        self.module = GemmaForCausalLM(config)
        self._apply = jax.jit(self.module.apply)

    def logits(self, input_ids_BL, attention_mask_BL) -> jax.Array:
        return self._apply(
            {"params": self.params}, jnp.asarray(input_ids_BL, jnp.int32), jnp.asarray(attention_mask_BL, jnp.int32)
        )


def load_gemma(path: str, dtype=jnp.float32) -> LoadedGemma:
    """A GemmaForCausalLM directory: config.json and model.safetensors (or shards and their index)."""
    config = gemma_config_from_hf(path)
    ignored = ("lm_head.weight",) if config.tie_word_embeddings else ()
    params = load_flax_params(
        CheckpointTensors(path, "Gemma checkpoint"),
        gemma_param_shapes(config),
        ignored_suffixes=ignored,
        dtype=dtype,
        what="Gemma checkpoint",
    )
    return LoadedGemma(config, params)
