"""The ways to join the backbone to actions beyond bins, FAST and the joint-attention flow expert:
parallel decoding (OpenVLA-OFT), Jacobi decoding (PD-VLA), the special-token, pooling and
cross-attention bridges, and knowledge insulation (pi0.5 + KI)."""

import os

import jax
import numpy as np
import pytest
import tokenizers
from test_vla import CONFIGS, PALIGEMMA, STATISTICS, first_row, metaworld_like_batch, train, vla_config

from octo_like.hf.paligemma import load_paligemma
from octo_like.model.vla.action_tokenizers import fit_fast
from octo_like.model.vla.network import make_vla_network
from octo_like.policy.build import resolve_vla_config, with_action_horizon
from octo_like.policy.model import PolicyModel
from octo_like.train.mesh import make_mesh, param_shardings
from octo_like.utils.config import load_config
from octo_like.utils.errors import InputError
from octo_like.utils.text_tokenizer import FixedLengthTokenizer


@pytest.fixture(scope="module")
def fast_dir(tmp_path_factory):
    batch = metaworld_like_batch()
    chunks = np.concatenate(
        [batch["action"][:, 0], np.cumsum(np.random.default_rng(1).normal(size=(300, 4, 4)) * 0.2, axis=1)]
    )
    directory = str(tmp_path_factory.mktemp("fast") / "fast")
    fit_fast(chunks, vocab_size=600).save(directory)
    return directory


def loss_on(model, batch, rng):
    return float(jax.jit(lambda p: model.loss(p, batch, rng, True)[0])(model.params))


# (config, model.vla.action settings, the parameters the kind adds beside the backbone, sampling
# options whose cached and uncached results must agree)
ROWS = {
    "parallel_l1": ("vla_parallel.py:l1", {}, {"action_slots", "proprio_in", "action_head"}),
    "parallel_bins": ("vla_parallel.py:bins", {}, {"action_slots", "proprio_in"}),
    "token_bridge": ("vla_bridge.py:token", {"bridge_tokens": 2}, {"bridge_tokens", "proprio_in", "action_head"}),
    "pool_bridge": ("vla_bridge.py:pool", {"pooling": "attention"}, {"bridge_pool", "proprio_in", "action_head"}),
    "cross_bridge": ("vla_bridge.py:cross", {"backbone_layers": 1}, {"cross"}),
    "flow_ki": ("vla_flow.py:ki", {}, {"flow", "proprio_in", "action_start"}),
}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_each_kind_learns_a_fixed_batch_and_its_release_samples_bit_exactly(row, fast_dir, tmp_path):
    config_arg, settings, added = ROWS[row]
    if row == "flow_ki":
        settings = {**settings, "fast_tokenizer": fast_dir}
    batch = metaworld_like_batch()
    model = PolicyModel.create(vla_config(config_arg, **settings), batch, STATISTICS, jax.random.key(0))
    assert set(model.params) == {"backbone", *added}
    # One noise and time draw for every step: the generative losses become a fixed objective too.
    fixed = jax.random.key(7)
    start = loss_on(model, batch, fixed)
    train(model, batch, 60, learning_rate=2e-3, rng=fixed)
    assert loss_on(model, batch, fixed) < 0.1 * start, (start, loss_on(model, batch, fixed))

    task = model.create_tasks(texts=["open the drawer"])
    observation = first_row(batch)
    sampled = np.asarray(model.sample_actions(observation, task, rng=jax.random.key(3)))
    assert sampled.shape == (1, 4, 4) and np.isfinite(sampled).all()
    if "use_cache" in model.module.actions.sampling_options:
        # The backbone (and the expert's view of it) computed once equals recomputing it at every step.
        rerun = np.asarray(model.sample_actions(observation, task, rng=jax.random.key(3), use_cache=False))
        np.testing.assert_allclose(rerun, sampled, atol=1e-5)
    model.save_pretrained(60, str(tmp_path / "run"))
    loaded = PolicyModel.load_pretrained(str(tmp_path / "run"))
    assert loaded.config["model"]["vla"]["action"] == model.config["model"]["vla"]["action"] | (
        {"fast_tokenizer": str(tmp_path / "run" / "fast_tokenizer")} if row == "flow_ki" else {}
    )
    for got, want in zip(
        jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(model.params), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(loaded.sample_actions(observation, task, rng=jax.random.key(3)), sampled)


def test_jacobi_decoding_gives_the_greedy_tokens_in_at_most_as_many_forward_passes(fast_dir):
    batch = metaworld_like_batch()
    for config_arg, settings in (("vla_tokens.py:bins", {}), ("vla_tokens.py:fast", {"fast_tokenizer": fast_dir})):
        model = PolicyModel.create(vla_config(config_arg, **settings), batch, STATISTICS, jax.random.key(0))
        untrained = jax.tree_util.tree_map(np.asarray, model.params)
        train(model, batch, 20)
        for params in (untrained, model.params):

            def decode(network, observation, task, use_cache):
                actions = network.actions
                prefix = actions.token_prefix(network, observation, task)
                jacobi, passes = actions.jacobi_decode(network, *prefix, use_cache=use_cache)
                return actions.decode(network, *prefix), jacobi, passes

            for use_cache in (True, False):
                greedy, jacobi, passes = model.module.apply(
                    {"params": params}, batch["observation"], batch["task"], use_cache, method=decode
                )
                np.testing.assert_array_equal(jacobi, greedy)  # token for token, every row
                assert 1 <= int(passes) <= model.module.actions.num_action_tokens
        task = model.create_tasks(texts=["open the drawer"])
        np.testing.assert_array_equal(
            model.sample_actions(first_row(batch), task, rng=jax.random.key(0), decoding="jacobi"),
            model.sample_actions(first_row(batch), task, rng=jax.random.key(0)),
        )
    with pytest.raises(InputError, match="decoding='beam'; expected one of greedy, jacobi"):
        model.sample_actions(first_row(batch), task, rng=jax.random.key(0), decoding="beam")


def test_knowledge_insulation_keeps_the_flow_loss_out_of_the_backbone(fast_dir):
    batch = metaworld_like_batch()

    def gradient_sums(token_loss_weight, flow_loss_weight):
        config = vla_config(
            "vla_flow.py:ki",
            fast_tokenizer=fast_dir,
            token_loss_weight=token_loss_weight,
            flow_loss_weight=flow_loss_weight,
        )
        model = PolicyModel.create(config, batch, STATISTICS, jax.random.key(0))
        grads = jax.grad(lambda p: model.loss(p, batch, jax.random.key(3), True)[0])(model.params)
        return {
            name: sum(float(np.abs(leaf).sum()) for leaf in jax.tree_util.tree_leaves(g)) for name, g in grads.items()
        }

    flow_only = gradient_sums(0.0, 1.0)
    assert flow_only["flow"] > 0
    # Exactly zero: no path from the expert's loss to the backbone (SigLIP, embeddings, layers) or
    # to the token part's own parameters.
    assert flow_only["backbone"] == 0.0 and flow_only["proprio_in"] == 0.0 and flow_only["action_start"] == 0.0
    token_only = gradient_sums(1.0, 0.0)
    assert token_only["backbone"] > 0 and token_only["action_start"] > 0 and token_only["flow"] == 0.0
    # Without insulation the flow loss does reach the backbone (the stop-gradient is what cuts it).
    model = PolicyModel.create(vla_config("vla_flow.py"), batch, STATISTICS, jax.random.key(0))
    grads = jax.grad(lambda p: model.loss(p, batch, jax.random.key(3), True)[0])(model.params)
    assert sum(float(np.abs(leaf).sum()) for leaf in jax.tree_util.tree_leaves(grads["backbone"])) > 0


def test_layer_skipping_creates_only_the_layers_it_runs_also_from_a_checkpoint(tmp_path):
    batch = metaworld_like_batch()
    model = PolicyModel.create(vla_config("vla_bridge.py:cross,layers=1"), batch, STATISTICS, jax.random.key(0))
    assert model.config["model"]["vla"]["action"]["backbone_layers"] == 1
    # The backbone's second layer is neither run nor created (so neither trained nor released); the
    # expert has as many layers as the backbone runs: here one cross-attention layer.
    assert set(model.params["backbone"]["language_model"]) == {"embed_tokens", "layers_0", "norm"}
    assert set(model.params["cross"]) >= {"layers_0"} and "layers_1" not in model.params["cross"]
    # From a PaliGemma checkpoint: its first layer, the rest left out.
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[PAD]": 0, "open": 1}, unk_token="[PAD]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    config = vla_config("vla_bridge.py:pool,layers=1")
    config["model"]["vla"]["backbone"] = {"checkpoint": PALIGEMMA, "config": None}
    config["model"]["language"]["tokenizer_json"] = str(tmp_path / "tokenizer.json")
    small_batch = metaworld_like_batch(
        image_size=16, tokenizer=FixedLengthTokenizer(str(tmp_path / "tokenizer.json"), 24)
    )
    model = PolicyModel.create(config, small_batch, STATISTICS, jax.random.key(0))
    reference = load_paligemma(PALIGEMMA).params["language_model"]
    assert len([key for key in reference if key.startswith("layers_")]) > 1
    assert set(model.params["backbone"]["language_model"]) == {"embed_tokens", "layers_0", "norm"}
    for got, want in zip(
        jax.tree_util.tree_leaves(model.params["backbone"]["language_model"]["layers_0"]),
        jax.tree_util.tree_leaves(reference["layers_0"]),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)
    assert np.isfinite(jax.jit(lambda p: model.loss(p, small_batch, jax.random.key(0), False)[0])(model.params))


@pytest.mark.parametrize(
    "config_arg",
    [
        "vla_parallel.py:l1,pod",
        "vla_parallel.py:bins,pod",
        "vla_bridge.py:token,pod",
        "vla_bridge.py:pool,pooling=attention,pod",
        "vla_bridge.py:cross,layers=9,pod",
        "vla_flow.py:ki,pod",
    ],
)
def test_the_3b_rules_leave_no_large_array_of_the_new_kinds_replicated(config_arg, fast_dir):
    config = load_config(os.path.join(CONFIGS, config_arg)).to_dict()
    config["model"]["vla"]["action"]["fast_tokenizer"] = fast_dir  # read by knowledge insulation only
    model_config = with_action_horizon(config["model"], config["dataset"]["traj_transform_kwargs"]["action_horizon"])
    network = make_vla_network(resolve_vla_config(model_config["vla"]))
    batch = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), metaworld_like_batch(batch=1, image_size=224)
    )
    shapes = jax.eval_shape(network.init, jax.random.key(0), batch["observation"], batch["task"])["params"]
    assert sum(x.size for x in jax.tree_util.tree_leaves(shapes)) > 2e9  # the 3B preset (9 of 18 layers for cross)
    shardings = param_shardings(
        shapes, make_mesh(data=1, fsdp=8), [(p, jax.sharding.PartitionSpec(*s)) for p, s in config["sharding_rules"]]
    )
    replicated_large = [
        jax.tree_util.keystr(path)
        for (path, shape), sharding in zip(
            jax.tree_util.tree_leaves_with_path(shapes), jax.tree_util.tree_leaves(shardings), strict=True
        )
        if shape.size >= 2**20 and sharding.shard_shape(shape.shape) == shape.shape
    ]
    assert not replicated_large


@pytest.mark.parametrize(
    "vla, message",
    [
        ({"action": {"kind": "token_bridge", "head": {"name": "bins"}}}, "head.name='bins'; expected one of l1"),
        ({"action": {"kind": "pool_bridge", "pooling": "median"}}, "pooling='median'; expected one of mean, max"),
        (
            {"action": {"kind": "cross_bridge", "backbone_layers": 9}},
            "backbone_layers=9; expected 1 .. the backbone's 4",
        ),
        ({"action": {"kind": "token_bridge", "bridge_tokens": 0}}, "bridge_tokens=0; expected at least 1"),
        ({"action": {"kind": "flow", "knowledge_insulation": True}}, "knowledge_insulation needs .*fast_tokenizer"),
        ({"action": {"kind": "parallel_bins", "n_bins": 40000}}, "n_bins=40000 exceeds the backbone's vocabulary"),
    ],
)
def test_bad_settings_of_the_new_kinds_fail_in_one_line(vla, message):
    vla = {"backbone": {"size": "tiny"}, **vla}
    vla["action"] = {"horizon": 4, "action_dim": 4, **vla["action"]}
    with pytest.raises(InputError, match=message):
        make_vla_network(resolve_vla_config(vla))


@pytest.mark.parametrize(
    "variant, message",
    [
        ("vla_bridge.py:tokens", "unknown bridge 'tokens' in variant 'tokens'; expected one of token, pool, cross"),
        ("vla_bridge.py:cross,pooling=max", "option 'pooling=max' of the cross bridge; expected layers=N$"),
        ("vla_bridge.py:token,adarms", r"unknown option\(s\) \['adarms'\]; expected any of lora, pod"),
        ("vla_parallel.py:mse", "unknown parallel decoding 'mse' in variant 'mse'; expected one of l1, bins"),
    ],
)
def test_bad_variants_of_the_new_configs_fail_in_one_line(variant, message):
    with pytest.raises(InputError, match=message):
        load_config(os.path.join(CONFIGS, variant))


def test_the_configs_set_what_each_row_of_the_taxonomy_needs():
    def action(arg):
        return load_config(os.path.join(CONFIGS, arg)).model.vla.action

    assert action("vla_parallel.py").kind == "parallel_l1"
    pool = action("vla_bridge.py:pool,pooling=max,head=diffusion,layers=2").to_dict()
    assert {key: pool[key] for key in ("kind", "pooling", "head", "backbone_layers")} == {
        "kind": "pool_bridge",
        "pooling": "max",
        "head": {"name": "diffusion"},
        "backbone_layers": 2,
    }
    assert action("vla_bridge.py:cross,pod").expert.hidden_size == 1024  # pi0's width-1024 expert
    ki = action("vla_flow.py:adarms,ki")
    assert ki.knowledge_insulation and ki.time_conditioning == "adarms"
    normalization = lambda arg: load_config(os.path.join(CONFIGS, arg)).dataset.dataset_kwargs  # noqa: E731
    assert normalization("vla_parallel.py:l1").action_proprio_normalization_type == "bounds"
    assert normalization("vla_bridge.py:token").action_proprio_normalization_type == "normal"
