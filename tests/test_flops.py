"""FLOPs counted on the jaxpr: products and convolutions exactly, a scanned body once per trip, so a
scanned transformer and its unrolled twin count the same."""

import jax
import jax.numpy as jnp
from test_transformer import MODEL, READOUTS, make_inputs

from octo_like.model.scratch.transformer import BlockTransformer
from octo_like.utils.flops import matmul_flops


def test_products_and_convolutions_are_counted_exactly():
    x_BKC, w_CD = jnp.ones((3, 5, 7)), jnp.ones((7, 11))
    assert matmul_flops(lambda x, w: x @ w, x_BKC, w_CD) == 2 * 3 * 5 * 7 * 11
    # Gradients: the forward product and one product per input.
    assert matmul_flops(jax.grad(lambda x, w: jnp.sum(x @ w), argnums=(0, 1)), x_BKC, w_CD) == 3 * 2 * 3 * 5 * 7 * 11

    image_NHWC, kernel_HWIO = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 2, 6))
    conv = jax.lax.conv_general_dilated(
        image_NHWC, kernel_HWIO, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2
    )
    assert conv.shape == (2, 8, 8, 6)
    flops = matmul_flops(
        lambda x, k: jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2
        ),
        image_NHWC,
        kernel_HWIO,
    )
    assert flops == 2 * (2 * 8 * 8 * 6) * (3 * 3 * 2)  # per output: a 3x3 window over its group's 2 inputs


def test_a_scanned_body_counts_once_per_trip():
    w_CC = jnp.ones((4, 4))

    def scanned(x_C):
        return jax.lax.scan(lambda x, _: (x @ w_CC, None), x_C, None, length=5)[0]

    def branch(x_C, which):
        return jax.lax.cond(which, lambda x: x @ w_CC @ w_CC, lambda x: x @ w_CC, x_C)

    assert matmul_flops(scanned, jnp.ones(4)) == 5 * 2 * 4 * 4
    assert matmul_flops(jax.jit(scanned), jnp.ones(4)) == 5 * 2 * 4 * 4
    assert matmul_flops(branch, jnp.ones(4), True) == 2 * 2 * 4 * 4  # the dearer branch


def test_scanned_and_unrolled_transformers_count_the_same():
    task, obs = make_inputs()
    counts = []
    for scan_layers in (False, True):
        model = BlockTransformer(**dict(MODEL, num_layers=3), scan_layers=scan_layers)
        variables = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), task, obs, READOUTS, train=False))

        def loss(params, m=model):
            outputs = m.apply({"params": params}, task, obs, READOUTS, train=False, readouts_only=True)
            return sum(jnp.sum(g.tokens) for g in outputs[2].values())

        counts.append(matmul_flops(jax.grad(loss), variables["params"]))
    assert counts[0] == counts[1] > 0
