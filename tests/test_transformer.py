"""Block-wise attention: the mask checked pair by pair against a slow per-token reference, and the
BlockTransformer's information flow (causality, invisible readouts and padding, no NaN, remat)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from octo_like.model.scratch.transformer import (
    TRANSFORMER_SIZES,
    BlockTransformer,
    block_attention_mask,
    match_layer_layout,
)
from octo_like.model.tokens import TokenGroup
from octo_like.utils.errors import InputError


def reference_mask(task_sizes, obs_sizes, readout_sizes, num_timesteps, history="causal") -> np.ndarray:
    """The attention rules, written token by token: (kind, group, timestep) per token. With
    history="readout" an observation sees the observations of its own timestep only."""
    tokens = []
    for group, size in enumerate(task_sizes):
        tokens += [("task", group, None)] * size
    for t in range(num_timesteps):
        for group, size in enumerate(obs_sizes):
            tokens += [("obs", group, t)] * size
        for group, size in enumerate(readout_sizes):
            tokens += [("readout", group, t)] * size

    def sees(query, key):
        if key[0] == "task":
            return True
        if query[0] == "task":
            return False
        if key[0] == "obs":
            if history == "readout" and query[0] == "obs":
                return key[2] == query[2]
            return key[2] <= query[2]
        return query == key  # a readout key: only its own group at its own timestep

    return np.array([[sees(q, k) for k in tokens] for q in tokens], dtype=bool).reshape(len(tokens), len(tokens))


@pytest.mark.parametrize(
    "task_sizes, obs_sizes, readout_sizes, num_timesteps",
    [
        ([2, 1], [2, 1], [1, 2], 3),
        ([], [2, 1], [1, 2], 3),
        ([2, 1], [2, 1], [1, 2], 1),
        ([3], [1], [], 2),
        ([1], [2], [1, 1, 1], 2),
        ([2, 0], [0, 1], [2], 2),
    ],
)
@pytest.mark.parametrize("history", ["causal", "readout"])
def test_block_mask_matches_reference(task_sizes, obs_sizes, readout_sizes, num_timesteps, history):
    mask = block_attention_mask(task_sizes, obs_sizes, readout_sizes, num_timesteps, history)
    expected = reference_mask(task_sizes, obs_sizes, readout_sizes, num_timesteps, history)
    assert mask.dtype == bool and mask.shape == expected.shape
    np.testing.assert_array_equal(mask, expected)


def test_block_mask_rejects_bad_sizes():
    with pytest.raises(InputError, match="obs_sizes"):
        block_attention_mask([1], [2, -1], [1], 2)
    with pytest.raises(InputError, match="num_timesteps"):
        block_attention_mask([1], [2], [1], 1.5)
    with pytest.raises(InputError, match="history='bidirectional'"):
        block_attention_mask([1], [2], [1], 2, history="bidirectional")


B, T, WIDTH = 2, 3, 16
READOUTS = {"action": 2, "value": 1}
MODEL = dict(num_layers=2, token_dim=WIDTH, num_heads=2, mlp_dim=32, num_timesteps_max=4)


def make_inputs(seed=0):
    rng = np.random.default_rng(seed)

    def group(*shape):
        return TokenGroup(jnp.asarray(rng.normal(size=shape), jnp.float32), jnp.ones(shape[:-1], bool))

    task = {"language": group(B, 3, 5), "goal": group(B, 1, 4)}
    obs = {"image": group(B, T, 4, 6), "wrist": group(B, T, 2, 6)}
    return task, obs


def with_tokens(group: TokenGroup, update) -> TokenGroup:
    return group.replace(tokens=update(group.tokens))


def with_mask(group: TokenGroup, update) -> TokenGroup:
    return group.replace(mask=update(group.mask))


@pytest.fixture(scope="module")
def model_and_variables():
    model = BlockTransformer(**MODEL)
    task, obs = make_inputs()
    return model, jax.jit(lambda: model.init(jax.random.key(0), task, obs, READOUTS, train=False))()


@pytest.fixture(scope="module")
def apply(model_and_variables):
    model, variables = model_and_variables
    run = jax.jit(lambda v, task, obs: model.apply(v, task, obs, READOUTS, train=False))
    return lambda task, obs, v=variables: run(v, task, obs)


def assert_same(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)


def assert_changed(a, b):
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4


def test_output_shapes_and_masks(apply):
    task, obs = make_inputs()
    obs["wrist"] = with_mask(obs["wrist"], lambda m: m.at[1, :2].set(False))
    obs["image"] = with_mask(obs["image"], lambda m: m.at[1, 0].set(False))
    task_out, obs_out, readout_out = apply(task, obs)
    for inputs, outputs in ((task, task_out), (obs, obs_out)):
        assert set(outputs) == set(inputs)  # jit returns dicts in sorted-key order
        for name, group in inputs.items():
            assert outputs[name].tokens.shape == (*group.tokens.shape[:-1], WIDTH)
            np.testing.assert_array_equal(outputs[name].mask, group.mask)
    assert set(readout_out) == set(READOUTS)
    for name, size in READOUTS.items():
        assert readout_out[name].tokens.shape == (B, T, size, WIDTH)
        # Batch element 1 has no observation at t=0, so no readouts there; at t=1 it has one camera.
        expected_mask = np.ones((B, T, size), bool)
        expected_mask[1, 0] = False
        np.testing.assert_array_equal(readout_out[name].mask, expected_mask)


@pytest.mark.parametrize("t", [0, 1, 2])
def test_observations_at_t_reach_only_timesteps_from_t(apply, t):
    task, obs = make_inputs()
    task_out, obs_out, readout_out = apply(task, obs)
    changed = dict(obs, image=with_tokens(obs["image"], lambda x: x.at[:, t].add(1.0)))
    task_new, obs_new, readout_new = apply(task, changed)

    for name in task:
        assert_same(task_new[name].tokens, task_out[name].tokens)
    for before, after in [(obs_out[n], obs_new[n]) for n in obs] + [(readout_out[n], readout_new[n]) for n in READOUTS]:
        assert_same(after.tokens[:, :t], before.tokens[:, :t])
        for s in range(t, T):
            assert_changed(after.tokens[:, s], before.tokens[:, s])


def test_readouts_are_invisible_to_task_observations_and_other_readouts(model_and_variables, apply):
    model, variables = model_and_variables
    task, obs = make_inputs()
    task_out, obs_out, readout_out = apply(task, obs)

    params = flax.core.unfreeze(variables["params"])
    for name in ("readout_action_embedding", "readout_action_pos_embedding"):
        params[name] = params[name] + 1.0
    task_new, obs_new, readout_new = apply(task, obs, {"params": params})

    for name in task:
        assert_same(task_new[name].tokens, task_out[name].tokens)
    for name in obs:
        assert_same(obs_new[name].tokens, obs_out[name].tokens)
    assert_same(readout_new["value"].tokens, readout_out["value"].tokens)
    assert_changed(readout_new["action"].tokens, readout_out["action"].tokens)


def test_padded_tokens_are_invisible(apply):
    task, obs = make_inputs()
    # A missing wrist camera and a padded last language token.
    obs["wrist"] = with_mask(obs["wrist"], lambda m: jnp.zeros_like(m))
    task["language"] = with_mask(task["language"], lambda m: m.at[:, -1].set(False))
    task_out, obs_out, readout_out = apply(task, obs)

    obs_new = dict(obs, wrist=with_tokens(obs["wrist"], lambda x: x * -3.0 + 7.0))
    task_new = dict(task, language=with_tokens(task["language"], lambda x: x.at[:, -1].add(5.0)))
    task_new_out, obs_new_out, readout_new_out = apply(task_new, obs_new)

    assert_same(task_new_out["language"].tokens[:, :-1], task_out["language"].tokens[:, :-1])
    assert_same(task_new_out["goal"].tokens, task_out["goal"].tokens)
    assert_same(obs_new_out["image"].tokens, obs_out["image"].tokens)
    for name in READOUTS:
        assert_same(readout_new_out[name].tokens, readout_out[name].tokens)


def test_fully_padded_timestep_gives_no_nan_and_leaks_nothing(model_and_variables, apply):
    model, variables = model_and_variables
    _, obs = make_inputs()
    task = {}  # so that padded tokens at t=0 have no valid key but themselves
    # The window starts before the episode for batch element 0; its wrist camera is missing too.
    obs = {name: with_mask(group, lambda m: m.at[0, 0].set(False)) for name, group in obs.items()}
    obs["wrist"] = with_mask(obs["wrist"], lambda m: m.at[0].set(False))
    _, obs_out, readout_out = apply(task, obs)
    outputs = [*obs_out.values(), *readout_out.values()]
    assert all(np.isfinite(np.asarray(group.tokens)).all() for group in outputs)
    assert not readout_out["action"].mask[0, 0].any()

    # Later timesteps do not read the padded one, and no token reads a later one.
    for t, later in ((0, slice(1, None)), (2, slice(None, 2))):
        changed = dict(obs, image=with_tokens(obs["image"], lambda x: x.at[:, t].add(9.0)))
        _, obs_new, readout_new = apply(task, changed)
        for before, after in [(obs_out["image"], obs_new["image"]), (readout_out["action"], readout_new["action"])]:
            assert_same(after.tokens[0, later], before.tokens[0, later])

    def loss(params):
        outputs = model.apply({"params": params}, task, obs, READOUTS, train=False)
        return sum(jnp.sum(g.tokens**2) for out in outputs for g in out.values())

    grads = jax.jit(jax.grad(loss))(variables["params"])
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_remat_gives_the_same_outputs(model_and_variables, apply):
    _, variables = model_and_variables
    task, obs = make_inputs()
    remat_model = BlockTransformer(**MODEL, remat=True)
    remat_variables = jax.eval_shape(lambda: remat_model.init(jax.random.key(0), task, obs, READOUTS, train=False))
    assert jax.tree.structure(remat_variables) == jax.tree.structure(variables)

    expected = apply(task, obs)
    outputs = jax.jit(lambda v: remat_model.apply(v, task, obs, READOUTS, train=False))(variables)
    for got, want in zip(jax.tree.leaves(outputs), jax.tree.leaves(expected)):
        assert_same(got, want)


@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("history", ["causal", "readout"])
def test_readouts_only_gives_the_readouts_of_the_whole_output_and_their_gradients(model_and_variables, remat, history):
    """The last block run on the readouts alone: the same readouts (and padding masks), and the
    same gradients, as the full forward whose other outputs nobody reads."""
    _, variables = model_and_variables
    model = BlockTransformer(**MODEL, remat=remat, history=history)
    task, obs = make_inputs()
    obs["image"] = with_mask(obs["image"], lambda m: m.at[1, 0].set(False))
    obs["wrist"] = with_mask(obs["wrist"], lambda m: m.at[1, 0].set(False))
    timestep_BT = jnp.tile(jnp.arange(T), (B, 1))

    def readouts(params, readouts_only):
        outputs = model.apply(
            {"params": params}, task, obs, READOUTS, train=False, timestep_BT=timestep_BT, readouts_only=readouts_only
        )
        return outputs[2]

    def loss(params, readouts_only):
        return sum(jnp.sum(jnp.sin(g.tokens)) for g in readouts(params, readouts_only).values())

    full, only = (jax.jit(readouts, static_argnums=1)(variables["params"], flag) for flag in (False, True))
    assert model.apply(variables, task, obs, READOUTS, train=False, timestep_BT=timestep_BT, readouts_only=True)[
        :2
    ] == (
        {},
        {},
    )
    for name in READOUTS:
        assert_same(only[name].tokens, full[name].tokens)
        np.testing.assert_array_equal(only[name].mask, full[name].mask)
    full_grads, only_grads = (jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], f) for f in (False, True))
    for got, want in zip(jax.tree.leaves(only_grads), jax.tree.leaves(full_grads)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=1e-4)  # float32 sums reordered


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_layers_equal_the_unrolled_ones_and_finetuning_moves_between_them(remat):
    """scan_layers: all blocks but the last under one scanned block. With the unrolled model's
    parameters stacked (match_layer_layout, as finetuning does), the outputs, readouts-only
    readouts and gradients equal the unrolled model's; stacking and splitting back round-trips."""
    settings = dict(MODEL, num_layers=3)
    unrolled, scanned = BlockTransformer(**settings), BlockTransformer(**settings, scan_layers=True, remat=remat)
    task, obs = make_inputs()
    params = jax.jit(lambda: unrolled.init(jax.random.key(0), task, obs, READOUTS, train=False))()["params"]
    scanned_shapes = jax.eval_shape(lambda: scanned.init(jax.random.key(0), task, obs, READOUTS, train=False))
    scanned_flat = flax.traverse_util.flatten_dict(scanned_shapes["params"], sep="/")
    unrolled_flat = flax.traverse_util.flatten_dict(params, sep="/")
    assert {path.split("/")[0] for path in scanned_flat} >= {"scanned_blocks", "block_2"}
    assert scanned_flat["scanned_blocks/mlp_hidden/kernel"].shape == (2, WIDTH, 32)
    stacked_flat = match_layer_layout(unrolled_flat, scanned_flat)
    assert set(stacked_flat) == set(scanned_flat)
    for path, leaf in scanned_flat.items():
        assert stacked_flat[path].shape == leaf.shape, path
    np.testing.assert_array_equal(
        stacked_flat["scanned_blocks/attention/query/kernel"][1], unrolled_flat["block_1/attention/query/kernel"]
    )
    split_flat = match_layer_layout(stacked_flat, unrolled_flat)
    assert set(split_flat) == set(unrolled_flat)
    for path, leaf in unrolled_flat.items():
        np.testing.assert_array_equal(split_flat[path], leaf)
    stacked = flax.traverse_util.unflatten_dict(stacked_flat, sep="/")

    def loss(model, params, readouts_only):
        outputs = model.apply({"params": params}, task, obs, READOUTS, train=False, readouts_only=readouts_only)
        return sum(jnp.sum(jnp.sin(g.tokens)) for out in outputs for g in out.values()), outputs

    for readouts_only in (False, True):
        run = jax.jit(jax.value_and_grad(loss, argnums=1, has_aux=True), static_argnums=(0, 2))
        (_, want), want_grads = run(unrolled, params, readouts_only)
        (_, got), got_grads = run(scanned, stacked, readouts_only)
        for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(np.asarray(got_leaf), np.asarray(want_leaf), atol=1e-5, rtol=0)
        got_flat = match_layer_layout(flax.traverse_util.flatten_dict(got_grads, sep="/"), unrolled_flat)
        for path, want_leaf in flax.traverse_util.flatten_dict(want_grads, sep="/").items():
            np.testing.assert_allclose(np.asarray(got_flat[path]), np.asarray(want_leaf), atol=1e-4, rtol=1e-4)


def test_dropout_keeps_the_attention_rules(model_and_variables, apply):
    _, variables = model_and_variables
    model = BlockTransformer(**MODEL, dropout_rate=0.1, attention_dropout_rate=0.5)
    run = jax.jit(
        lambda task, obs: model.apply(variables, task, obs, READOUTS, train=True, rngs={"dropout": jax.random.key(1)})
    )
    task, obs = make_inputs()
    _, obs_out, readout_out = run(task, obs)
    _, eval_obs_out, _ = apply(task, obs)
    assert np.isfinite(np.asarray(obs_out["image"].tokens)).all()
    assert_changed(obs_out["image"].tokens, eval_obs_out["image"].tokens)

    # Same dropout key, so the same dropped keys: a later observation still cannot reach back.
    changed = dict(obs, image=with_tokens(obs["image"], lambda x: x.at[:, 2].add(1.0)))
    _, obs_new, readout_new = run(task, changed)
    assert_same(obs_new["image"].tokens[:, :2], obs_out["image"].tokens[:, :2])
    assert_same(readout_new["action"].tokens[:, :2], readout_out["action"].tokens[:, :2])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda task, obs, r: (task, dict(obs, image=with_mask(obs["image"], lambda m: m[:, :, :2])), r), "'image'"),
        (lambda task, obs, r: (dict(task, goal=TokenGroup(jnp.ones((B, 4)), jnp.ones((B,), bool))), obs, r), "'goal'"),
        (lambda task, obs, r: (task, {}, r), "obs_groups"),
        (lambda task, obs, r: (task, obs, dict(r, action=0)), "'action'"),
        (
            lambda task, obs, r: (task, {"image": TokenGroup(jnp.ones((B, 5, 2, 6)), jnp.ones((B, 5, 2), bool))}, r),
            "T=5",
        ),
        (
            lambda task, obs, r: (
                task,
                dict(obs, wrist=TokenGroup(jnp.ones((B, 2, 2, 6)), jnp.ones((B, 2, 2), bool))),
                r,
            ),
            "count T",
        ),
        (
            lambda task, obs, r: (
                task,
                dict(obs, wrist=TokenGroup(jnp.ones((B + 1, T, 2, 6)), jnp.ones((B + 1, T, 2), bool))),
                r,
            ),
            "batch size",
        ),
    ],
)
def test_bad_inputs_raise_input_error(change, message):
    task, obs = make_inputs()
    with pytest.raises(InputError, match=message):
        BlockTransformer(**MODEL).init(jax.random.key(0), *change(task, obs, READOUTS), train=False)


def test_width_must_split_into_heads():
    task, obs = make_inputs()
    with pytest.raises(InputError, match="num_heads=3"):
        BlockTransformer(**dict(MODEL, num_heads=3)).init(jax.random.key(0), task, obs, READOUTS, train=False)


@pytest.mark.parametrize("size", sorted(TRANSFORMER_SIZES))
def test_named_sizes_have_the_expected_block_parameter_count(size):
    config = TRANSFORMER_SIZES[size]
    task, obs = make_inputs()
    shapes = jax.eval_shape(
        lambda: BlockTransformer(**config, num_timesteps_max=T).init(
            jax.random.key(0), task, obs, READOUTS, train=False
        )
    )
    blocks = {k: v for k, v in shapes["params"].items() if k.startswith("block_")}
    width, hidden = config["token_dim"], config["mlp_dim"]
    # attention: 4 C x C kernels + 4 biases; MLP: 2 C x F kernels + F + C biases; 2 LayerNorms.
    per_block = 4 * width * width + 4 * width + 2 * width * hidden + hidden + width + 4 * width
    assert len(blocks) == config["num_layers"]
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(blocks)) == config["num_layers"] * per_block
