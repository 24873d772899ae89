"""The MT10 recipe's pieces: its config and variants, the sentence-token language input, and how a
release tells evaluation which observation is its proprio and at which size to render."""

import jax
import numpy as np
import pytest

from octo_like.eval.policies import env_proprio_key
from octo_like.utils.config import load_config
from octo_like.utils.errors import InputError

CONFIG = "experiments/configs/metaworld_mt10.py"


def test_the_recipe_reads_the_full_state_the_sentence_embedding_and_films_the_primary_camera():
    config = load_config(CONFIG)
    assert config.dataset.mixture == "metaworld/mt10"
    assert config.dataset.dataset_kwargs.proprio_obs_key == "full_state"
    assert config.model.language.tokens == "sentence"
    tokenizers = config.model.observation_tokenizers
    assert tokenizers["primary"]["kwargs"]["use_film"] and not tokenizers["wrist"]["kwargs"]["use_film"]
    assert config.model.heads["action"]["name"] == "FlowMatchingActionHead"


def test_a_variant_changes_one_knob_and_a_bad_one_is_one_line():
    config = load_config(f"{CONFIG}:proprio=hand,wrist=off,chunk=8,head=l1")
    assert config.dataset.dataset_kwargs.proprio_obs_key == "proprio"
    assert (
        "wrist" not in config.model.observation_tokenizers
        and "wrist" not in config.dataset.frame_transform_kwargs.resize_size
    )
    assert config.dataset.traj_transform_kwargs.action_horizon == 8
    assert "action_horizon" not in config.model.heads["action"]["kwargs"]  # the head takes the data's chunk
    with pytest.raises(InputError, match=r"^variant proprio='goal'; expected one of state, hand$"):
        load_config(f"{CONFIG}:proprio=goal")
    with pytest.raises(InputError, match=r"^variant item 'lr=3'; expected knob=value with a knob among head, proprio"):
        load_config(f"{CONFIG}:lr=3")
    with pytest.raises(InputError, match=r"^variant chunk='0'; expected a positive integer$"):
        load_config(f"{CONFIG}:chunk=0")
    assert load_config(CONFIG).model.language.noise_std == 0.04
    assert load_config(f"{CONFIG}:language=all").model.language.noise_std == 0.0  # no sentence to jitter
    assert load_config(f"{CONFIG}:noise=0").model.language.noise_std == 0.0
    assert load_config(f"{CONFIG}:noise=0.05").model.language.noise_std == 0.05
    with pytest.raises(
        InputError, match=r"^variant noise=0.05 jitters the sentence token; it needs language=sentence$"
    ):
        load_config(f"{CONFIG}:noise=0.05,language=all")
    with pytest.raises(InputError, match=r"^variant noise='-1'; expected a number >= 0$"):
        load_config(f"{CONFIG}:noise=-1")


def test_a_release_names_the_environment_observation_of_its_proprio():
    assert env_proprio_key({"proprio": {"mean": [0.0], "obs_key": "full_state"}}) == "state"
    assert env_proprio_key({"proprio": {"mean": [0.0]}}) == "proprio"  # releases from before obs_key
    with pytest.raises(
        InputError, match=r"^the checkpoint's proprio was read from the dataset key 'joints'; a Meta-World "
    ):
        env_proprio_key({"proprio": {"obs_key": "joints"}})


def test_sentence_tokens_are_one_unit_length_token_close_for_rewordings():
    from octo_like.hf.minilm import load_bert_params
    from octo_like.model.scratch.network import LANGUAGE_ENCODER
    from octo_like.policy.build import make_network
    from octo_like.utils.assets import installed_minilm_dir
    from octo_like.utils.text_tokenizer import FixedLengthTokenizer

    tokenizer = FixedLengthTokenizer(None, 16)
    texts = ["pick up the puck and place it at the goal", "carry the puck to the goal position", "open the drawer"]
    task = {"language_instruction": tokenizer(texts), "pad_mask_dict": {"language_instruction": np.ones(3, bool)}}
    model_config = {
        "language": {"max_length": 16, "tokens": "sentence"},
        "readouts": {"action": 1},
        "heads": {},
        "transformer": {"size": "tiny"},
    }
    network = make_network(model_config, window_size=1)
    params = {LANGUAGE_ENCODER: load_bert_params(installed_minilm_dir())[1]}
    groups, embedding_BC = network.apply({"params": params}, task, train=False, method=network.language_groups)
    group = groups["language"]
    assert group.tokens.shape[:2] == (3, 1) and group.mask.tolist() == [[True]] * 3
    sentences = np.asarray(group.tokens[:, 0])
    np.testing.assert_allclose(np.linalg.norm(sentences, axis=-1), 1.0, rtol=1e-5)
    similarity = sentences @ sentences.T
    assert similarity[0, 1] > similarity[0, 2] and similarity[0, 1] > similarity[1, 2]
    with pytest.raises(InputError, match=r"^model.language.tokens='pooled'; expected one of all, sentence$"):
        make_network({**model_config, "language": {"tokens": "pooled"}}, window_size=1)

    # Train-time jitter: unit length still, near the clean sentence, FiLM's embedding jittered alike
    # at its own scale; evaluation (train=False) and a zero std leave the sentence exact.
    noisy_config = {**model_config, "language": {**model_config["language"], "noise_std": 0.03}}
    noisy = make_network(noisy_config, window_size=1)

    def language(network, train, seed=0):
        groups, embedding_BC = network.apply(
            {"params": params},
            task,
            train=train,
            method=network.language_groups,
            rngs={"dropout": jax.random.key(seed)},
        )
        return np.asarray(groups["language"].tokens[:, 0]), np.asarray(embedding_BC)

    jittered, jittered_embedding_BC = language(noisy, train=True)
    np.testing.assert_allclose(np.linalg.norm(jittered, axis=-1), 1.0, rtol=1e-5)
    cosine = np.sum(jittered * sentences, axis=-1)
    # 384 dimensions of std 0.03: a noise of norm ~0.59, so a cosine of ~0.86 to the clean sentence.
    assert np.all((cosine > 0.75) & (cosine < 0.95)), cosine
    np.testing.assert_allclose(
        jittered_embedding_BC, jittered * np.linalg.norm(embedding_BC, axis=-1, keepdims=True), rtol=1e-5
    )
    assert not np.allclose(language(noisy, train=True, seed=1)[0], jittered)  # fresh noise per step
    for clean_sentences, clean_embedding_BC in (language(noisy, train=False), language(network, train=True)):
        np.testing.assert_array_equal(clean_sentences, sentences)
        np.testing.assert_array_equal(clean_embedding_BC, embedding_BC)
    with pytest.raises(InputError, match=r"^model.language.noise_std=0.1; expected a number >= 0, and 0 unless"):
        make_network({**model_config, "language": {"tokens": "all", "noise_std": 0.1}}, window_size=1)
