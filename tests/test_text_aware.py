"""Text-aware selection: the math against a numpy reference, the temperature, and the OTTER-style
policy on the committed tiny CLIP (frozen, pretrained weights loaded, instruction-dependent tokens)."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from octo_like.hf.clip import load_clip
from octo_like.model.heads import head_spec
from octo_like.model.scratch.observation_tokenizers import ProprioTokenizer
from octo_like.model.scratch.text_aware import Temperature, TextAwareImageTokenizer, select_patches, sincos_positions_2d
from octo_like.policy.model import PolicyModel
from octo_like.train.optim import make_optimizer
from octo_like.train.state import TrainState
from octo_like.train.step import make_train_step
from octo_like.utils import spec
from octo_like.utils.errors import InputError
from octo_like.utils.normalization import with_normalization_settings
from octo_like.utils.text_tokenizer import FixedLengthTokenizer

CLIP_DIR = os.path.join(os.path.dirname(__file__), "fixtures", "clip_tiny")
OTTER_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "configs", "otter_metaworld.py"
)
B, T, H, A, P, L = 2, 2, 3, 4, 4, 12
INSTRUCTIONS = ["open the drawer", "push the mug to the left"]


def reference_selection(text_BLD, mask_BL, patches_BND, position_ND, temperature):
    """The selection math written out with numpy loops, one token at a time."""
    selected = np.zeros_like(text_BLD)
    for b in range(text_BLD.shape[0]):
        for token in range(text_BLD.shape[1]):
            if not mask_BL[b, token]:
                continue
            t = text_BLD[b, token] / np.linalg.norm(text_BLD[b, token])
            cosines = np.array([t @ (p / np.linalg.norm(p)) for p in patches_BND[b]])
            weights = np.exp(cosines / temperature - np.max(cosines / temperature))
            weights /= weights.sum()
            selected[b, token] = sum(w * (p + q) for w, p, q in zip(weights, patches_BND[b], position_ND))
    return selected


def test_selection_matches_the_numpy_reference():
    rng = np.random.default_rng(0)
    text, patches = rng.normal(size=(2, 5, 8)).astype(np.float32), rng.normal(size=(2, 9, 8)).astype(np.float32) * 3
    mask = np.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]], bool)
    position = sincos_positions_2d(3, 8)
    selected, weights = select_patches(text, mask, patches, position, 0.07)
    np.testing.assert_allclose(selected, reference_selection(text, mask, patches, position, 0.07), atol=1e-5)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-6)
    # A low temperature picks the most similar patch: the selection is that patch (plus its position).
    sharp, _ = select_patches(text, mask, patches, position, 1e-3)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    best = np.argmax(np.einsum("ld,nd->ln", unit(text[0]), unit(patches[0])), axis=1)
    np.testing.assert_allclose(sharp[0, :3], (patches[0] + position)[best[:3]], atol=1e-4)


def test_sincos_positions_are_distinct_per_patch():
    position = sincos_positions_2d(4, 16)
    assert position.shape == (16, 16)
    distances = np.linalg.norm(position[:, None] - position[None], axis=-1)
    assert distances[~np.eye(16, dtype=bool)].min() > 0.1
    with pytest.raises(InputError, match="divisible by 4"):
        sincos_positions_2d(4, 10)


def test_learned_temperature_starts_at_init_stays_in_range_and_keeps_its_gradient():
    module = Temperature(initial=0.07, low=0.01, high=1.0)
    params = module.init(jax.random.key(0))
    np.testing.assert_allclose(module.apply(params), 0.07, rtol=1e-5)
    for raw in (-30.0, 30.0, 0.0):
        value = module.apply({"params": {"raw": jnp.asarray(raw)}})
        assert 0.01 * (1 - 1e-6) <= float(value) <= 1.0 * (1 + 1e-6)
    # Far from the bounds a clip would give zero gradient; the sigmoid bound keeps it nonzero.
    gradient = jax.grad(lambda raw: module.apply({"params": {"raw": raw}}))(jnp.asarray(5.0))
    assert float(gradient) > 0
    assert Temperature(initial=0.2, learned=False).init(jax.random.key(0)) == {}
    with pytest.raises(InputError, match="strictly between"):
        Temperature(initial=2.0).init(jax.random.key(0))


def policy_config(selection="text_aware", clip_dir=CLIP_DIR, language_encoder="clip"):
    return {
        "model": {
            "observation_tokenizers": {
                "primary": spec.create(
                    TextAwareImageTokenizer, camera="primary", num_tokens=3, width=32, num_heads=2, selection=selection
                ),
                "proprio": spec.create(ProprioTokenizer, mode="linear", token_dim=16),
            },
            "task_tokenizers": {},
            "language": {"max_length": L, "tokenizer_json": clip_dir, "encoder": language_encoder},
            "clip": {"checkpoint": clip_dir},
            "readouts": {"action": 1},
            "transformer": {"size": "tiny", "num_layers": 1, "token_dim": 32, "num_heads": 2, "mlp_dim": 64},
            "heads": {"action": head_spec("l1", action_horizon=H, action_dim=A)},
        },
        "dataset": {"dataset_kwargs": {"action_proprio_normalization_type": "normal"}},
    }


def example_batch(texts=INSTRUCTIONS, seed=0):
    rng = np.random.default_rng(seed)
    tokens = FixedLengthTokenizer(CLIP_DIR, L)(list(texts))
    return {
        "observation": {
            "image_primary": rng.integers(0, 256, (B, T, 32, 32, 3), dtype=np.uint8),
            "proprio": rng.normal(size=(B, T, P)).astype(np.float32),
            "timestep": np.tile(np.arange(T, dtype=np.int32), (B, 1)),
            "timestep_pad_mask": np.ones((B, T), bool),
            "pad_mask_dict": {"image_primary": np.ones((B, T), bool), "proprio": np.ones((B, T), bool)},
        },
        "task": {"language_instruction": tokens, "pad_mask_dict": {"language_instruction": np.ones(B, bool)}},
        "action": rng.normal(size=(B, T, H, A)).astype(np.float32),
        "action_pad_mask": np.ones((B, T, H, A), bool),
    }


STATISTICS = {
    "toy": with_normalization_settings(
        {"action": {"mean": np.zeros(A), "std": np.ones(A)}, "proprio": {"mean": np.zeros(P), "std": np.ones(P)}},
        "normal",
    )
}


@pytest.fixture(scope="module")
def model():
    return PolicyModel.create(policy_config(), example_batch(), STATISTICS, jax.random.key(0))


def primary_tokens(model, batch):
    return model.module.apply({"params": model.params}, batch["observation"], batch["task"], method=_obs_group)


def _obs_group(module, observation, task):
    """The primary camera's token group, as the policy computes it."""
    from octo_like.model.tokens import TokenGroup

    ids = task["language_instruction"]["input_ids"]
    mask = task["language_instruction"]["attention_mask"].astype(bool)
    language = TokenGroup(module.clip.encode_text(ids, mask.astype(jnp.int32))["token_embeds"], mask)
    return module.observation_tokenizer_modules["primary"](
        observation, task, train=False, language=language, clip=module.clip
    )


def test_policy_holds_the_pretrained_clip_and_records_its_architecture(model):
    pretrained = load_clip(CLIP_DIR).params
    for tower in ("vision_model", "text_model", "visual_projection", "text_projection"):
        for got, want in zip(
            jax.tree_util.tree_leaves(model.params["clip"][tower]), jax.tree_util.tree_leaves(pretrained[tower])
        ):
            np.testing.assert_array_equal(got, want)
    assert model.config["model"]["clip"]["config"]["vision"]["image_size"] == 32
    assert model.config["model"]["clip"]["config"]["projection_dim"] == 24


def test_clip_gets_no_gradient_and_the_optimizer_never_changes_it(model):
    batch = example_batch()
    # Jitted: one compiled program instead of hundreds of eagerly compiled ops (strings stay out).
    numeric = {key: value for key, value in batch.items() if key != "dataset_name"}
    value_and_grad = jax.value_and_grad(model.loss, has_aux=True)
    (loss, _), grads = jax.jit(value_and_grad, static_argnums=3)(model.params, numeric, jax.random.key(1), True)
    assert np.isfinite(loss)
    assert all(float(np.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(grads["clip"]))
    tokenizer_grads = grads["observation_tokenizer_modules_primary"]
    assert float(np.abs(tokenizer_grads["temperature"]["raw"])) > 0
    assert all(float(np.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(tokenizer_grads["pooler"]))

    # Frozen by the model whatever the config says: no frozen_keys here, and weight decay that
    # would shrink a parameter with a zero gradient.
    assert model.frozen_keys == ("clip/*",)
    optimizer, _ = make_optimizer(model.params, {"learning_rate": 1e-2, "weight_decay": 0.1}, 10, model.frozen_keys)
    step = make_train_step(model.loss, optimizer, donate=False)
    state = TrainState.create(model.params, optimizer, jax.random.key(2))
    new_state, _ = step(state, batch)
    new_state, _ = step(new_state, batch)
    for got, want in zip(
        jax.tree_util.tree_leaves(new_state.params["clip"]), jax.tree_util.tree_leaves(model.params["clip"])
    ):
        np.testing.assert_array_equal(got, want)
    moved = jax.tree_util.tree_leaves(new_state.params["observation_tokenizer_modules_primary"]["pooler"])
    before = jax.tree_util.tree_leaves(model.params["observation_tokenizer_modules_primary"]["pooler"])
    assert any(not np.array_equal(a, b) for a, b in zip(moved, before))


def test_text_aware_tokens_follow_the_instruction_and_the_ablation_ignores_it(model):
    first = primary_tokens(model, example_batch(INSTRUCTIONS))
    swapped = primary_tokens(model, example_batch(INSTRUCTIONS[::-1]))
    assert first.tokens.shape == (B, T, 3, 32) and bool(first.mask.all())
    assert float(np.abs(first.tokens - swapped.tokens).max()) > 1e-3

    pooled = PolicyModel.create(policy_config("pooled"), example_batch(), STATISTICS, jax.random.key(0))
    a, b = (
        primary_tokens(pooled, example_batch(INSTRUCTIONS)),
        primary_tokens(pooled, example_batch(INSTRUCTIONS[::-1])),
    )
    assert a.tokens.shape == (B, T, 1, 32)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert "pooler" not in pooled.params["observation_tokenizer_modules_primary"]


def test_an_instruction_without_words_gives_masked_tokens(model):
    batch = example_batch(["", INSTRUCTIONS[1]])  # "" tokenizes to BOS, EOS only
    group = primary_tokens(model, batch)
    assert not bool(group.mask[0].any()) and bool(group.mask[1].all())
    assert np.isfinite(np.asarray(group.tokens)).all() and float(np.abs(group.tokens[0]).max()) == 0.0


def test_release_rebuilds_without_the_clip_checkpoint(tmp_path):
    clip_dir = str(tmp_path / "clip")
    shutil.copytree(CLIP_DIR, clip_dir)
    model = PolicyModel.create(policy_config(clip_dir=clip_dir), example_batch(), STATISTICS, jax.random.key(0))
    model.save_pretrained(0, str(tmp_path / "run"))
    shutil.rmtree(clip_dir)  # the release carries the architecture (config.json) and the weights (orbax)
    loaded = PolicyModel.load_pretrained(str(tmp_path / "run"))
    batch = example_batch()
    np.testing.assert_allclose(
        loaded.sample_actions(batch["observation"], batch["task"], rng=jax.random.key(3)),
        model.sample_actions(batch["observation"], batch["task"], rng=jax.random.key(3)),
        atol=1e-6,
    )


def test_misconfigured_text_aware_policies_fail_in_one_line():
    with pytest.raises(InputError, match="needs the CLIP text tower's tokens: set model.language.encoder='clip'"):
        PolicyModel.create(policy_config(language_encoder="minilm"), example_batch(), STATISTICS, jax.random.key(0))
    config = policy_config()
    del config["model"]["clip"]
    with pytest.raises(InputError, match="model.language.encoder='clip' needs a model.clip section"):
        PolicyModel.create(config, example_batch(), STATISTICS, jax.random.key(0))
    batch = example_batch()
    batch["observation"]["image_primary"] = np.zeros((B, T, 64, 64, 3), np.uint8)
    with pytest.raises(InputError, match="image_primary has size 64x64; the model was built for 32x32"):
        PolicyModel.create(policy_config(), batch, STATISTICS, jax.random.key(0))
    config = policy_config()
    config["model"]["clip"] = {"size": "huge"}
    with pytest.raises(InputError, match="model.clip.size='huge'; expected one of tiny, B/32, B/16, L/14"):
        PolicyModel.create(config, example_batch(), STATISTICS, jax.random.key(0))


def test_otter_config_variants_and_the_one_clip_checkpoint_reference():
    from octo_like.utils.config import load_config

    config = load_config(f"{OTTER_CONFIG}:pooled,l1")
    tokenizers = config.model.observation_tokenizers
    assert {tokenizers[camera].kwargs.selection for camera in ("primary", "wrist")} == {"pooled"}
    assert config.model.heads.action.name == "ContinuousActionHead" and "clip/*" in config.optimizer.frozen_keys
    config.clip_checkpoint = CLIP_DIR
    assert config.model.clip.checkpoint == CLIP_DIR and config.model.language.tokenizer_json == CLIP_DIR
    assert config.dataset.traj_transform_kwargs.text_tokenizer.kwargs.tokenizer_json == CLIP_DIR
    with pytest.raises(InputError, match="unknown selection 'clever'"):
        load_config(f"{OTTER_CONFIG}:clever")
