"""The user-facing policy: a network, its parameters, config, example batch and statistics.

    from octo_like.policy import PolicyModel
    model = PolicyModel.create(config, example_batch, dataset_statistics, rng)
    task = model.create_tasks(texts=["open the drawer"])
    actions_BHA = model.sample_actions(observation, task, rng=rng, unnormalization_statistics=stats["action"])
    model.save_pretrained(step, run_dir)
    model = PolicyModel.load_pretrained(run_dir)

`config` is the experiment config (a plain dict or ConfigDict); its `model` section is described in
octo_like/policy/build.py, which builds the network (octo_like.model.scratch.network.PolicyNetwork from
scratch, or octo_like.model.vla.VLANetwork with a `vla` section; both have the same methods) and
loads its pretrained parts. Frozen encoders are never updated: their outputs are cut from the
gradient and the optimizer leaves `language_encoder/*` and `clip/*` alone whatever its config says
(`frozen_keys`). With `vla.lora` the parameters hold the LoRA factors under `lora`, merged into the
base inside every apply (`network_params`), the base frozen.

The run directory (release format) holds config.json, dataset_statistics.json,
example_batch.msgpack, orbax steps with the parameters (octo_like/policy/release.py) and, when the
instructions are not tokenized by the installed MiniLM tokenizer, that tokenizer.json; a FAST
tokenizer travels in fast_tokenizer/. Loading a release builds only what octo_like/policy/registry.py
allows.
"""

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from octo_like.model.lora import merge_lora
from octo_like.model.scratch.network import CLIP, LANGUAGE_ENCODER, PolicyNetwork
from octo_like.model.vla.actions import load_fast_tokenizer
from octo_like.model.vla.network import VLANetwork
from octo_like.policy import release
from octo_like.policy.build import (
    LORA,
    LORA_FROZEN_KEYS,
    add_lora,
    check_instruction_vocabulary,
    load_pretrained_parts,
    make_network,
    plain_config,
    resolve_model_config,
    with_action_horizon,
)
from octo_like.policy.episode_cache import EpisodeCache
from octo_like.policy.registry import read_release_config
from octo_like.utils.errors import InputError
from octo_like.utils.files import write_atomically, write_text_atomically
from octo_like.utils.sharding import place_params
from octo_like.utils.text_tokenizer import FixedLengthTokenizer

RELEASE_TOKENIZER = "tokenizer.json"
RELEASE_FAST_TOKENIZER = "fast_tokenizer"


def _model_inputs(batch: Mapping) -> tuple[dict, dict]:
    """Only the arrays the model reads (strings such as dataset_name stay out of jit)."""
    return batch["observation"], batch["task"]


def _check_observation(observation: Mapping, example_observation: Mapping) -> None:
    """One clear line when an observation lacks a key or has another shape than the example batch."""
    for key, example in example_observation.items():
        if isinstance(example, Mapping):
            if key not in observation:
                raise InputError(f"observation has no '{key}'; the model needs {sorted(example_observation)}")
            _check_observation(observation[key], example)
            continue
        if key not in observation:
            raise InputError(f"observation has no '{key}'; the model needs {sorted(example_observation)}")
        got, want = np.shape(observation[key]), np.shape(example)
        if got[2:] != want[2:] or len(got) != len(want):
            raise InputError(f"observation['{key}'] has shape {got}; the model was built for [B, T, *{list(want[2:])}]")


@dataclasses.dataclass
class PolicyModel:
    module: PolicyNetwork
    params: dict
    config: dict
    example_batch: dict
    dataset_statistics: dict

    def __post_init__(self):
        self._sample_fns, self._step_fns, self._encode_task_fn = {}, {}, None
        language = self.config["model"].get("language")
        self.text_tokenizer = None
        if language is not None:
            self.text_tokenizer = FixedLengthTokenizer(language.get("tokenizer_json"), language.get("max_length", 16))

    @property
    def frozen_keys(self) -> tuple[str, ...]:
        """Parameter patterns the optimizer must never update: the pretrained frozen encoders, and
        with LoRA the adapted base stacks."""
        frozen = tuple(f"{name}/*" for name in (LANGUAGE_ENCODER, CLIP) if name in self.params)
        return frozen + (LORA_FROZEN_KEYS if LORA in self.params else ())

    def _lora_alpha(self) -> float:
        return float(self.config["model"]["vla"]["lora"]["alpha"])

    def network_params(self, params: dict) -> dict:
        """The tree the network applies: with LoRA, the base with the low-rank updates merged in."""
        if LORA not in params:
            return params
        base = {name: value for name, value in params.items() if name != LORA}
        return merge_lora(base, params[LORA], self._lora_alpha())

    def with_lora_merged(self) -> "PolicyModel":
        """A model without LoRA whose parameters are the merged ones (for release and inference)."""
        if LORA not in self.params:
            return self
        model_config = {**self.config["model"], "vla": {**self.config["model"]["vla"], "lora": None}}
        return PolicyModel(
            self.module,
            self.network_params(self.params),
            {**self.config, "model": model_config},
            self.example_batch,
            self.dataset_statistics,
        )

    @property
    def window_size(self) -> int:
        return self.example_batch["observation"]["timestep_pad_mask"].shape[1]

    @classmethod
    def create(
        cls,
        config: Mapping,
        example_batch: Mapping,
        dataset_statistics: Mapping,
        rng: jax.Array,
        shardings_of: Callable[[Any], Any] | None = None,
    ) -> "PolicyModel":
        """A new model: initialized parameters with the configured pretrained parts loaded.

        With `shardings_of` (parameter shapes -> a tree of NamedSharding, e.g. the trainer's FSDP
        rules), the parameters are initialized directly in that layout and the loaded checkpoints
        are placed slice by slice, so that no device ever holds the whole model."""
        example_batch = jax.tree_util.tree_map(np.asarray, dict(example_batch))
        example_batch = {key: example_batch[key] for key in ("observation", "task", "action", "action_pad_mask")}
        config = plain_config(config)
        # A chunk length the config leaves unset is the data's: the release's config.json holds it.
        model_config = with_action_horizon(config["model"], example_batch["action"].shape[2])
        config = {**config, "model": resolve_model_config(model_config)}
        # The example batch of the release holds one sample: enough for shapes, small on disk.
        example_batch = jax.tree_util.tree_map(lambda x: x[:1], example_batch)
        window_size = example_batch["observation"]["timestep_pad_mask"].shape[1]
        module = make_network(config["model"], window_size)
        observation, task = _model_inputs(example_batch)
        params_rng, dropout_rng = jax.random.split(rng)
        rngs = {"params": params_rng, "dropout": dropout_rng}

        if isinstance(module, VLANetwork):
            largest_id = (
                int(np.max(task["language_instruction"]["input_ids"])) if "language_instruction" in task else -1
            )
            check_instruction_vocabulary(largest_id + 1, module.backbone_config.text.vocab_size)

        def init(rngs):
            return flax.core.unfreeze(module.init(rngs, observation, task, train=False)["params"])

        param_shapes = jax.eval_shape(init, rngs)
        # Loaded weights stay on the host until placed: on the mesh, or on the default device.
        as_arrays = (
            (lambda tree: jax.tree_util.tree_map(jnp.asarray, tree)) if shardings_of is None else (lambda tree: tree)
        )
        loaded = load_pretrained_parts(param_shapes, config["model"], module, as_arrays)

        def init_fresh(rngs):
            # The parts loaded from checkpoints are left out of the output, so that XLA drops their
            # random initializers: the tiny config's init compiles with 40 fewer threefry calls.
            # (Flax derives each parameter's key from its path: the others are unchanged.)
            return {key: value for key, value in init(rngs).items() if key not in loaded}

        fresh_shapes = {key: value for key, value in param_shapes.items() if key not in loaded}
        out_shardings = None if shardings_of is None else shardings_of(fresh_shapes)
        params = {**jax.jit(init_fresh, out_shardings=out_shardings)(rngs), **loaded}
        params = add_lora(params, config["model"], jax.random.fold_in(rng, 2))
        if shardings_of is not None:
            params = place_params(params, shardings_of(params))
        model = cls(module, params, config, example_batch, jax.tree_util.tree_map(np.asarray, dict(dataset_statistics)))
        if isinstance(module, VLANetwork) and model.text_tokenizer is not None:
            check_instruction_vocabulary(model.text_tokenizer.vocab_size, module.backbone_config.text.vocab_size)
        return model

    def loss(self, params: dict, batch: Mapping, rng: jax.Array, train: bool):
        """(loss, metrics) of a batch; what scripts/train.py differentiates."""
        observation, task = _model_inputs(batch)
        return self.module.apply(
            {"params": self.network_params(params)},
            observation,
            task,
            batch["action"],
            batch["action_pad_mask"],
            rng=rng,
            train=train,
            method=type(self.module).loss,
            rngs={"dropout": rng},
        )

    def action_mse(self, params: dict, batch: Mapping, rng: jax.Array) -> dict:
        """{"<head>_action_mse": ...} of a batch: how far sampled chunks are from the targets."""
        observation, task = _model_inputs(batch)
        return self.module.apply(
            {"params": self.network_params(params)},
            observation,
            task,
            batch["action"],
            batch["action_pad_mask"],
            rng=rng,
            method=type(self.module).action_mse,
        )

    def create_tasks(self, texts: list[str] | None = None, goals: Mapping[str, np.ndarray] | None = None) -> dict:
        """A task batch from instructions and/or goal images ({"image_<camera>": uint8 [B, H, W, 3]})."""
        if texts is None and goals is None:
            raise InputError("create_tasks needs texts or goals")
        batch_size = len(texts) if texts is not None else len(next(iter(goals.values())))
        task, pad_mask = {}, {}
        if self.text_tokenizer is not None:
            task["language_instruction"] = self.text_tokenizer(texts if texts is not None else [""] * batch_size)
            pad_mask["language_instruction"] = np.full(batch_size, texts is not None)
        for key, example in self.example_batch["task"].items():
            if key.startswith("image_"):
                given = goals is not None and key in goals
                task[key] = (
                    np.asarray(goals[key]) if given else np.zeros((batch_size, *example.shape[1:]), example.dtype)
                )
                pad_mask[key] = np.full(batch_size, given)
        task["pad_mask_dict"] = pad_mask
        return task

    def episode_cache(self, task: Mapping) -> EpisodeCache | None:
        """A cache for one episode of `task` (see octo_like/policy/episode_cache.py), or None where
        the network has none (the VLA family)."""
        if not hasattr(self.module, "encode_task"):
            return None
        if self._encode_task_fn is None:
            self._encode_task_fn = jax.jit(
                lambda params, task: self.module.apply(
                    {"params": self.network_params(params)}, task, method=type(self.module).encode_task
                )
            )
        return EpisodeCache(task, self._encode_task_fn(self.params, task))

    def _jitted_sampler(self, compiled: dict, key: tuple, method):
        """`method` of the network under jit, once per (head, sampling settings) in `compiled`:
        called as f(params, *inputs, rng=rng)."""
        head, sampling = key[0], dict(key[1])
        if key not in compiled:
            compiled[key] = jax.jit(
                lambda params, *inputs, rng: self.module.apply(
                    {"params": self.network_params(params)},
                    *inputs,
                    rng=rng,
                    head=head,
                    sampling=sampling,
                    method=method,
                )
            )
        return compiled[key]

    def sample_actions(
        self,
        observation: Mapping,
        task: Mapping,
        *,
        rng: jax.Array,
        unnormalization_statistics: Mapping | None = None,
        head: str = "action",
        cache: EpisodeCache | None = None,
        **sampling,
    ) -> jax.Array:
        """Actions [B, H, A] for the last timestep of the window; unnormalized when statistics are
        given. With the episode's `cache` (`episode_cache(task)`), only frames it lacks are encoded."""
        from octo_like.utils.normalization import unnormalize  # array-namespace code: no TensorFlow

        _check_observation(observation, self.example_batch["observation"])
        if head not in self.module.heads:
            raise InputError(f"unknown head '{head}'; the model has {sorted(self.module.heads)}")
        key = (head, tuple(sorted(sampling.items())))
        if cache is None:
            predict = self._jitted_sampler(self._sample_fns, key, type(self.module).predict_action)
            actions_BTHA = predict(self.params, observation, task, rng=rng)
        else:
            if task is not cache.task:
                raise InputError(
                    "the cache was made for another task; make one per episode with model.episode_cache(task)"
                )
            predict_step = self._jitted_sampler(self._step_fns, key, type(self.module).predict_action_step)
            frames, new_observation, new_keys = cache.split(observation)
            actions_BTHA, new_entries = predict_step(self.params, task, cache.context, frames, new_observation, rng=rng)
            cache.keep(cache.frame_keys(observation), new_keys, new_entries)
        actions_BHA = actions_BTHA[:, -1]
        if unnormalization_statistics is not None:
            # Statistics carry how training normalized (see `with_normalization_settings`); a dataset
            # with fewer action dimensions than the model (padded in a mixture) gets its own back.
            stats = unnormalization_statistics
            num_dims = len(np.asarray(stats["mean"]))
            mask = stats.get("mask")
            actions_BHA = unnormalize(
                actions_BHA[..., :num_dims],
                stats,
                str(stats.get("normalization_type", "normal")),
                None if mask is None else np.asarray(mask, bool),
                xp=jnp,
            )
        return actions_BHA

    def save_pretrained(self, step: int, run_dir: str, params: dict | None = None, manager=None, state=None) -> None:
        """Writes the release files and the parameters as orbax step `step` (plus a train `state`
        for resuming, when given, through the trainer's `manager`). With several processes, every
        process must call it (orbax saves cooperatively); process 0 alone writes the JSON files."""
        if jax.process_index() == 0:
            self.write_release_files(run_dir)
        own_manager = manager is None
        manager = manager or release.checkpoint_manager(run_dir)
        release.save(manager, step, self.params if params is None else params, state)
        if own_manager:
            manager.wait_until_finished()

    def write_release_files(self, run_dir: str) -> None:
        """config.json, dataset_statistics.json, example_batch.msgpack (and the tokenizers a release
        carries): everything of the release but the parameters. Training writes them at step 0 too."""
        os.makedirs(run_dir, exist_ok=True)
        write_text_atomically(
            os.path.join(run_dir, "config.json"), json.dumps(self.config, indent=2, default=_json_default)
        )
        write_text_atomically(
            os.path.join(run_dir, "dataset_statistics.json"),
            json.dumps(jax.tree_util.tree_map(lambda x: np.asarray(x).tolist(), self.dataset_statistics), indent=1),
        )
        example_bytes = flax.serialization.msgpack_serialize(self.example_batch)
        path = os.path.join(run_dir, "example_batch.msgpack")
        write_atomically(path, lambda temp_path: pathlib.Path(temp_path).write_bytes(example_bytes))
        if self.text_tokenizer is not None and self.config["model"]["language"].get("tokenizer_json"):
            # A tokenizer other than the installed MiniLM's travels with the release.
            tokenizer_bytes = pathlib.Path(self.text_tokenizer.tokenizer_json).read_bytes()
            path = os.path.join(run_dir, RELEASE_TOKENIZER)
            write_atomically(path, lambda temp_path: pathlib.Path(temp_path).write_bytes(tokenizer_bytes))
        fast_dir = ((self.config["model"].get("vla") or {}).get("action") or {}).get("fast_tokenizer")
        if fast_dir and os.path.abspath(fast_dir) != os.path.abspath(os.path.join(run_dir, RELEASE_FAST_TOKENIZER)):
            # The FAST tokenizer travels with the release too: a release decodes its actions on its own.
            load_fast_tokenizer(fast_dir).save(os.path.join(run_dir, RELEASE_FAST_TOKENIZER))

    @classmethod
    def load_pretrained(cls, run_dir: str, step: int | None = None) -> "PolicyModel":
        release.check_release(run_dir, step)
        config = read_release_config(run_dir)  # data, never code: checked before any spec is built
        with open(os.path.join(run_dir, "dataset_statistics.json")) as file:
            statistics = jax.tree_util.tree_map(np.asarray, json.load(file), is_leaf=lambda x: isinstance(x, list))
        example_batch = release.read_example_batch(run_dir)
        if os.path.isfile(os.path.join(run_dir, RELEASE_TOKENIZER)):
            language = {**config["model"]["language"], "tokenizer_json": os.path.join(run_dir, RELEASE_TOKENIZER)}
            config["model"] = {**config["model"], "language": language}
        if os.path.isdir(os.path.join(run_dir, RELEASE_FAST_TOKENIZER)):
            vla = config["model"]["vla"]
            action = {**vla["action"], "fast_tokenizer": os.path.join(run_dir, RELEASE_FAST_TOKENIZER)}
            config["model"] = {**config["model"], "vla": {**vla, "action": action}}
        module = make_network(config["model"], example_batch["observation"]["timestep_pad_mask"].shape[1])
        observation, task = _model_inputs(example_batch)
        params_like = jax.eval_shape(
            lambda: add_lora(
                flax.core.unfreeze(
                    module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, observation, task)[
                        "params"
                    ]
                ),
                config["model"],
                jax.random.key(2),
            )
        )
        params, _ = release.restore_params(run_dir, params_like, step)
        return cls(module, params, config, example_batch, statistics)


def _json_default(value):
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to config.json")
