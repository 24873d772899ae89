"""Mesh construction, sharding rules and sharded-vs-unsharded numerics on 8 forced CPU devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from octo_like.train.mesh import (
    batch_sharding,
    check_batch_size,
    default_fsdp_spec,
    make_mesh,
    param_shardings,
    replicated,
    shard_batch,
    shard_params,
)
from octo_like.utils.errors import InputError

TOLERANCE = 1e-5  # float32 sharded reductions differ from the unsharded ones only in summation order
MIN_SIZE = 256  # small enough that the tiny MLP's kernels are FSDP-sharded


def _one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(InputError) as excinfo:
        call(*args, **kwargs)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "shape, fsdp_size, expected",
    [
        ((1024, 512), 8, P("fsdp", None)),  # largest axis, divisible
        ((512, 512), 8, P(None, "fsdp")),  # tie: the last axis
        ((3, 8000), 8, P(None, "fsdp")),  # 3 does not divide; the long axis does
        ((1001, 24), 8, P(None, "fsdp")),  # the largest axis (1001) is not divisible; the next one is
        ((1001, 25), 8, P()),  # no divisible axis: replicated
        ((64, 64), 8, P()),  # 4096 elements < min_size: replicated
        ((), 8, P()),  # scalar (step counter)
        ((1024, 512), 1, P()),  # fsdp == 1: nothing to split over
        ((4, 16, 1024), 4, P(None, None, "fsdp")),
    ],
)
def test_default_fsdp_spec(shape, fsdp_size, expected):
    assert default_fsdp_spec(shape, fsdp_size, 2**14) == expected


def test_rules_override_default_and_first_match_wins():
    mesh = make_mesh(data=2, fsdp=4)
    params = {
        "encoder": {"kernel": np.zeros((1024, 512)), "bias": np.zeros(512)},
        "head": {"kernel": np.zeros((512, 64))},
    }
    rules = [("encoder/kernel$", P(None, "fsdp")), ("kernel", P(("data", "fsdp"), None)), ("encoder", P("fsdp"))]
    shardings = param_shardings(params, mesh, rules)
    assert shardings["encoder"]["kernel"].spec == P(None, "fsdp")  # the default would pick axis 0
    assert shardings["encoder"]["bias"].spec == P("fsdp")  # third rule; the default would replicate (512 < 2**14)
    assert shardings["head"]["kernel"].spec == P(("data", "fsdp"), None)  # second rule, not the first
    assert param_shardings(params, mesh)["encoder"]["kernel"].spec == P("fsdp", None)


def test_rule_that_does_not_fit_is_one_line_error():
    mesh = make_mesh(data=2, fsdp=4)
    params = {"head": {"kernel": np.zeros((512, 30))}}
    message = _one_line_error(param_shardings, params, mesh, [("head/kernel", P(None, "fsdp"))])
    assert "head/kernel" in message and "(512, 30)" in message and "P(None, 'fsdp')" in message
    assert "rank" in _one_line_error(param_shardings, params, mesh, [("kernel", P("fsdp"))])
    assert "'model'" in _one_line_error(param_shardings, params, mesh, [("kernel", P("model", None))])
    assert "regex" in _one_line_error(param_shardings, params, mesh, [("kernel(", P())])


def test_tensor_axis():
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert make_mesh(data=2, fsdp=4).axis_names == ("data", "fsdp")  # no size-1 tensor axis
    params = {"kernel": np.zeros((64, 32))}
    rules = [("kernel", P("fsdp", "tensor"))]
    assert param_shardings(params, mesh, rules)["kernel"].spec == P("fsdp", "tensor")
    # Without a tensor axis the same rules still apply: the tensor split is dropped.
    assert param_shardings(params, make_mesh(data=2, fsdp=4), rules)["kernel"].spec == P("fsdp", None)
    batch = shard_batch({"x": np.zeros((8, 3), np.float32)}, mesh)
    assert batch["x"].addressable_shards[0].data.shape == (2, 3)  # split over data x fsdp, replicated over tensor


def test_mesh_and_batch_errors_are_one_line():
    assert _one_line_error(make_mesh, data=2, fsdp=3) == "mesh data=2 x fsdp=3 needs 6 devices; there are 8"
    assert "fsdp=3" in _one_line_error(make_mesh, fsdp=3)
    assert "fsdp=0" in _one_line_error(make_mesh, fsdp=0)
    assert "tensor=-2" in _one_line_error(make_mesh, tensor=-2)
    assert "data=0" in _one_line_error(make_mesh, data=0)
    message = _one_line_error(check_batch_size, 12, make_mesh(data=2, fsdp=4))
    assert "batch_size=12" in message and "{'data': 2, 'fsdp': 4}" in message
    check_batch_size(16, make_mesh(data=2, fsdp=4))


def test_shard_batch_splits_numbers_and_drops_text():
    mesh = make_mesh(data=2, fsdp=4)
    batch = {"observation": {"proprio": np.ones((16, 2, 3), np.float32)}, "dataset_name": np.array([b"a"] * 16)}
    sharded = shard_batch(batch, mesh)
    assert set(sharded) == {"observation"}
    assert sharded["observation"]["proprio"].addressable_shards[0].data.shape == (2, 2, 3)


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x_BD):
        hidden_BH = nn.relu(nn.Dense(64, name="hidden")(x_BD))
        return nn.Dense(4, name="out")(hidden_BH)


def _loss(params, batch):
    prediction_BA = _MLP().apply(params, batch["x"])
    return jnp.mean((prediction_BA - batch["y"]) ** 2)


def _batch():
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(16, 32)).astype(np.float32), "y": rng.normal(size=(16, 4)).astype(np.float32)}


@pytest.mark.parametrize("data, fsdp", [(1, 8), (8, 1), (2, 4)])
def test_sharded_loss_and_grads_match_unsharded(data, fsdp):
    params = _MLP().init(jax.random.key(0), jnp.zeros((1, 32)))
    batch = _batch()
    reference_loss, reference_grads = jax.jit(jax.value_and_grad(_loss))(params, batch)

    mesh = make_mesh(data=data, fsdp=fsdp)
    shardings = param_shardings(params, mesh, fsdp_min_size=MIN_SIZE)
    step = jax.jit(
        jax.value_and_grad(_loss),
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(replicated(mesh), shardings),
    )
    loss, grads = step(shard_params(params, mesh, fsdp_min_size=MIN_SIZE), shard_batch(batch, mesh))

    np.testing.assert_allclose(loss, reference_loss, rtol=0, atol=TOLERANCE)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE), grads, reference_grads)
    # Kernels (32, 64) and (64, 4) reach MIN_SIZE and split their largest divisible axis; biases stay whole.
    expected_shard_shapes = {
        1: {"hidden": (32, 64), "out": (64, 4)},
        4: {"hidden": (32, 16), "out": (16, 4)},
        8: {"hidden": (32, 8), "out": (8, 4)},
    }[fsdp]
    for layer, shard_shape in expected_shard_shapes.items():
        assert grads["params"][layer]["kernel"].addressable_shards[0].data.shape == shard_shape
        assert grads["params"][layer]["bias"].addressable_shards[0].data.shape == grads["params"][layer]["bias"].shape


def test_shard_params_places_optimizer_state():
    params = _MLP().init(jax.random.key(0), jnp.zeros((1, 32)))
    mesh = make_mesh(data=2, fsdp=4)
    opt_state = shard_params(
        optax.adam(1e-3).init(params), mesh, [("out/kernel$", P(None, "fsdp"))], fsdp_min_size=MIN_SIZE
    )
    adam_state = opt_state[0]
    assert adam_state.count.sharding.is_fully_replicated
    assert adam_state.mu["params"]["hidden"]["kernel"].addressable_shards[0].data.shape == (32, 16)
    assert adam_state.nu["params"]["out"]["kernel"].addressable_shards[0].data.shape == (64, 1)  # the rule
