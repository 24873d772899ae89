"""The VLM-initialized policy (octo_like/model/vla/network.py) through PolicyModel: bins, FAST, flow, LoRA,
a PaliGemma checkpoint, FSDP on 8 CPU devices, the 3B rules, and train.py / evaluate.py end to end."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import tokenizers
import trained_runs

from octo_like.hf.paligemma import load_paligemma
from octo_like.model.vla.action_tokenizers import fit_fast
from octo_like.model.vla.actions import fast_chunks
from octo_like.model.vla.network import VLA_SIZES, make_vla_network
from octo_like.policy.build import resolve_vla_config, with_action_horizon
from octo_like.policy.model import PolicyModel
from octo_like.train.mesh import VLA_FSDP_RULES, make_mesh, param_shardings
from octo_like.train.optim import make_optimizer
from octo_like.utils.config import load_config
from octo_like.utils.errors import InputError
from octo_like.utils.normalization import with_normalization_settings
from octo_like.utils.text_tokenizer import FixedLengthTokenizer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PALIGEMMA = os.path.join(REPO_ROOT, "tests", "fixtures", "paligemma_tiny")
CONFIGS = os.path.join(REPO_ROOT, "experiments", "configs")
STATISTICS = {
    "metaworld/fake": with_normalization_settings(
        {"action": {"mean": np.zeros(4), "std": np.ones(4)}, "proprio": {"mean": np.zeros(4), "std": np.ones(4)}},
        "normal",
    )
}


def metaworld_like_batch(batch=4, image_size=64, tokenizer=None, seed=0):
    """The batch contract as the vla configs read Meta-World: window 1, two cameras, 4-d proprio, chunks of 4 x 4."""
    rng = np.random.default_rng(seed)
    tokenizer = tokenizer or FixedLengthTokenizer(None, 24)
    images = {
        f"image_{camera}": rng.integers(0, 255, (batch, 1, image_size, image_size, 3), dtype=np.uint8)
        for camera in ("primary", "wrist")
    }
    observation = {
        **images,
        "proprio": rng.normal(size=(batch, 1, 4)).astype(np.float32),
        "timestep": np.zeros((batch, 1), np.int32),
        "timestep_pad_mask": np.ones((batch, 1), bool),
        "pad_mask_dict": {key: np.ones((batch, 1), bool) for key in [*images, "proprio"]},
    }
    texts = ["open the drawer", "press the button", "reach the goal", "close the drawer"]
    task = {
        "language_instruction": tokenizer([texts[i % 4] for i in range(batch)]),
        "pad_mask_dict": {"language_instruction": np.ones(batch, bool)},
    }
    actions = np.clip(rng.normal(size=(batch, 1, 4, 4)) * 0.5, -0.99, 0.99).astype(np.float32)
    return {
        "observation": observation,
        "task": task,
        "action": actions,
        "action_pad_mask": np.ones(actions.shape, bool),
    }


# The tiny backbone with 2 Gemma layers instead of 4 (the expert follows): the tests built on
# vla_config and the trainer test check the action kinds, LoRA, sharding and the trainer, not the
# depth, and compile in less time.
TWO_LAYER_TINY = dataclasses.asdict(
    dataclasses.replace(VLA_SIZES["tiny"], text=dataclasses.replace(VLA_SIZES["tiny"].text, num_layers=2))
)


def vla_config(config_arg, **action):
    """The config file's dict with `action` settings, on the two-layer tiny backbone."""
    config = load_config(os.path.join(CONFIGS, config_arg)).to_dict()
    config["model"]["vla"]["action"].update(action)
    config["model"]["vla"]["backbone"]["config"] = TWO_LAYER_TINY
    return config


def train(model, batch, steps, learning_rate=1e-3, rng=None):
    """Adam on one batch through the optimizer the trainer builds (frozen keys included); `rng`: the
    same key at every step (else a fresh one per step)."""
    optimizer, _ = make_optimizer(
        model.params, {"learning_rate": learning_rate, "decay": "constant"}, steps, model.frozen_keys
    )

    @jax.jit
    def step(params, opt_state, rng):
        (loss, metrics), grads = jax.value_and_grad(model.loss, has_aux=True)(params, batch, rng, True)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, metrics

    params, opt_state, losses = model.params, optimizer.init(model.params), []
    for index in range(steps):
        params, opt_state, loss, metrics = step(params, opt_state, jax.random.key(index) if rng is None else rng)
        losses.append(float(loss))
    model.params = params
    return losses, metrics


def first_row(batch):
    return jax.tree_util.tree_map(lambda x: x[:1], batch["observation"])


def test_bins_policy_learns_its_tokens_and_decodes_with_the_cache_as_without():
    batch = metaworld_like_batch()
    model = PolicyModel.create(vla_config("vla_tokens.py:bins"), batch, STATISTICS, jax.random.key(0))
    assert set(model.params) == {"backbone", "proprio_in", "action_start"}
    losses, metrics = train(model, batch, 30)
    assert losses[-1] < 0.05 * losses[0] and float(metrics["action_token_accuracy"]) == 1.0
    task = model.create_tasks(texts=["open the drawer"])
    cached = model.sample_actions(first_row(batch), task, rng=jax.random.key(1))
    rerun = model.sample_actions(first_row(batch), task, rng=jax.random.key(1), use_cache=False)
    np.testing.assert_array_equal(cached, rerun)
    # Every decoded entry is the center of the target's bin: within half a bin (1/256) of it.
    assert np.abs(np.asarray(cached)[0] - batch["action"][0, 0]).max() <= 1 / 256 + 1e-6
    with pytest.raises(InputError, match=r"sampling options \['num_steps'\] do not apply to 'bins' actions"):
        model.sample_actions(first_row(batch), task, rng=jax.random.key(1), num_steps=3)


def test_fast_policy_trains_decodes_valid_chunks_and_flags_invalid_ones(tmp_path):
    batch = metaworld_like_batch()
    rng = np.random.default_rng(1)
    chunks = np.concatenate([batch["action"][:, 0], np.cumsum(rng.normal(size=(300, 4, 4)) * 0.2, axis=1)])
    fit_fast(chunks, vocab_size=600).save(str(tmp_path / "fast"))
    model = PolicyModel.create(
        vla_config("vla_tokens.py:fast", fast_tokenizer=str(tmp_path / "fast")), batch, STATISTICS, jax.random.key(0)
    )
    losses, _ = train(model, batch, 30)
    assert losses[-1] < 0.05 * losses[0]
    metrics = jax.jit(model.action_mse)(model.params, batch, jax.random.key(0))
    assert float(metrics["action_fast_invalid_fraction"]) == 0.0 and float(metrics["action_action_mse"]) < 0.01
    # (Cached decoding equals rerunning for any action ids: the bins test checks it.)
    # The release carries the FAST tokenizer: it decodes after the original directory is gone.
    model.save_pretrained(30, str(tmp_path / "run"))
    shutil.rmtree(tmp_path / "fast")
    loaded = PolicyModel.load_pretrained(str(tmp_path / "run"))
    assert loaded.module.action["fast_tokenizer"] == str(tmp_path / "run" / "fast_tokenizer")
    assert json.loads((tmp_path / "run" / "fast_tokenizer" / "fast.json").read_text())["horizon"] == 4
    # Host decoding: an immediate end token, or ids that spell too few coefficients, give zeros and False.
    vocab = VLA_SIZES["tiny"].text.vocab_size
    ids = np.full((2, 32), vocab - 1, np.int32)
    ids[1, 0] = vocab - 1 - 600 + 300  # one BPE token: not 16 coefficients
    decoded, valid = fast_chunks(loaded.module.action["fast_tokenizer"], vocab, ids)
    assert decoded.shape == (2, 4, 4) and not valid.any() and not decoded.any()


def test_adarms_flow_policy_with_lora_trains_only_the_factors_and_new_parts_and_releases_merged(tmp_path):
    batch = metaworld_like_batch()
    model = PolicyModel.create(vla_config("vla_flow.py:lora,adarms"), batch, STATISTICS, jax.random.key(0))
    assert "backbone/*" in model.frozen_keys and "lora" in model.params
    before = jax.tree_util.tree_map(np.asarray, model.params)
    losses, _ = train(model, batch, 12)
    assert np.isfinite(losses).all() and np.mean(losses[-4:]) < np.mean(losses[:4])
    after = jax.tree_util.tree_map(np.asarray, model.params)
    for part in ("backbone",):
        for got, want in zip(
            jax.tree_util.tree_leaves(after[part]), jax.tree_util.tree_leaves(before[part]), strict=True
        ):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        after["flow"]["expert"]["layers_0"]["mlp"]["up_proj"]["kernel"],
        before["flow"]["expert"]["layers_0"]["mlp"]["up_proj"]["kernel"],
    )
    assert not np.array_equal(after["lora"]["flow"]["expert"]["layers_0"]["mlp"]["up_proj"]["kernel"]["b"], 0)
    assert not np.array_equal(
        after["flow"]["expert"]["action_out"]["kernel"], before["flow"]["expert"]["action_out"]["kernel"]
    )
    # adaRMS: the time modulation starts at zero and trains (it is new, not part of the frozen base).
    modulation = "flow", "expert", "layers_0", "input_layernorm", "modulation", "kernel"
    assert not before[modulation[0]][modulation[1]][modulation[2]][modulation[3]][modulation[4]][modulation[5]].any()
    assert after[modulation[0]][modulation[1]][modulation[2]][modulation[3]][modulation[4]][modulation[5]].any()

    task = model.create_tasks(texts=["open the drawer"])
    sample = lambda m, **kw: np.asarray(m.sample_actions(first_row(batch), task, rng=jax.random.key(3), **kw))  # noqa: E731
    expected = sample(model)
    # Flow sampling on the prefix cache equals rerunning the prefix (here with padding inside the
    # prefix, after the short instruction).
    np.testing.assert_allclose(sample(model, use_cache=False), expected, atol=1e-5)
    merged = model.with_lora_merged()
    assert "lora" not in merged.params and merged.config["model"]["vla"]["lora"] is None
    factors = after["lora"]["backbone"]["language_model"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
    np.testing.assert_allclose(
        merged.params["backbone"]["language_model"]["layers_0"]["self_attn"]["q_proj"]["kernel"],
        after["backbone"]["language_model"]["layers_0"]["self_attn"]["q_proj"]["kernel"] + factors["a"] @ factors["b"],
        atol=1e-6,
    )  # alpha / rank = 16 / 16
    model.save_pretrained(5, str(tmp_path / "lora_run"))
    loaded = PolicyModel.load_pretrained(str(tmp_path / "lora_run"))
    for got, want in zip(jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(after), strict=True):
        np.testing.assert_array_equal(got, want)  # LoRA factors included

    # The evaluation harness runs the release: Meta-World, the checkpoint policy, results.json.
    merged.save_pretrained(5, str(tmp_path / "merged_run"))
    result = subprocess.run(
        [
            sys.executable,
            "scripts/evaluate.py",
            "--policy=checkpoint",
            f"--checkpoint={tmp_path / 'merged_run'}",
            "--tasks=reach",
            "--episodes=1",
            "--max_episode_steps=8",
            "--image_size=64",
            "--workers=1",
            f"--output_dir={tmp_path / 'eval'}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["tasks"]["reach-v3"]["episodes"] == 1


def test_a_paligemma_checkpoint_initializes_the_backbone_and_its_vocabulary_is_checked(tmp_path):
    words = ["[PAD]", "open", "the", "drawer", "press", "button", "reach", "goal", "close"]
    tokenizer = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="[PAD]")
    )
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    config = vla_config("vla_tokens.py:bins", n_bins=16)
    config["model"]["vla"]["backbone"] = {"checkpoint": PALIGEMMA, "config": None}  # the architecture: the checkpoint's
    config["model"]["language"]["tokenizer_json"] = str(tmp_path / "tokenizer.json")
    batch = metaworld_like_batch(image_size=16, tokenizer=FixedLengthTokenizer(str(tmp_path / "tokenizer.json"), 24))
    model = PolicyModel.create(config, batch, STATISTICS, jax.random.key(0))
    reference = load_paligemma(PALIGEMMA).params
    for got, want in zip(
        jax.tree_util.tree_leaves(model.params["backbone"]), jax.tree_util.tree_leaves(reference), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    assert model.config["model"]["vla"]["backbone"]["config"]["text"]["vocab_size"] == 90
    assert np.isfinite(jax.jit(lambda p: model.loss(p, batch, jax.random.key(0), False)[0])(model.params))
    with pytest.raises(
        InputError, match=r"observation\['image_primary'\] holds 64x64 images; the backbone's SigLIP reads 16x16"
    ):
        PolicyModel.create(
            config,
            metaworld_like_batch(tokenizer=FixedLengthTokenizer(str(tmp_path / "tokenizer.json"), 24)),
            STATISTICS,
            jax.random.key(0),
        )
    # MiniLM's ids (up to 30521) do not fit the checkpoint's 90-id vocabulary.
    config["model"]["language"]["tokenizer_json"] = None
    with pytest.raises(InputError, match="instruction token ids reach .*; the backbone's vocabulary has 90 ids"):
        PolicyModel.create(config, metaworld_like_batch(image_size=16), STATISTICS, jax.random.key(0))


@pytest.mark.parametrize(
    "vla, message",
    [
        (
            {"action": {"kind": "tokens"}},
            "model.vla.action.kind='tokens'; expected one of bins, fast, parallel_l1, parallel_bins, token_bridge, "
            "pool_bridge, cross_bridge, flow",
        ),
        ({"action": {"kind": "fast"}}, "needs model.vla.action.fast_tokenizer"),
        (
            {"action": {"kind": "bins"}, "backbone": {"size": "7B"}},
            "model.vla.backbone.size='7B'; expected one of tiny, 3B",
        ),
        (
            {"action": {"kind": "flow", "expert": {"hidden_size": 64, "num_heads": 2}}},
            "action expert num_heads=2 must equal the VLM's 4: both streams attend jointly in every layer",
        ),
    ],
)
def test_bad_vla_settings_fail_in_one_line(vla, message):
    vla = {"backbone": {"size": "tiny"}, **vla}
    vla["action"] = {"horizon": 4, "action_dim": 4, **vla["action"]}
    with pytest.raises(InputError, match=message):
        make_vla_network(resolve_vla_config(vla))


def test_fsdp_on_8_devices_places_the_vla_by_its_rules_and_gives_the_unsharded_loss():
    batch = metaworld_like_batch(batch=8)
    config = vla_config("vla_flow.py")
    reference = PolicyModel.create(config, batch, STATISTICS, jax.random.key(0))
    mesh = make_mesh(data=1, fsdp=8)
    rules = [(pattern, jax.sharding.PartitionSpec(*spec)) for pattern, spec in VLA_FSDP_RULES]
    sharded = PolicyModel.create(
        config, batch, STATISTICS, jax.random.key(0), shardings_of=lambda tree: param_shardings(tree, mesh, rules)
    )
    embedding = sharded.params["backbone"]["language_model"]["embed_tokens"]["embedding"]
    assert embedding.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert embedding.addressable_shards[0].data.shape == (32000, 128 // 8)
    for got, want in zip(
        jax.tree_util.tree_leaves(sharded.params), jax.tree_util.tree_leaves(reference.params), strict=True
    ):
        np.testing.assert_array_equal(got, want)  # the same initialization, laid out on the mesh
    with jax.set_mesh(mesh):
        loss = jax.jit(lambda p: sharded.loss(p, batch, jax.random.key(4), True)[0])(sharded.params)
    reference_loss = jax.jit(lambda p: reference.loss(p, batch, jax.random.key(4), True)[0])(reference.params)
    np.testing.assert_allclose(loss, reference_loss, atol=1e-5)


def test_the_3b_pod_rules_split_every_large_array_over_8_devices():
    """pi0's size (PaliGemma-3B + Gemma-300M expert) from shapes alone: parameters and the two Adam
    moments fit 8 devices as 1/8 each, and nothing large is replicated."""
    config = load_config(os.path.join(CONFIGS, "vla_flow.py:pod")).to_dict()
    # The chunk length is the data's (PolicyModel.create and the trainer fill it in the same way).
    model_config = with_action_horizon(config["model"], config["dataset"]["traj_transform_kwargs"]["action_horizon"])
    network = make_vla_network(resolve_vla_config(model_config["vla"]))
    batch = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), metaworld_like_batch(batch=1, image_size=224)
    )
    shapes = jax.eval_shape(network.init, jax.random.key(0), batch["observation"], batch["task"])["params"]
    count = sum(x.size for x in jax.tree_util.tree_leaves(shapes))
    assert 3.2e9 < count < 3.4e9, count
    shardings = param_shardings(
        shapes, make_mesh(data=1, fsdp=8), [(p, jax.sharding.PartitionSpec(*s)) for p, s in config["sharding_rules"]]
    )
    per_device, replicated_large = 0, []
    for (path, shape), sharding in zip(
        jax.tree_util.tree_leaves_with_path(shapes), jax.tree_util.tree_leaves(shardings), strict=True
    ):
        shard = sharding.shard_shape(shape.shape)
        per_device += int(np.prod(shard)) * 4 * 3  # float32 parameter + Adam's two moments
        if shape.size >= 2**20 and shard == shape.shape:
            replicated_large.append(jax.tree_util.keystr(path))
    assert not replicated_large
    assert per_device < 1.01 * count * 12 / 8  # ~5 GB of a 40 GB state per device


def test_the_trainer_runs_the_vla_configs_on_an_fsdp_mesh_and_the_loss_falls(synthetic_data_dir, tmp_path, capsys):
    run_dir = tmp_path / "bins"
    overrides = {
        "dataset.mixture": "synthetic",
        "num_steps": 10,
        "log_interval": 1,
        "eval_interval": 10,
        "save_interval": 10,
        "model.vla.action.action_dim": 7,
        "model.vla.backbone.config": TWO_LAYER_TINY,
        "optimizer.learning_rate": 2e-3,
        "optimizer.warmup_steps": 0,
        "mesh.data": 2,
        "mesh.fsdp": -1,
    }
    trained_runs.train(
        trained_runs.small_run(synthetic_data_dir, run_dir, **overrides), "experiments/configs/vla_tokens.py:bins"
    )
    assert "mesh {'data': 2, 'fsdp': 4}" in capsys.readouterr().out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 10 and losses[-1] < losses[0] - 2.0, losses
    val = [r for r in records if "val/action_action_mse" in r]
    assert val and np.isfinite(val[0]["val/action_action_mse"])
    model = PolicyModel.load_pretrained(str(run_dir))
    assert model.config["model"]["vla"]["backbone"]["config"]["vision"]["image_size"] == 64
    assert model.example_batch["action"].shape[1:] == (1, 4, 7)
    assert model.config["model"]["vla"]["backbone"]["config"]["text"]["num_layers"] == 2
