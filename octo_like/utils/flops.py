"""FLOPs of a function's matrix products and convolutions, counted on its jaxpr.

XLA's cost analysis of a compiled step counts a loop body once, whatever its trip count: a step
whose layers run under `lax.scan` (`model.transformer.scan_layers`) or whose micro-batches do
(`grad_accumulation_steps`) would look several times cheaper than it is. This count walks the
jaxpr instead and multiplies a scan's body by its length. It counts dot_general and
conv_general_dilated only (2 FLOPs per multiply-add), the convention of model FLOPs utilization;
recomputation under remat is counted as it runs. A `cond` counts its most expensive branch; a
`while` loop (no static trip count) its body once.
"""

import math

import jax
from jax.extend import core as jax_core


def _subjaxprs(value):
    if isinstance(value, jax_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jax_core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _subjaxprs(item)


def _equation_flops(equation) -> int:
    name = equation.primitive.name
    out_shape = equation.outvars[0].aval.shape
    if name == "dot_general":
        (lhs_contracting, _), _ = equation.params["dimension_numbers"]
        lhs_shape = equation.invars[0].aval.shape
        return 2 * math.prod(out_shape) * math.prod(lhs_shape[axis] for axis in lhs_contracting)
    if name == "conv_general_dilated":
        kernel_shape = equation.invars[1].aval.shape
        out_features = kernel_shape[equation.params["dimension_numbers"].rhs_spec[0]]
        # Each output element: one multiply-add per kernel element of its feature group.
        return 2 * math.prod(out_shape) * math.prod(kernel_shape) // out_features
    return 0


def jaxpr_flops(jaxpr) -> int:
    """Matrix-product and convolution FLOPs of `jaxpr` (a Jaxpr or ClosedJaxpr), loops unrolled."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for equation in jaxpr.eqns:
        total += _equation_flops(equation)
        inner = [jaxpr_flops(sub) for value in equation.params.values() for sub in _subjaxprs(value)]
        if inner:
            name = equation.primitive.name
            trips = equation.params["length"] if name == "scan" else 1
            total += max(inner) if name == "cond" else trips * sum(inner)
    return total


def matmul_flops(fn, *args) -> int:
    """FLOPs of one call of `fn(*args)` (jitted or not; args may be ShapeDtypeStructs)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args))
