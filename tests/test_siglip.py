"""The SigLIP vision tower in Flax against transformers (tests/fixtures/siglip_vision, written by
scripts/fixtures/make_siglip_reference.py), both tensor namings, and loader errors."""

import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from octo_like.hf.siglip import load_siglip_vision, siglip_vision_config_from_hf
from octo_like.model.vision.siglip import SIGLIP_SIZES
from octo_like.utils.errors import InputError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "siglip_vision")


def max_differences(directory):
    reference = np.load(os.path.join(FIXTURE, "reference.npz"))
    outputs = load_siglip_vision(directory).encode_image(reference["pixels"])
    return {
        key: float(np.abs(np.asarray(outputs[key]) - reference[key]).max())
        for key in ("last_hidden_state", "pooler_output")
    }


def test_outputs_match_transformers_in_float32():
    assert all(difference <= 1e-4 for difference in max_differences(FIXTURE).values())


def copy_with_tensors(tmp_path, rename, extra=None, config_update=None):
    directory = str(tmp_path / "siglip")
    shutil.copytree(FIXTURE, directory)
    tensors = {rename(name): value for name, value in load_file(os.path.join(FIXTURE, "model.safetensors")).items()}
    save_file({**tensors, **(extra or {})}, os.path.join(directory, "model.safetensors"))
    if config_update is not None:
        config = json.loads(open(os.path.join(directory, "config.json")).read())
        with open(os.path.join(directory, "config.json"), "w") as file:
            json.dump(config_update(config), file)
    return directory


def test_transformers_4_names_and_a_full_siglip_model_load_the_same_tower(tmp_path):
    # transformers 4.x saved a SiglipVisionModel under `vision_model.`; a SiglipModel adds the text tower.
    directory = copy_with_tensors(tmp_path, lambda name: f"vision_model.{name}")
    assert all(difference <= 1e-4 for difference in max_differences(directory).values())
    shutil.rmtree(directory)
    directory = copy_with_tensors(
        tmp_path,
        lambda name: f"vision_model.{name}",
        extra={"text_model.head.weight": np.zeros((2, 2), np.float32)},
        config_update=lambda config: {"model_type": "siglip", "vision_config": config},
    )
    assert all(difference <= 1e-4 for difference in max_differences(directory).values())


def test_config_defaults_and_presets():
    config = siglip_vision_config_from_hf(FIXTURE)
    assert (config.hidden_size, config.patch_size, config.image_size, config.use_head) == (32, 8, 32, True)
    assert config.hidden_act == "gelu_pytorch_tanh" and config.layer_norm_eps == 1e-6  # omitted: the defaults
    assert SIGLIP_SIZES["So400m/14"].num_patches == 256 and SIGLIP_SIZES["So400m/14"].hidden_size == 1152


def test_missing_and_unexpected_tensors_fail_in_one_line(tmp_path):
    directory = copy_with_tensors(tmp_path, lambda name: name.replace("head.probe", "head.query"))
    with pytest.raises(InputError, match=r"missing tensors \[head.probe\]; unexpected tensors \[head.query\]"):
        load_siglip_vision(directory)
    with pytest.raises(InputError, match="SigLIP pixels have shape"):
        load_siglip_vision(FIXTURE).encode_image(np.zeros((1, 16, 16, 3), np.float32))
