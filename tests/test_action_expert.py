"""The pi0-style action expert's parts: the joint attention mask and pi0.5's adaptive norms (its
training and cached sampling run through the VLA policy in test_vla.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from octo_like.model.vla.action_expert import suffix_mask


def test_suffix_mask_blocks():
    mask = np.asarray(suffix_mask(jnp.array([[True, True, False]]), jnp.ones((1, 3, 3), bool), horizon=2))[0]
    assert not mask[:3, 3:].any()  # the prefix never sees the suffix
    assert mask[3].tolist() == [True, True, False, True, False, False]  # proprio: valid prefix and itself
    assert (
        mask[4].tolist() == mask[5].tolist() == [True, True, False, True, True, True]
    )  # actions: prefix, proprio, actions


def test_adaptive_rms_blocks_start_as_the_identity_and_depend_on_the_time_once_trained():
    from octo_like.model.language.gemma import GEMMA_SIZES
    from octo_like.model.vla.action_expert import AdaptiveGemmaDecoderLayer

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
