"""LoRA: the merged model equals the base at init, only the low-rank factors train, merging is exact."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

from octo_like.hf.gemma import load_gemma
from octo_like.model.lora import GEMMA_LORA_TARGETS, init_lora, lora_factors, lora_targets, merge_lora
from octo_like.utils.errors import InputError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "gemma_tiny")


@pytest.fixture(scope="module")
def gemma():
    return load_gemma(FIXTURE)


def test_targets_are_gemmas_attention_and_mlp_kernels(gemma):
    targets = lora_targets(gemma.params, GEMMA_LORA_TARGETS)
    assert len(targets) == 2 * 7  # two layers x (q, k, v, o, gate, up, down)
    assert "model/layers_0/self_attn/q_proj/kernel" in targets and not any("embed" in t or "norm" in t for t in targets)
    with pytest.raises(InputError, match="match no kernel"):
        lora_targets(gemma.params, [r"vision/"])


def test_lora_starts_at_the_base_model_trains_only_its_factors_and_merges_exactly(gemma):
    reference = np.load(os.path.join(FIXTURE, "reference.npz"))
    ids, mask = jnp.asarray(reference["input_ids"]), jnp.asarray(reference["attention_mask"])
    lora = init_lora(gemma.params, GEMMA_LORA_TARGETS, rank=4, rng=jax.random.key(0))
    assert lora["model"]["layers_1"]["mlp"]["down_proj"]["kernel"]["a"].shape == (40, 4)

    def apply(params):
        return gemma.module.apply({"params": params}, ids, mask)

    np.testing.assert_array_equal(apply(merge_lora(gemma.params, lora, alpha=8.0)), apply(gemma.params))

    targets = jnp.roll(ids, -1, axis=1)  # next-token prediction on the fixture's ids

    def loss(lora):
        logits = apply(merge_lora(gemma.params, lora, alpha=8.0))
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    optimizer = optax.adam(1e-2)
    state = optimizer.init(lora)
    losses = []
    for _ in range(20):
        value, grads = jax.value_and_grad(loss)(lora)
        updates, state = optimizer.update(grads, state)
        lora = optax.apply_updates(lora, updates)
        losses.append(float(value))
    assert losses[-1] < losses[0] - 0.1
    merged, base = flatten_dict(merge_lora(gemma.params, lora, alpha=8.0)), flatten_dict(gemma.params)
    changed = {"/".join(path) for path in base if not np.array_equal(merged[path], base[path])}
    assert changed == set(lora_factors(lora))  # exactly the adapted kernels; embeddings and norms stay the base's
    factors = lora_factors(lora)["model/layers_0/self_attn/q_proj/kernel"]
    np.testing.assert_allclose(
        merged[("model", "layers_0", "self_attn", "q_proj", "kernel")],
        base[("model", "layers_0", "self_attn", "q_proj", "kernel")] + 2.0 * factors["a"] @ factors["b"],
        atol=1e-6,
    )
    with pytest.raises(InputError, match="LoRA parameters for 'model/nothing/kernel'"):
        merge_lora(gemma.params, {"model": {"nothing": {"kernel": factors}}}, alpha=8.0)
