"""PolicyModel: creation from a config, loss, sampling, tasks, and the release format round trip."""

import json

import jax
import jax.extend
import numpy as np
import pytest

from octo_like.model.heads import DiffusionActionHead, head_spec
from octo_like.model.scratch.observation_tokenizers import ImageTokenizer, ProprioTokenizer
from octo_like.policy.build import with_action_horizon
from octo_like.policy.model import PolicyModel
from octo_like.utils import spec
from octo_like.utils.errors import InputError
from octo_like.utils.normalization import with_normalization_settings

B, T, H, A, P = 2, 2, 3, 4, 4


def small_config(head="diffusion"):
    heads = {"diffusion": spec.create(DiffusionActionHead, action_horizon=H, action_dim=A, diffusion_steps=5)}
    return {
        "model": {
            "observation_tokenizers": {
                "primary": spec.create(
                    ImageTokenizer,
                    camera="primary",
                    image_size=(32, 32),
                    stem_kwargs={"features": (8, 16), "num_features": 32, "patch_size": 8},
                ),
                "proprio": spec.create(ProprioTokenizer, mode="linear", token_dim=16),
            },
            "task_tokenizers": {},
            "language": {"max_length": 8},
            "readouts": {"action": 1},
            "transformer": {"size": "tiny", "num_layers": 1, "token_dim": 32, "num_heads": 2, "mlp_dim": 64},
            "heads": {"action": heads[head]},
        },
        "dataset": {"dataset_kwargs": {"action_proprio_normalization_type": "normal"}},
    }


def example_batch(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "observation": {
            "image_primary": rng.integers(0, 256, (B, T, 32, 32, 3), dtype=np.uint8),
            "proprio": rng.normal(size=(B, T, P)).astype(np.float32),
            "timestep": np.tile(np.arange(T, dtype=np.int32), (B, 1)),
            "timestep_pad_mask": np.ones((B, T), bool),
            "pad_mask_dict": {"image_primary": np.ones((B, T), bool), "proprio": np.ones((B, T), bool)},
        },
        "task": {
            "language_instruction": {
                "input_ids": np.full((B, 8), 101, np.int32),
                "attention_mask": np.ones((B, 8), np.int32),
            },
            "pad_mask_dict": {"language_instruction": np.ones(B, bool)},
        },
        "action": rng.normal(size=(B, T, H, A)).astype(np.float32),
        "action_pad_mask": np.ones((B, T, H, A), bool),
        "dataset_name": np.array([b"toy"] * B, dtype=object),
    }


STATISTICS = {
    "toy": with_normalization_settings(
        {
            "action": {"mean": np.array([1.0, 2.0, 3.0, 0.0]), "std": np.array([2.0, 2.0, 2.0, 1.0])},
            "proprio": {"mean": np.zeros(P), "std": np.ones(P)},
        },
        "normal",
        action_mask=[True, True, True, False],
    )
}


@pytest.fixture(scope="module")
def model():
    return PolicyModel.create(small_config(), example_batch(), STATISTICS, jax.random.key(0))


def test_language_encoder_is_the_pretrained_minilm(model):
    from octo_like.hf.minilm import minilm_param_tree

    pretrained = minilm_param_tree()
    np.testing.assert_array_equal(
        model.params["language_encoder"]["word_embeddings"]["embedding"], pretrained["word_embeddings"]["embedding"]
    )


def test_loss_is_finite_and_language_gets_no_gradient(model):
    batch = example_batch()
    # Jitted: one compiled program instead of hundreds of eagerly compiled ops (strings stay out).
    numeric = {key: value for key, value in batch.items() if key != "dataset_name"}
    value_and_grad = jax.value_and_grad(model.loss, has_aux=True)
    (loss, metrics), grads = jax.jit(value_and_grad, static_argnums=3)(model.params, numeric, jax.random.key(1), True)
    assert np.isfinite(loss) and "action_loss" in metrics
    language_grads = jax.tree_util.tree_leaves(grads["language_encoder"])
    assert all(float(np.abs(g).max()) == 0.0 for g in language_grads)
    assert any(float(np.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads["head_modules_action"]))


def test_instruction_states_computed_once_per_instruction_give_the_encoders_loss(model):
    """The frozen encoder's states from the host cache (as training feeds them) give the loss and
    gradients of the encoder run in the step; each distinct instruction is encoded once, and a
    dropped instruction (padding) is its own row."""
    from octo_like.train.instruction_states import InstructionStates

    def batch_with(ids_BL, present_B):
        batch = {key: value for key, value in example_batch().items() if key != "dataset_name"}
        language = {"input_ids": ids_BL, "attention_mask": np.ones_like(ids_BL)}
        batch["task"] = {"language_instruction": language, "pad_mask_dict": {"language_instruction": present_B}}
        return batch

    rng = np.random.default_rng(0)
    ids_3L = rng.integers(1000, 2000, (3, 8)).astype(np.int32)
    first, second = batch_with(ids_3L[[0, 0]], np.array([True, False])), batch_with(ids_3L[[0, 1]], np.ones(B, bool))
    states = InstructionStates.for_model(model, max_instructions=2)
    value_and_grad = jax.jit(jax.value_and_grad(model.loss, has_aux=True), static_argnums=3)
    for batch in (first, second):
        with_states = states(batch)
        assert with_states["task"]["language_instruction"]["states"].shape == (B, 8, 384)
        (loss, _), grads = value_and_grad(model.params, with_states, jax.random.key(1), False)
        (expected_loss, _), expected_grads = value_and_grad(model.params, batch, jax.random.key(1), False)
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
        for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    # Rows: instruction 0, instruction 0 dropped (all masked), then instruction 1: three encoded;
    # the second batch's instruction 0 was reused. Two kept at most: the least recently used went.
    assert states.encoded_rows == 3 and len(states._states) == 2
    states(batch_with(ids_3L[[0, 0]], np.array([True, False])))
    assert states.encoded_rows == 4  # the dropped row had been forgotten


def matmul_dtypes(fn, *args) -> dict:
    """{primitive: [(output dtype, multiply-adds)]} of every matmul and convolution `fn` traces to,
    nested calls included."""
    found = {"dot_general": [], "conv_general_dilated": []}

    def multiply_adds(eqn):
        lhs, rhs = (var.aval.shape for var in eqn.invars[:2])
        if eqn.primitive.name == "dot_general":
            (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
            return np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[axis] for axis in lhs_contracting])
        return (
            np.prod(eqn.outvars[0].aval.shape) * np.prod(rhs) // eqn.outvars[0].aval.shape[-1]
        )  # NHWC out, HWIO kernel

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in found:
                found[eqn.primitive.name].append((str(eqn.outvars[0].aval.dtype), int(multiply_adds(eqn))))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_bf16_parameters_make_the_stem_and_the_transformer_compute_in_bf16(model):
    from octo_like.train.step import cast_floats

    def loss(params):
        return model.loss(params, example_batch(), jax.random.key(1), True)[0]

    float32 = matmul_dtypes(loss, model.params)
    assert {dtype for ops in float32.values() for dtype, _ in ops} == {"float32"}
    bfloat16 = matmul_dtypes(loss, cast_floats(model.params, jax.numpy.bfloat16))
    # Every convolution (the stem), and the matmuls of the language encoder, the transformer and
    # the readout projections; only small ones stay float32 (the proprio projection and the
    # diffusion head's MLP, fed float32 noisy actions).
    assert {dtype for dtype, _ in bfloat16["conv_general_dilated"]} == {"bfloat16"}
    total = sum(count for _, count in bfloat16["dot_general"])
    in_bf16 = sum(count for dtype, count in bfloat16["dot_general"] if dtype == "bfloat16")
    assert in_bf16 / total > 0.9, bfloat16["dot_general"]


def test_action_mse_compares_sampled_chunks_with_the_targets(model):
    batch = example_batch()
    metrics = model.action_mse(model.params, batch, jax.random.key(4))
    assert set(metrics) == {"action_action_mse"} and np.isfinite(metrics["action_action_mse"])
    padded = dict(batch, action_pad_mask=np.zeros_like(batch["action_pad_mask"]))
    assert float(model.action_mse(model.params, padded, jax.random.key(4))["action_action_mse"]) == 0.0


def test_sample_actions_unnormalizes_with_the_statistics_settings(model):
    batch = example_batch()
    task = model.create_tasks(texts=["open the drawer", "reach the goal"])
    assert task["language_instruction"]["input_ids"].shape == (B, 8)
    normalized = model.sample_actions(batch["observation"], task, rng=jax.random.key(2))
    actions = model.sample_actions(
        batch["observation"], task, rng=jax.random.key(2), unnormalization_statistics=STATISTICS["toy"]["action"]
    )
    assert normalized.shape == actions.shape == (B, H, A)
    np.testing.assert_allclose(
        actions[..., :3], normalized[..., :3] * 2.0 + np.array([1.0, 2.0, 3.0]), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(actions[..., 3], normalized[..., 3])  # masked: the gripper stays raw


def test_release_round_trip_gives_the_same_actions(model, tmp_path):
    model.save_pretrained(7, str(tmp_path))
    assert {p.name for p in tmp_path.iterdir()} >= {
        "config.json",
        "dataset_statistics.json",
        "example_batch.msgpack",
        "7",
    }
    loaded = PolicyModel.load_pretrained(str(tmp_path))
    batch, task = example_batch(), model.create_tasks(texts=["a", "b"])
    np.testing.assert_allclose(
        loaded.sample_actions(batch["observation"], task, rng=jax.random.key(3)),
        model.sample_actions(batch["observation"], task, rng=jax.random.key(3)),
        atol=1e-6,
    )
    np.testing.assert_array_equal(loaded.dataset_statistics["toy"]["action"]["mask"], [True, True, True, False])


def test_a_head_without_a_chunk_length_predicts_the_datas_and_the_release_records_it(tmp_path):
    config = small_config()
    config["model"]["language"] = None
    config["model"]["heads"]["action"] = head_spec("l1", action_dim=A)
    assert "action_horizon" not in config["model"]["heads"]["action"]["kwargs"]
    model = PolicyModel.create(config, example_batch(), STATISTICS, jax.random.key(0))
    assert model.config["model"]["heads"]["action"]["kwargs"]["action_horizon"] == H
    batch = example_batch()
    task = model.create_tasks(texts=["a", "b"])
    assert model.sample_actions(batch["observation"], task, rng=jax.random.key(1)).shape == (B, H, A)
    model.save_pretrained(1, str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["heads"]["action"]["kwargs"]["action_horizon"] == H


def test_a_chunk_length_written_in_the_model_section_stays_and_the_vla_gets_the_datas_too():
    explicit = {"heads": {"action": head_spec("l1", action_horizon=5, action_dim=A)}}
    assert with_action_horizon(explicit, H)["heads"]["action"]["kwargs"]["action_horizon"] == 5
    vla = {"vla": {"action": {"kind": "bins", "horizon": None, "action_dim": A}}}
    assert with_action_horizon(vla, H)["vla"]["action"] == {"kind": "bins", "horizon": H, "action_dim": A}
    assert vla["vla"]["action"]["horizon"] is None  # the caller's config is left as it was


def test_bad_inputs_fail_in_one_line(model, tmp_path):
    observation = dict(example_batch()["observation"])
    del observation["proprio"]
    task = model.create_tasks(texts=["a", "b"])
    with pytest.raises(InputError, match=r"observation has no 'proprio'"):
        model.sample_actions(observation, task, rng=jax.random.key(0))
    observation = dict(example_batch()["observation"], image_primary=np.zeros((B, T, 48, 48, 3), np.uint8))
    with pytest.raises(
        InputError,
        match=r"observation\['image_primary'\] has shape \(2, 2, 48, 48, 3\); "
        r"the model was built for \[B, T, \*\[32, 32, 3\]\]",
    ):
        model.sample_actions(observation, task, rng=jax.random.key(0))
    with pytest.raises(InputError, match="is not a run directory: it has no config.json"):
        PolicyModel.load_pretrained(str(tmp_path))


def test_model_and_evaluation_never_import_tensorflow():
    # DESIGN: the model never imports TF; evaluation renders with EGL, which crashes beside TF.
    import subprocess
    import sys

    code = (
        "import sys, octo_like.policy.model, octo_like.eval.rollout, octo_like.eval.policies; "
        "assert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
