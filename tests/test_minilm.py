"""MiniLM/BERT encoder: parity with transformers' BertModel, padding invariance, checkpoint checks."""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from octo_like.hf.minilm import bert_config_from_hf, load_bert_params, load_minilm, minilm_param_tree
from octo_like.model.language.minilm import BertEncoder
from octo_like.utils.errors import InputError

REFERENCE_NPZ = os.path.join(os.path.dirname(__file__), "fixtures", "minilm", "reference.npz")
PARITY_TOLERANCE = 1e-4

TINY_CONFIG = {
    "model_type": "bert",
    "hidden_act": "gelu",
    "vocab_size": 11,
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 12,
    "max_position_embeddings": 6,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE_NPZ))


def _tiny_bert_tensors(prefix: str = "") -> dict[str, np.ndarray]:
    """The tensors transformers' BertModel saves for TINY_CONFIG, with random values (torch layouts)."""
    rng = np.random.default_rng(0)
    hidden, intermediate = TINY_CONFIG["hidden_size"], TINY_CONFIG["intermediate_size"]
    shapes = {
        "embeddings.word_embeddings.weight": (TINY_CONFIG["vocab_size"], hidden),
        "embeddings.position_embeddings.weight": (TINY_CONFIG["max_position_embeddings"], hidden),
        "embeddings.token_type_embeddings.weight": (TINY_CONFIG["type_vocab_size"], hidden),
        "embeddings.LayerNorm.weight": (hidden,),
        "embeddings.LayerNorm.bias": (hidden,),
        "pooler.dense.weight": (hidden, hidden),
        "pooler.dense.bias": (hidden,),
    }
    for index in range(TINY_CONFIG["num_hidden_layers"]):
        layer = f"encoder.layer.{index}"
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes |= {f"{layer}.{name}.weight": (hidden, hidden), f"{layer}.{name}.bias": (hidden,)}
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes |= {f"{layer}.{name}.weight": (hidden,), f"{layer}.{name}.bias": (hidden,)}
        shapes |= {
            f"{layer}.intermediate.dense.weight": (intermediate, hidden),
            f"{layer}.intermediate.dense.bias": (intermediate,),
            f"{layer}.output.dense.weight": (hidden, intermediate),
            f"{layer}.output.dense.bias": (hidden,),
        }
    tensors = {prefix + name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
    tensors["embeddings.position_ids"] = np.arange(TINY_CONFIG["max_position_embeddings"])[None, :]
    return tensors


def _write_checkpoint(directory, tensors: dict[str, np.ndarray], config: dict = TINY_CONFIG) -> str:
    with open(directory / "config.json", "w") as file:
        json.dump(config, file)
    save_file(tensors, str(directory / "model.safetensors"))
    return str(directory)


def test_matches_transformers_bert_model(minilm, reference):
    hidden_BLC = np.asarray(minilm.encode(reference["input_ids"], reference["attention_mask"]))
    max_abs_diff = float(np.abs(hidden_BLC - reference["last_hidden_state"]).max())
    print(f"max abs diff vs transformers BertModel: {max_abs_diff:.3g}")
    assert hidden_BLC.shape == reference["last_hidden_state"].shape
    assert hidden_BLC.dtype == np.float32
    assert max_abs_diff <= PARITY_TOLERANCE


def test_encode_texts_tokenizes_like_the_reference(minilm, reference):
    hidden_BLC, attention_mask_BL = minilm.encode_texts(list(reference["texts"]), max_length=16)
    np.testing.assert_array_equal(np.asarray(attention_mask_BL), reference["attention_mask"])
    np.testing.assert_allclose(np.asarray(hidden_BLC), reference["last_hidden_state"], atol=PARITY_TOLERANCE)


def test_padding_does_not_change_real_tokens(minilm):
    text = "pick up the red block"
    hidden_short_BLC, mask_short_BL = minilm.encode_texts([text], max_length=8)
    real = int(mask_short_BL.sum())
    assert real < 8
    # Masked positions hold arbitrary ids, and twice as many of them: the real tokens must not see them.
    input_ids_BL = np.random.default_rng(0).integers(1000, 2000, size=(1, 16)).astype(np.int32)
    input_ids_BL[0, :real] = minilm.tokenizer.encode(text).ids[:real]
    attention_mask_BL = (np.arange(16) < real).astype(np.int32)[None, :]
    hidden_long_BLC = np.asarray(minilm.encode(input_ids_BL, attention_mask_BL))
    np.testing.assert_allclose(hidden_long_BLC[:, :real], np.asarray(hidden_short_BLC)[:, :real], atol=1e-5)


def test_tiny_checkpoint_loads_with_or_without_bert_prefix(tmp_path):
    plain_dir, prefixed_dir = tmp_path / "plain", tmp_path / "prefixed"
    plain_dir.mkdir()
    prefixed_dir.mkdir()
    config, params = load_bert_params(_write_checkpoint(plain_dir, _tiny_bert_tensors()))
    _, prefixed_params = load_bert_params(_write_checkpoint(prefixed_dir, _tiny_bert_tensors("bert.")))
    assert config == bert_config_from_hf(str(plain_dir / "config.json"))
    assert config.num_layers == 2 and config.num_heads == 2
    assert params["layer_1"]["intermediate"]["kernel"].shape == (8, 12)  # torch [12, 8], transposed
    np.testing.assert_array_equal(params["layer_0"]["query"]["kernel"], prefixed_params["layer_0"]["query"]["kernel"])
    module = BertEncoder(config)
    ids_BL = np.ones((2, 6), np.int32)
    assert module.apply({"params": params}, ids_BL, ids_BL).shape == (2, 6, 8)
    with pytest.raises(InputError, match="sequence length 7 exceeds max_position_embeddings 6"):
        module.apply({"params": params}, np.ones((2, 7), np.int32), np.ones((2, 7), np.int32))


def test_missing_tensor_is_one_input_error_line(tmp_path):
    tensors = _tiny_bert_tensors()
    del tensors["encoder.layer.1.attention.self.key.weight"]
    tensors["encoder.layer.1.attention.self.extra.weight"] = np.zeros((8, 8), np.float32)
    with pytest.raises(InputError) as error:
        load_bert_params(_write_checkpoint(tmp_path, tensors))
    message = str(error.value)
    assert "\n" not in message
    assert "missing tensors [encoder.layer.1.attention.self.key.weight]" in message
    assert "unexpected tensors [encoder.layer.1.attention.self.extra.weight]" in message


def test_wrong_tensor_shape_is_an_input_error(tmp_path):
    tensors = _tiny_bert_tensors()
    tensors["encoder.layer.0.output.dense.weight"] = np.zeros((12, 8), np.float32)
    expected = r"encoder\.layer\.0\.output\.dense\.weight has shape \(12, 8\), expected \(8, 12\)"
    with pytest.raises(InputError, match=expected):
        load_bert_params(_write_checkpoint(tmp_path, tensors))


def test_unsupported_config_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="hidden_act is 'relu', expected 'gelu'"):
        load_bert_params(_write_checkpoint(tmp_path, _tiny_bert_tensors(), TINY_CONFIG | {"hidden_act": "relu"}))


def test_missing_paths_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="does-not-exist"):
        load_minilm(str(tmp_path / "does-not-exist"))
    _write_checkpoint(tmp_path, _tiny_bert_tensors())
    with pytest.raises(InputError, match=f"'{tmp_path / 'tokenizer.json'}' does not exist"):
        load_minilm(str(tmp_path))
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(InputError, match="model.safetensors"):
        minilm_param_tree(str(tmp_path))
