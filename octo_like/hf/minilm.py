"""all-MiniLM-L6-v2 (any transformers BERT checkpoint) -> the Flax encoder of octo_like.model.language.minilm.

config, params = load_bert_params(checkpoint_dir)   # config.json + model.safetensors
encoder = load_minilm()                              # the installed all-MiniLM-L6-v2, with its tokenizer
hidden_BLC, mask_BL = encoder.encode_texts(["open the drawer"])
"""

import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import tokenizers
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors import safe_open

from octo_like.hf.files import listed, required_file
from octo_like.model.language.minilm import BertConfig, BertEncoder
from octo_like.utils.assets import installed_minilm_dir
from octo_like.utils.errors import InputError
from octo_like.utils.text_tokenizer import FixedLengthTokenizer

# config.json key (as transformers writes it) -> BertConfig field.
_CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "layer_norm_eps": "layer_norm_eps",
}

# Flax module name -> transformers module name, for the embeddings and inside `encoder.layer.<i>`.
_EMBEDDING_TORCH_NAMES = {
    "word_embeddings": "word_embeddings",
    "position_embeddings": "position_embeddings",
    "token_type_embeddings": "token_type_embeddings",
    "embedding_layer_norm": "LayerNorm",
}
_LAYER_TORCH_NAMES = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "attention_layer_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
    "output_layer_norm": "output.LayerNorm",
}
_LEAF_TORCH_NAMES = {"embedding": "weight", "kernel": "weight", "scale": "weight", "bias": "bias"}

# Tensors a BERT checkpoint may hold that the last hidden states do not use: the position-id
# buffer, the pooler and the pretraining heads (`cls.*`, next to a `bert.`-prefixed encoder).
_UNUSED_TENSOR_PREFIXES = ("embeddings.position_ids", "pooler.", "cls.")


def bert_config_from_hf(path: str) -> BertConfig:
    """A transformers BERT `config.json` -> BertConfig; anything this encoder cannot run is an InputError."""
    if not os.path.isfile(path):
        raise InputError(f"BERT config '{path}' does not exist; expected a transformers config.json")
    try:
        with open(path) as file:
            raw = json.load(file)
    except json.JSONDecodeError as error:
        raise InputError(f"BERT config '{path}' is not valid JSON: {error}") from None
    missing = [key for key in _CONFIG_KEYS if key not in raw]
    if missing:
        raise InputError(f"BERT config '{path}' lacks keys {missing}")
    # The encoder implements exactly these variants; others would load and silently compute
    # something else.
    for key, supported in (("model_type", "bert"), ("hidden_act", "gelu"), ("position_embedding_type", "absolute")):
        if raw.get(key, supported) != supported:
            raise InputError(f"BERT config '{path}': {key} is '{raw[key]}', expected '{supported}'")
    config = BertConfig(**{field: raw[key] for key, field in _CONFIG_KEYS.items()})
    if config.hidden_size % config.num_heads:
        raise InputError(
            f"BERT config '{path}': hidden_size {config.hidden_size} is not a multiple of "
            f"num_attention_heads {config.num_heads}"
        )
    return config


def _torch_name(flax_path: tuple[str, ...]) -> str:
    """('layer_3', 'query', 'kernel') -> 'encoder.layer.3.attention.self.query.weight'."""
    module, *inner, leaf = flax_path
    if module.startswith("layer_"):
        torch_module = f"encoder.layer.{module.removeprefix('layer_')}.{_LAYER_TORCH_NAMES[inner[0]]}"
    else:
        torch_module = f"embeddings.{_EMBEDDING_TORCH_NAMES[module]}"
    return f"{torch_module}.{_LEAF_TORCH_NAMES[leaf]}"


def load_bert_params(checkpoint_dir: str) -> tuple[BertConfig, dict]:
    """A transformers BERT checkpoint directory (config.json, model.safetensors) -> (config, Flax params).

    Tensor names may carry a `bert.` prefix (checkpoints of BertFor* models). Torch Linear weights
    are [out, in] and are transposed to Flax's [in, out] kernels.
    """
    config = bert_config_from_hf(required_file(checkpoint_dir, "config.json"))
    weights_path = required_file(checkpoint_dir, "model.safetensors")
    dummy_ids = jnp.zeros((1, 1), jnp.int32)
    param_shapes = jax.eval_shape(BertEncoder(config).init, jax.random.key(0), dummy_ids, dummy_ids)["params"]
    expected = {_torch_name(path): (path, shape) for path, shape in flatten_dict(param_shapes).items()}
    with safe_open(weights_path, framework="numpy") as file:
        stored_names = {name.removeprefix("bert."): name for name in file.keys()}
        missing = sorted(expected.keys() - stored_names.keys())
        unexpected = sorted(
            name for name in stored_names.keys() - expected.keys() if not name.startswith(_UNUSED_TENSOR_PREFIXES)
        )
        if missing or unexpected:
            raise InputError(
                f"checkpoint '{weights_path}' does not match its config.json: "
                f"missing tensors [{listed(missing)}]; unexpected tensors [{listed(unexpected)}]"
            )
        flat_params = {}
        for name, (path, param) in expected.items():
            is_kernel = path[-1] == "kernel"
            torch_shape = param.shape[::-1] if is_kernel else param.shape
            tensor = file.get_tensor(stored_names[name])
            if tensor.shape != torch_shape:
                raise InputError(
                    f"checkpoint '{weights_path}': tensor {name} has shape {tensor.shape}, "
                    f"expected {torch_shape} from config.json"
                )
            flat_params[path] = jnp.asarray(tensor.T if is_kernel else tensor, jnp.float32)
    return config, unflatten_dict(flat_params)


def minilm_param_tree(path: str | None = None) -> dict:
    """Just the pretrained Flax params (default: the installed all-MiniLM-L6-v2), for a policy's init."""
    return load_bert_params(installed_minilm_dir() if path is None else path)[1]


class MiniLM:
    """A loaded encoder: config, params, module, tokenizer, and jitted encoding."""

    def __init__(self, config: BertConfig, params: dict, tokenizer_json: str):
        self.config = config
        self.params = params
        self.module = BertEncoder(config)
        self.tokenizer = tokenizers.Tokenizer.from_file(tokenizer_json)
        self._tokenizer_json = tokenizer_json
        self._apply = jax.jit(self.module.apply)
        # One per max_length, separate from `self.tokenizer` so that its settings stay as loaded.
        self._fixed_length_tokenizers: dict[int, FixedLengthTokenizer] = {}

    def encode(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """int [B, L] ids and 0/1 mask -> float32 [B, L, hidden_size] last hidden states."""
        input_ids_BL = jnp.asarray(input_ids, jnp.int32)
        return self._apply({"params": self.params}, input_ids_BL, jnp.asarray(attention_mask, jnp.int32))

    def encode_texts(self, texts: Sequence[str], max_length: int = 16) -> tuple[jax.Array, jax.Array]:
        """Strings -> (hidden [B, max_length, hidden_size], attention_mask int32 [B, max_length]).

        Tokenizes with the data pipeline's FixedLengthTokenizer, so the ids match the batches'.
        """
        if isinstance(texts, str) or not texts:
            raise InputError(f"texts must be a non-empty list of strings, got {texts!r}")
        if max_length not in self._fixed_length_tokenizers:
            self._fixed_length_tokenizers[max_length] = FixedLengthTokenizer(self._tokenizer_json, max_length)
        tokens = self._fixed_length_tokenizers[max_length](list(texts))
        return self.encode(tokens["input_ids"], tokens["attention_mask"]), jnp.asarray(tokens["attention_mask"])


def load_minilm(path: str | None = None) -> MiniLM:
    """A checkpoint directory with config.json, model.safetensors and tokenizer.json (default: the installed one)."""
    checkpoint_dir = installed_minilm_dir() if path is None else path
    tokenizer_path = required_file(checkpoint_dir, "tokenizer.json")
    config, params = load_bert_params(checkpoint_dir)
    return MiniLM(config, params, tokenizer_path)
