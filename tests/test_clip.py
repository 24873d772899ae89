"""CLIP in Flax against transformers: the committed tiny checkpoints and their reference outputs
(written by scripts/fixtures/make_clip_reference.py), config reading, and loader errors."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from octo_like.hf.clip import clip_config_from_hf, clip_param_shapes, load_clip
from octo_like.model.vision.clip import CLIP_SIZES
from octo_like.utils.errors import InputError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
OUTPUTS = {
    "image_embeds": ("image", "image_embeds"),
    "vision_last_hidden_state": ("image", "last_hidden_state"),
    "patch_embeds": ("image", "patch_embeds"),
    "text_embeds": ("text", "text_embeds"),
    "text_last_hidden_state": ("text", "last_hidden_state"),
}


def encode(clip, reference):
    return {
        "image": clip.encode_image(reference["pixels"]),
        "text": clip.encode_text(reference["input_ids"], reference["attention_mask"]),
    }


@pytest.mark.parametrize("name", ["tiny", "legacy"])
def test_outputs_match_transformers_in_float32(name):
    directory = os.path.join(FIXTURES, f"clip_{name}")
    reference = np.load(os.path.join(directory, "reference.npz"))
    outputs = encode(load_clip(directory), reference)
    for key, (tower, output) in OUTPUTS.items():
        got = np.asarray(outputs[tower][output])
        assert got.shape == reference[key].shape, key
        assert np.abs(got - reference[key]).max() <= 1e-4, key


def test_bfloat16_stays_within_its_stated_tolerance():
    directory = os.path.join(FIXTURES, "clip_tiny")
    reference = np.load(os.path.join(directory, "reference.npz"))
    clip = load_clip(directory, dtype=jnp.bfloat16)
    assert jax.tree_util.tree_leaves(clip.params)[0].dtype == jnp.bfloat16
    outputs = encode(clip, reference)
    for key, (tower, output) in OUTPUTS.items():
        got = np.asarray(outputs[tower][output], np.float32)
        # bf16 keeps 8 mantissa bits: a relative error of a few 1e-2 after a few layers.
        assert np.abs(got - reference[key]).max() <= 0.05 * np.abs(reference[key]).max() + 0.05, key


@pytest.mark.parametrize("name", ["tiny", "legacy"])
def test_the_checkpoint_tokenizer_gives_the_ids_transformers_gives(name):
    directory = os.path.join(FIXTURES, f"clip_{name}")
    reference = np.load(os.path.join(directory, "reference.npz"))
    tokens = load_clip(directory).tokenize([str(text) for text in reference["texts"]], max_length=16)
    np.testing.assert_array_equal(tokens["attention_mask"], reference["attention_mask"])
    real = reference["attention_mask"].astype(bool)  # padding ids differ and are masked everywhere
    np.testing.assert_array_equal(tokens["input_ids"][real], reference["input_ids"][real])


def test_config_reads_defaults_preprocessing_and_legacy_eos():
    tiny, legacy = (
        clip_config_from_hf(os.path.join(FIXTURES, "clip_tiny")),
        clip_config_from_hf(os.path.join(FIXTURES, "clip_legacy")),
    )
    assert (tiny.vision.patch_size, tiny.vision.image_size, tiny.projection_dim) == (8, 32, 24)
    assert tiny.vision.image_mean == CLIP_SIZES["B/32"].vision.image_mean
    assert legacy.vision.image_std == (0.25, 0.3, 0.35) and legacy.text.eos_token_id == 2
    assert legacy.text.hidden_act == "gelu" and legacy.vision.layer_norm_eps == 1e-6


def test_a_config_with_only_non_default_values_gets_the_transformers_defaults(tmp_path):
    # save_pretrained writes the difference to the class defaults; a B/16 config is mostly defaults.
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "clip",
                "text_config": {},
                "vision_config": {"patch_size": [16, 16]},
            }
        )
    )
    assert clip_config_from_hf(str(tmp_path)) == CLIP_SIZES["B/16"]


def test_named_sizes_have_the_parameter_counts_of_the_openai_releases():
    def count(config):
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(clip_param_shapes(config)))

    # openai/clip-vit-base-patch32, -base-patch16, -large-patch14 as transformers counts them.
    assert count(CLIP_SIZES["B/32"]) == 151_277_313
    assert count(CLIP_SIZES["B/16"]) == 149_620_737
    assert count(CLIP_SIZES["L/14"]) == 427_616_513


def test_missing_unexpected_and_misshapen_tensors_fail_in_one_line(tmp_path):
    directory = str(tmp_path / "clip")
    shutil.copytree(os.path.join(FIXTURES, "clip_tiny"), directory)
    weights_path = os.path.join(directory, "model.safetensors")
    tensors = load_file(weights_path)
    renamed = dict(tensors)
    renamed["text_model.final_norm.weight"] = renamed.pop("text_model.final_layer_norm.weight")
    save_file(renamed, weights_path)
    with pytest.raises(
        InputError,
        match=r"missing tensors \[text_model.final_layer_norm.weight\]; "
        r"unexpected tensors \[text_model.final_norm.weight\]",
    ):
        load_clip(directory)
    misshapen = dict(tensors)
    misshapen["visual_projection.weight"] = np.zeros((24, 40), np.float32)
    save_file(misshapen, weights_path)
    with pytest.raises(
        InputError, match=r"tensor visual_projection.weight has shape \(40, 24\) in Flax layout, expected \(48, 24\)"
    ):
        load_clip(directory)
    with pytest.raises(InputError, match="CLIP checkpoint directory '/nonexistent' does not exist"):
        load_clip("/nonexistent")
    config = json.loads((tmp_path / "clip" / "config.json").read_text())
    (tmp_path / "clip" / "config.json").write_text(json.dumps({**config, "model_type": "siglip"}))
    with pytest.raises(InputError, match="model_type is 'siglip', expected 'clip'"):
        load_clip(directory)


def test_wrong_pixel_shape_fails_in_one_line():
    clip = load_clip(os.path.join(FIXTURES, "clip_tiny"))
    with pytest.raises(InputError, match=r"CLIP pixels have shape \(1, 64, 64, 3\); expected \[B, 32, 32, 3\]"):
        clip.encode_image(np.zeros((1, 64, 64, 3), np.float32))
