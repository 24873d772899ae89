"""The pi0-style action expert on the tiny PaliGemma: joint attention, cached sampling, flow loss."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from octo_like.hf.paligemma import load_paligemma
from octo_like.model.action_expert import Pi0, sample_flow_time, suffix_mask
from octo_like.utils.errors import InputError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "paligemma_tiny")
H, A, D = 4, 3, 5


@pytest.fixture(scope="module")
def setup():
    paligemma = load_paligemma(FIXTURE)
    reference = np.load(os.path.join(FIXTURE, "reference.npz"))
    # A narrower expert with the VLM's attention geometry (4 heads, 1 key/value head, head size 8).
    expert = dataclasses.replace(paligemma.config.text, hidden_size=16, intermediate_size=32)
    model = Pi0(paligemma.config, expert, action_dim=A, horizon=H)
    inputs = (
        jnp.asarray(reference["pixels"]),
        jnp.asarray(reference["input_ids"]),
        jnp.asarray(reference["attention_mask"]),
    )
    proprio = jax.random.normal(jax.random.key(1), (2, D))
    params = model.init(jax.random.key(0), *inputs, proprio, jnp.zeros((2, H, A)), jnp.ones(2))["params"]
    params = {**params, "paligemma": paligemma.params}  # the VLM from the checkpoint
    return model, params, inputs, proprio


def test_suffix_mask_blocks():
    mask = np.asarray(suffix_mask(jnp.array([[True, True, False]]), jnp.ones((1, 3, 3), bool), horizon=2))[0]
    assert not mask[:3, 3:].any()  # the prefix never sees the suffix
    assert mask[3].tolist() == [True, True, False, True, False, False]  # proprio: valid prefix and itself
    assert (
        mask[4].tolist() == mask[5].tolist() == [True, True, False, True, True, True]
    )  # actions: prefix, proprio, actions


def test_cached_sampling_equals_rerunning_the_prefix_every_step(setup):
    model, params, inputs, proprio = setup

    def sample(use_cache):
        return model.apply({"params": params}, *inputs, proprio, jax.random.key(3), 5, use_cache, method=Pi0.sample)

    cached, rerun = sample(True), sample(False)
    assert cached.shape == (2, H, A)
    np.testing.assert_allclose(cached, rerun, atol=1e-5)


def test_flow_loss_falls_when_training_the_expert(setup):
    model, params, inputs, proprio = setup
    actions = jnp.tile(jnp.linspace(-1, 1, H)[None, :, None], (2, 1, A))
    mask = jnp.ones((2, H, A), bool)

    def loss(params, rng):
        return model.apply({"params": params}, *inputs, proprio, actions, mask, rng, method=Pi0.loss)

    optimizer = optax.adam(3e-3)

    @jax.jit
    def train_step(flow, state, rng):
        value, grads = jax.value_and_grad(lambda flow: loss({**params, "flow": flow}, rng))(flow)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(flow, updates), state, value

    flow, state, losses = params["flow"], optimizer.init(params["flow"]), []
    for step in range(150):
        flow, state, value = train_step(flow, state, jax.random.key(step))
        losses.append(float(value))
    # Only the expert (and its embeddings) trained; the velocity target is a function of x_t and t
    # for these fixed actions, so the loss keeps falling.
    assert np.mean(losses[-20:]) < 0.4 * np.mean(losses[:20])
    times = sample_flow_time(jax.random.key(0), 10000)
    assert (
        0.001 <= float(times.min())
        and float(times.max()) <= 1.0
        and abs(float(times.mean()) - (0.6 * 0.999 + 0.001)) < 0.01
    )


def test_an_expert_with_another_attention_geometry_fails_in_one_line(setup):
    model, params, inputs, proprio = setup
    bad = Pi0(model.paligemma_config, dataclasses.replace(model.expert_config, num_heads=2), action_dim=A, horizon=H)
    with pytest.raises(InputError, match="action expert num_heads=2 must equal the VLM's 4"):
        bad.init(jax.random.key(0), *inputs, proprio, jnp.zeros((2, H, A)), jnp.ones(2))


def test_adaptive_rms_blocks_start_as_the_identity_and_depend_on_the_time_once_trained():
    from octo_like.model.action_expert import AdaptiveGemmaDecoderLayer
    from octo_like.model.language.gemma import GEMMA_SIZES

    config = dataclasses.replace(GEMMA_SIZES["tiny"], hidden_size=16, num_heads=2, head_dim=8, intermediate_size=32)
    layer = AdaptiveGemmaDecoderLayer(config)
    x_BSE, positions_BS = jax.random.normal(jax.random.key(0), (2, 3, 16)), jnp.broadcast_to(jnp.arange(3), (2, 3))
    cond_BE = jax.random.normal(jax.random.key(1), (2, 16))
    attended_BSNH = jax.random.normal(jax.random.key(2), (2, 3, 2, 8))

    def forward(params, cond_BE):
        query, _, _ = layer.apply(
            {"params": params}, x_BSE, positions_BS, cond_BE, method=AdaptiveGemmaDecoderLayer.qkv
        )
        return query, layer.apply(
            {"params": params}, x_BSE, attended_BSNH, cond_BE, method=AdaptiveGemmaDecoderLayer.after_attention
        )

    def both(module, cond_BE):  # touches every parameter
        return module.qkv(x_BSE, positions_BS, cond_BE), module.after_attention(x_BSE, attended_BSNH, cond_BE)

    params = layer.init(jax.random.key(3), cond_BE, method=both)["params"]
    query_a, out_a = forward(params, cond_BE)
    np.testing.assert_array_equal(out_a, x_BSE)  # zero gates: the residual stream passes unchanged
    np.testing.assert_array_equal(query_a, forward(params, -cond_BE)[0])  # zero modulation: the time has no effect yet
    params = jax.tree_util.tree_map(lambda x: x + 0.1, params)
    query_b, out_b = forward(params, cond_BE)
    assert not np.allclose(out_b, x_BSE) and not np.allclose(query_b, forward(params, -cond_BE)[0])
