"""PaliGemma in Flax against transformers (tests/fixtures/paligemma_tiny, written by
scripts/fixtures/make_paligemma_reference.py): prefix-LM and causal logits, every tensor naming."""

import os
import re
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from octo_like.hf.paligemma import load_paligemma
from octo_like.utils.errors import InputError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "paligemma_tiny")


def differences(directory):
    reference = np.load(os.path.join(FIXTURE, "reference.npz"))
    model = load_paligemma(directory)
    inputs = reference["pixels"], reference["input_ids"], reference["attention_mask"]
    prefix_lm = np.asarray(model.logits(*inputs, reference["token_type_ids"]))
    causal = np.asarray(model.logits(*inputs))
    return np.abs(prefix_lm - reference["logits_prefix_lm"]).max(), np.abs(causal - reference["logits_causal"]).max()


def test_prefix_lm_and_causal_logits_match_transformers_in_float32():
    reference = np.load(os.path.join(FIXTURE, "reference.npz"))
    # The two masks give different logits, so matching both tests the mask.
    assert np.abs(reference["logits_prefix_lm"] - reference["logits_causal"]).max() > 0.05
    assert max(differences(FIXTURE)) <= 1e-4


@pytest.mark.parametrize(
    "renames",
    [
        # transformers 4.x: the SigLIP tower kept its `vision_model.` level.
        [(r"^vision_tower\.", "vision_tower.vision_model.")],
        # the 5.x module layout: everything under `model.`, the decoder as `model.language_model.`.
        [
            (r"^vision_tower\.", "model.vision_tower."),
            (r"^language_model\.model\.", "model.language_model."),
            (r"^multi_modal_projector\.", "model.multi_modal_projector."),
        ],
    ],
)
def test_every_transformers_naming_loads_the_same_model(tmp_path, renames):
    directory = str(tmp_path / "paligemma")
    shutil.copytree(FIXTURE, directory)
    tensors = load_file(os.path.join(FIXTURE, "model.safetensors"))
    for pattern, replacement in renames:
        tensors = {re.sub(pattern, replacement, name): value for name, value in tensors.items()}
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    assert max(differences(directory)) <= 1e-4


def test_bad_inputs_and_checkpoints_fail_in_one_line(tmp_path):
    reference = np.load(os.path.join(FIXTURE, "reference.npz"))
    model = load_paligemma(FIXTURE)
    ids = reference["input_ids"].copy()
    ids[0, 0] = 5  # one image token short
    with pytest.raises(InputError, match=r"input_ids hold \[3, 4\] image tokens \(id 89\) per row; expected 4"):
        model.logits(reference["pixels"], ids, reference["attention_mask"])
    directory = str(tmp_path / "paligemma")
    shutil.copytree(FIXTURE, directory)
    tensors = load_file(os.path.join(FIXTURE, "model.safetensors"))
    del tensors["multi_modal_projector.linear.bias"]
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    with pytest.raises(
        InputError, match=r"PaliGemma checkpoint \(multi_modal_projector\) .* missing tensors \[linear.bias\]"
    ):
        load_paligemma(directory)


def test_a_sharded_checkpoint_with_an_index_loads_the_same_model(tmp_path):
    import json

    directory = tmp_path / "paligemma"
    shutil.copytree(FIXTURE, directory)
    tensors = load_file(os.path.join(FIXTURE, "model.safetensors"))
    os.remove(directory / "model.safetensors")
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    for shard, shard_names in shards.items():
        save_file({name: tensors[name] for name in shard_names}, str(directory / shard))
    weight_map = {name: shard for shard, shard_names in shards.items() for name in shard_names}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert max(differences(str(directory))) <= 1e-4
    os.remove(directory / "model-00002-of-00002.safetensors")
    with pytest.raises(
        InputError, match=r"shard '.*model-00002-of-00002.safetensors' named by '.*index.json' does not exist"
    ):
        load_paligemma(str(directory))
