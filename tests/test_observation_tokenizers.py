"""Tokenizers and stems: token counts and shapes, masks, FiLM, proprio binning, one-line errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from octo_like.model.scratch.observation_tokenizers import (
    TOKENIZERS,
    GoalImageTokenizer,
    ImageTokenizer,
    ProprioTokenizer,
    language_mask,
)
from octo_like.model.vision.stems import STEMS
from octo_like.utils.errors import InputError

# Narrow stems with few distinct kernel shapes: on CPU, init compiles one random initializer per
# shape, and that (not the convolutions) is what makes these tests slow.
TINY_STEM_KWARGS = {
    "small_stem": {"features": (8, 8), "num_features": 8},
    "resnet": {"width": 8, "stage_features": (8, 8, 8), "blocks_per_stage": 1, "num_features": 8},
}


def _observation(batch=2, window=3, size=32, proprio_dims=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image_primary": rng.integers(0, 256, (batch, window, size, size, 3), dtype=np.uint8),
        "proprio": rng.normal(size=(batch, window, proprio_dims)).astype(np.float32),
        "timestep": np.tile(np.arange(window, dtype=np.int32), (batch, 1)),
        "timestep_pad_mask": np.ones((batch, window), bool),
        "pad_mask_dict": {"image_primary": np.ones((batch, window), bool), "proprio": np.ones((batch, window), bool)},
    }


def _task(batch=2, size=32, length=5):
    attention_mask = np.zeros((batch, length), np.int32)
    attention_mask[:, :3] = 1
    return {
        "language_instruction": {"input_ids": np.ones((batch, length), np.int32), "attention_mask": attention_mask},
        "image_primary": np.zeros((batch, size, size, 3), np.uint8),
        "pad_mask_dict": {"language_instruction": np.array([True, False]), "image_primary": np.array([True, False])},
    }


def _init(module, observation, task, **kwargs):
    return module.init(jax.random.key(0), observation, task, train=False, **kwargs)


@pytest.mark.parametrize("stem", sorted(STEMS))
@pytest.mark.parametrize("size, tokens", [(64, 16), (128, 64)])
def test_image_tokens_per_frame_follow_stride_16(stem, size, tokens):
    observation, task = _observation(size=size), _task(size=size)
    tokenizer = ImageTokenizer("primary", stem=stem)  # default stems: 512 features
    variables = jax.eval_shape(lambda: _init(tokenizer, observation, task))
    group = jax.eval_shape(lambda v: tokenizer.apply(v, observation, task, train=False), variables)
    assert group.tokens.shape == (2, 3, tokens, 512)
    assert group.mask.shape == (2, 3, tokens) and group.mask.dtype == jnp.bool_
    goal = GoalImageTokenizer("primary", stem=stem)
    goal_variables = jax.eval_shape(lambda: _init(goal, observation, task))
    goal_group = jax.eval_shape(lambda v: goal.apply(v, observation, task, train=False), goal_variables)
    assert goal_group.tokens.shape == (2, tokens, 512) and goal_group.mask.shape == (2, tokens)


def test_stem_parameter_counts():
    images_NHWC = jnp.zeros((1, 64, 64, 3), jnp.uint8)
    for name, stem in sorted(STEMS.items()):
        for use_film in (False, True):
            module = stem(use_film=use_film)
            cond = jnp.zeros((1, 384)) if use_film else None
            params = jax.eval_shape(lambda m=module, c=cond: m.init(jax.random.key(0), images_NHWC, c, train=False))
            count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
            print(f"{name} (use_film={use_film}, 384-d condition): {count:,} parameters")
            assert count > 0


LANGUAGE_BC = np.ones((2, 12), np.float32)


@pytest.fixture(scope="module", params=sorted(STEMS))
def stem_variables(request):
    """(stem name, variables of a FiLM ImageTokenizer with that tiny stem), initialized once: init is
    the slow part on CPU. Plain image and goal tokenizers have the same parameter paths minus the FiLM
    layers, so they run on these variables too."""
    stem = request.param
    tokenizer = ImageTokenizer("primary", stem=stem, stem_kwargs=TINY_STEM_KWARGS[stem], use_film=True)
    return stem, _init(tokenizer, _observation(), _task(), language_embedding_BC=LANGUAGE_BC)


def test_image_mask_is_false_for_missing_camera_and_padded_timesteps(stem_variables):
    stem, variables = stem_variables
    observation, task = _observation(), _task()
    observation["pad_mask_dict"]["image_primary"][0, 1] = False  # camera missing in that frame
    observation["timestep_pad_mask"][1, 0] = False  # window runs before the episode start
    tokenizer = ImageTokenizer("primary", stem=stem, stem_kwargs=TINY_STEM_KWARGS[stem])
    group = tokenizer.apply(variables, observation, task, train=True)
    assert group.tokens.shape == (2, 3, 4, 8)  # 32x32 frames, stride 16
    expected_BT = np.ones((2, 3), bool)
    expected_BT[0, 1] = expected_BT[1, 0] = False
    np.testing.assert_array_equal(group.mask, np.broadcast_to(expected_BT[:, :, None], group.mask.shape))
    assert np.isfinite(np.asarray(group.tokens)).all()


def test_goal_image_and_language_masks(stem_variables):
    stem, variables = stem_variables
    observation, task = _observation(), _task()
    tokenizer = GoalImageTokenizer("primary", stem=stem, stem_kwargs=TINY_STEM_KWARGS[stem])
    group = tokenizer.apply(variables, observation, task, train=False)
    assert group.tokens.shape == (2, 4, 8)
    np.testing.assert_array_equal(group.mask.all(axis=1), [True, False])
    np.testing.assert_array_equal(group.mask.any(axis=1), [True, False])
    expected_BL = np.zeros((2, 5), bool)
    expected_BL[0, :3] = True  # sample 1 has no instruction: all of its tokens are masked
    np.testing.assert_array_equal(language_mask(task), expected_BL)


def test_film_starts_as_identity_and_then_depends_on_language(stem_variables):
    stem, variables = stem_variables
    observation, task = _observation(), _task()
    film = ImageTokenizer("primary", stem=stem, stem_kwargs=TINY_STEM_KWARGS[stem], use_film=True)
    plain = ImageTokenizer("primary", stem=stem, stem_kwargs=TINY_STEM_KWARGS[stem])

    def tokens(module, variables, language_embedding_BC=None):
        group = module.apply(variables, observation, task, train=False, language_embedding_BC=language_embedding_BC)
        return np.asarray(group.tokens)

    without_film = tokens(plain, variables)
    np.testing.assert_allclose(tokens(film, variables, LANGUAGE_BC), without_film, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tokens(film, variables, -LANGUAGE_BC), without_film, rtol=1e-6, atol=1e-6)

    # Once the FiLM projections are trained away from zero, the language embedding changes the tokens.
    def perturb(path, leaf):
        is_film = any(getattr(key, "key", "").startswith("FiLM") for key in path)
        return leaf + 0.1 * jax.random.normal(jax.random.key(1), leaf.shape) if is_film else leaf

    trained = jax.tree_util.tree_map_with_path(perturb, variables)
    assert not np.allclose(tokens(film, trained, LANGUAGE_BC), tokens(film, trained, -LANGUAGE_BC), atol=1e-4)


def test_film_needs_a_language_embedding():
    observation, task = _observation(), _task()
    tokenizer = ImageTokenizer("primary", stem_kwargs=TINY_STEM_KWARGS["small_stem"], use_film=True)
    with pytest.raises(InputError, match="use_film=True but got no language_embedding_BC"):
        _init(tokenizer, observation, task)


def test_binned_proprio_tokens_per_dimension_and_bin():
    tokenizer = ProprioTokenizer(mode="binned", n_bins=4, low=-2.0, high=2.0, token_dim=8)  # bins 1.0 wide
    observation, task = _observation(proprio_dims=2), _task()
    observation["pad_mask_dict"]["proprio"][1, 2] = False
    observation["timestep_pad_mask"][0, 0] = False
    variables = _init(tokenizer, observation, task)

    def tokens(proprio_TP):
        batch = {**observation, "proprio": np.broadcast_to(np.float32(proprio_TP), (2, 3, 2))}
        return np.asarray(tokenizer.apply(variables, batch, task, train=False).tokens[0])

    reference_TNC = tokens([[0.1, 0.1], [1.1, 2.0], [-1.5, -2.0]])  # bins [2, 2], [3, 3], [0, 0]
    assert reference_TNC.shape == (3, 2, 8)
    # Same bin, same dimension: same token. 2.0 (= high) belongs to the last bin; beyond [low, high] clips.
    np.testing.assert_array_equal(tokens([[0.9, 0.5], [1.99, 7.0], [-1.01, -9.0]]), reference_TNC)
    # Different bins: different tokens.
    assert not np.array_equal(reference_TNC[0, 0], reference_TNC[1, 0])
    assert not np.array_equal(reference_TNC[0, 0], reference_TNC[2, 0])
    assert not np.array_equal(tokens([[-0.1, 0.1], [1.1, 2.0], [-1.5, -2.0]])[0, 0], reference_TNC[0, 0])
    # Same bin in another dimension: each dimension has its own table.
    assert not np.array_equal(reference_TNC[0, 0], reference_TNC[0, 1])

    group = tokenizer.apply(variables, observation, task, train=False)
    expected_BT = np.ones((2, 3), bool)
    expected_BT[1, 2] = expected_BT[0, 0] = False
    np.testing.assert_array_equal(group.mask, np.broadcast_to(expected_BT[:, :, None], (2, 3, 2)))


def test_linear_proprio_is_one_token_per_timestep():
    observation, task = _observation(proprio_dims=5), _task()
    tokenizer = ProprioTokenizer(token_dim=32)
    group = tokenizer.apply(_init(tokenizer, observation, task), observation, task, train=False)
    assert group.tokens.shape == (2, 3, 1, 32) and group.mask.shape == (2, 3, 1)


def test_registry():
    assert TOKENIZERS == {"image": ImageTokenizer, "goal_image": GoalImageTokenizer, "proprio": ProprioTokenizer}


def test_missing_observation_key_names_key_and_available_keys():
    observation, task = _observation(), _task()
    with pytest.raises(InputError) as err:
        _init(ImageTokenizer("wrist"), observation, task)
    assert str(err.value) == (
        "observation has no 'image_wrist'; available keys: "
        "image_primary, pad_mask_dict, proprio, timestep, timestep_pad_mask"
    )
    del observation["pad_mask_dict"]["proprio"]
    with pytest.raises(InputError, match=r"^observation\['pad_mask_dict'\] has no 'proprio'; available keys: image_"):
        _init(ProprioTokenizer(), observation, task)


def test_wrong_image_size_is_one_clear_line():
    observation, task = _observation(size=64), _task(size=64)
    tokenizer = ImageTokenizer("primary", stem_kwargs=TINY_STEM_KWARGS["small_stem"], image_size=(128, 128))
    with pytest.raises(InputError) as err:
        _init(tokenizer, observation, task)
    assert str(err.value) == "image_primary has size 64x64; the model was built for 128x128"
    goal = GoalImageTokenizer("primary", image_size=(128, 128))
    with pytest.raises(InputError) as err:
        _init(goal, observation, task)
    assert str(err.value) == "task image_primary has size 64x64; the model was built for 128x128"


def test_bad_stem_and_mode_names():
    observation, task = _observation(), _task()
    with pytest.raises(InputError, match="^unknown stem 'vit'; expected one of small_stem, resnet"):
        _init(ImageTokenizer("primary", stem="vit"), observation, task)
    with pytest.raises(InputError, match="^unknown ProprioTokenizer mode 'fourier'; expected 'linear' or 'binned'"):
        _init(ProprioTokenizer(mode="fourier"), observation, task)
    with pytest.raises(InputError, match="expected uint8 images"):
        float_images = {**observation, "image_primary": observation["image_primary"].astype(np.float32)}
        _init(ImageTokenizer("primary", stem_kwargs=TINY_STEM_KWARGS["small_stem"]), float_images, task)


def test_fused_goal_is_stacked_on_every_frames_channels_and_a_missing_goal_is_black():
    module = ImageTokenizer(camera="primary", stem_kwargs=TINY_STEM_KWARGS["small_stem"], fuse_goal=True)
    observation, task = _observation(), _task()
    task["image_primary"] = np.random.default_rng(1).integers(0, 256, task["image_primary"].shape, dtype=np.uint8)
    variables = _init(module, observation, task)
    first_kernel = jax.tree.leaves(variables["params"])
    assert any(leaf.ndim == 4 and leaf.shape[2] == 6 for leaf in first_kernel)  # frame + goal channels
    tokens = module.apply(variables, observation, task, train=False).tokens
    unfused = ImageTokenizer(camera="primary", stem_kwargs=TINY_STEM_KWARGS["small_stem"])
    assert tokens.shape == unfused.apply(_init(unfused, observation, task), observation, task, train=False).tokens.shape
    # Example 0 has its goal: another goal changes its tokens. Example 1's goal is padding: its
    # tokens are those of a black goal, whatever the array holds.
    other_goal = {**task, "image_primary": 255 - task["image_primary"]}
    changed = module.apply(variables, observation, other_goal, train=False).tokens
    assert not np.allclose(changed[0], tokens[0])
    np.testing.assert_array_equal(changed[1], tokens[1])
    black = {
        **task,
        "image_primary": np.zeros_like(task["image_primary"]),
        "pad_mask_dict": {"image_primary": np.ones(2, bool)},
    }
    np.testing.assert_allclose(module.apply(variables, observation, black, train=False).tokens[1], tokens[1], atol=1e-6)
    with pytest.raises(InputError, match=r"task image_primary has shape \(2, 16, 16, 3\)"):
        module.apply(variables, observation, {**task, "image_primary": task["image_primary"][:, :16, :16]}, train=False)
