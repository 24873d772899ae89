"""The Gemma decoder in Flax against transformers (tests/fixtures/gemma_tiny, written by
scripts/fixtures/make_gemma_reference.py), config reading across transformers versions, errors."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from octo_like.hf.gemma import gemma_config_from_dict, gemma_config_from_hf, gemma_param_shapes, load_gemma
from octo_like.model.language.gemma import GEMMA_SIZES
from octo_like.utils.errors import InputError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "gemma_tiny")


def test_logits_match_transformers_in_float32_and_bfloat16():
    reference = np.load(os.path.join(FIXTURE, "reference.npz"))
    logits = np.asarray(load_gemma(FIXTURE).logits(reference["input_ids"], reference["attention_mask"]))
    assert logits.shape == reference["logits"].shape
    assert np.abs(logits - reference["logits"]).max() <= 1e-4  # padded positions included
    bf16 = load_gemma(FIXTURE, dtype=jnp.bfloat16)
    logits = np.asarray(bf16.logits(reference["input_ids"], reference["attention_mask"]), np.float32)
    # bf16 weights and activations (RMSNorm and RoPE in float32): within 5% of the logit scale.
    assert np.abs(logits - reference["logits"]).max() <= 0.05 * np.abs(reference["logits"]).max()


def test_configs_of_transformers_4_and_5_read_the_same():
    config = gemma_config_from_hf(FIXTURE)
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.rope_theta) == (4, 2, 8, 500.0)
    raw = json.loads(open(os.path.join(FIXTURE, "config.json")).read())
    legacy = {key: value for key, value in raw.items() if key not in ("rope_parameters", "hidden_act")}
    legacy.update(rope_theta=500.0, hidden_act="gelu")  # 4.x: top-level rope_theta; "gelu" meant tanh-GELU
    assert gemma_config_from_dict(legacy, "legacy") == config


def test_the_2b_config_has_gemma_2bs_parameter_count():
    shapes = gemma_param_shapes(dataclasses.replace(GEMMA_SIZES["2B"], vocab_size=256000))
    assert sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes)) == 2_506_172_416


def test_a_stored_tied_lm_head_is_ignored_and_a_missing_tensor_is_named(tmp_path):
    directory = str(tmp_path / "gemma")
    shutil.copytree(FIXTURE, directory)
    tensors = load_file(os.path.join(FIXTURE, "model.safetensors"))
    save_file(
        {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]},
        os.path.join(directory, "model.safetensors"),
    )
    load_gemma(directory)
    del tensors["model.norm.weight"]
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    with pytest.raises(InputError, match=r"missing tensors \[model.norm.weight\]; unexpected tensors \[\]"):
        load_gemma(directory)


def test_greedy_decoding_with_the_kv_cache_equals_rerunning_the_sequence():
    from octo_like.model.language.gemma import GemmaForCausalLM

    reference = np.load(os.path.join(FIXTURE, "reference.npz"))
    gemma = load_gemma(FIXTURE)
    ids, mask = (
        jnp.asarray(reference["input_ids"]),
        jnp.asarray(reference["attention_mask"]),
    )  # rows of 10, 6 and 3 tokens

    def decode(use_cache):
        return jax.jit(
            lambda params: gemma.module.apply(
                {"params": params}, ids, mask, 6, use_cache, method=GemmaForCausalLM.greedy_decode
            )
        )(gemma.params)

    cached, rerun = decode(True), decode(False)
    assert cached.shape == (3, 6)
    np.testing.assert_array_equal(cached, rerun)
    # The first token is the argmax of transformers' logits at each prompt's last real token.
    last = reference["attention_mask"].sum(1) - 1
    np.testing.assert_array_equal(cached[:, 0], reference["logits"][np.arange(3), last].argmax(-1))
