"""The generalist policy: tokenizers -> block-wise transformer -> action heads, and its release format.

    model = PolicyModel.create(config, example_batch, dataset_statistics, rng)
    task = model.create_tasks(texts=["open the drawer"])
    actions_BHA = model.sample_actions(observation, task, rng=rng, unnormalization_statistics=stats["action"])
    model.save_pretrained(step, run_dir)
    model = PolicyModel.load_pretrained(run_dir)

`config` is the experiment config (a plain dict or ConfigDict); `config["model"]` holds:

    observation_tokenizers: {name: spec}   e.g. spec.create(ImageTokenizer, camera="primary")
    task_tokenizers:        {name: spec}   e.g. spec.create(GoalImageTokenizer, camera="primary")
    language:               {"max_length": 16, "tokenizer_json": None, "checkpoint": None,
                             "encoder": "minilm" | "clip" | "backbone", "tokens": "all" | "sentence"} or None
    clip:                   {"checkpoint": None, "size": "tiny", "config": None} or None
    readouts:               {name: number of tokens}, e.g. {"action": 1}
    transformer:            {"size": "tiny"|"small"|"base", **BlockTransformer overrides}
    heads:                  {name: spec}   e.g. spec.create(DiffusionActionHead, action_horizon=4, action_dim=4)

Language goes through a frozen encoder: all-MiniLM-L6-v2 (`language_encoder` in the parameters,
loaded from safetensors at creation) or, with `encoder="clip"`, the text tower of the policy's
frozen CLIP (`clip`), whose per-token joint embeddings the text-aware image tokenizers also read.
Frozen means never updated: outputs are cut from the gradient and the optimizer leaves
`language_encoder/*` and `clip/*` alone whatever its config says (`PolicyModel.frozen_keys`).
With `tokens="sentence"` the transformer reads one language token, the encoder's sentence
embedding (masked mean of its token states, unit length: how all-MiniLM-L6-v2 was trained to
compare sentences), so rewordings of an instruction land near each other; `"all"` (the default)
passes every token state. The CLIP comes from `clip.checkpoint` (a transformers CLIPModel
directory: architecture and weights), else it is a randomly initialized `clip.size`
(CLIP_SIZES); `create` writes the architecture into `clip.config`, so a release rebuilds it without
the checkpoint. The run directory (release format) holds config.json, dataset_statistics.json,
example_batch.msgpack, orbax steps with the parameters and, when the instructions are not tokenized
by the installed MiniLM tokenizer, that tokenizer.json.

With a `vla` section (octo_like/model/vla.py: a PaliGemma backbone with action tokens or a flow
expert; `language.encoder="backbone"`) the network is a VLANetwork instead, with the same methods;
the rest of this file is shared. Its backbone loads from `vla.backbone.checkpoint`; with `vla.lora`
the parameters hold the LoRA factors under `lora`, merged into the base inside every apply
(`network_params`), the base frozen (`frozen_keys`); a FAST tokenizer travels in fast_tokenizer/.
"""

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from octo_like.hf.clip import clip_config_from_hf, load_clip_params
from octo_like.hf.paligemma import load_paligemma_params
from octo_like.model import release
from octo_like.model.architecture import resolve_architecture
from octo_like.model.language.minilm import BertConfig, BertEncoder, load_bert_params
from octo_like.model.lora import init_lora, merge_lora
from octo_like.model.tokenizers import language_mask
from octo_like.model.tokens import TokenGroup
from octo_like.model.transformer import TRANSFORMER_SIZES, BlockTransformer
from octo_like.model.vision.clip import CLIP_SIZES, CLIPConfig, CLIPModel
from octo_like.model.vla import VLANetwork, load_fast_tokenizer, make_vla_network, resolve_vla_config
from octo_like.policy.registry import read_release_config
from octo_like.utils import spec as spec_lib
from octo_like.utils.assets import installed_minilm_dir
from octo_like.utils.errors import InputError
from octo_like.utils.files import write_atomically, write_text_atomically
from octo_like.utils.sharding import place_params
from octo_like.utils.text import FixedLengthTokenizer

LANGUAGE_ENCODER = "language_encoder"
CLIP = "clip"
LANGUAGE_ENCODERS = ("minilm", "clip", "backbone")
LANGUAGE_TOKENS = ("all", "sentence")
RELEASE_TOKENIZER = "tokenizer.json"
RELEASE_FAST_TOKENIZER = "fast_tokenizer"
LORA = "lora"
# With LoRA, the pretrained stacks stay frozen: the VLM, and the Gemma weights of the expert's
# layers (not the adaRMS modulations, which are new and start at zero).
LORA_FROZEN_KEYS = ("backbone/*", "flow/expert/layers_*/self_attn/*", "flow/expert/layers_*/mlp/*",
                    "flow/expert/layers_*/*_layernorm/scale")


def _plain(tree: Any) -> Any:
    return tree.to_dict() if isinstance(tree, ml_collections.ConfigDict) else tree


class PolicyNetwork(nn.Module):
    """The Flax module; every component is named by a spec in the config."""

    observation_tokenizers: Mapping[str, Mapping]
    task_tokenizers: Mapping[str, Mapping]
    readouts: Mapping[str, int]
    transformer: Mapping[str, Any]
    heads: Mapping[str, Mapping]
    language: BertConfig | None
    window_size: int
    clip_config: CLIPConfig | None = None
    language_from_clip: bool = False
    language_tokens: str = "all"

    def setup(self):
        self.observation_tokenizer_modules = {name: spec_lib.instantiate(s) for name, s in self.observation_tokenizers.items()}
        self.task_tokenizer_modules = {name: spec_lib.instantiate(s) for name, s in self.task_tokenizers.items()}
        self.head_modules = {name: spec_lib.instantiate(s) for name, s in self.heads.items()}
        if self.language is not None:
            setattr(self, LANGUAGE_ENCODER, BertEncoder(self.language))
        if self.clip_config is not None:
            setattr(self, CLIP, CLIPModel(self.clip_config))
        transformer = dict(self.transformer)
        size = transformer.pop("size", "tiny")
        if size not in TRANSFORMER_SIZES:
            raise InputError(f"model.transformer.size='{size}'; expected one of {', '.join(TRANSFORMER_SIZES)}")
        self.block_transformer = BlockTransformer(
            **{**TRANSFORMER_SIZES[size], **transformer}, num_timesteps_max=self.window_size
        )

    def language_groups(self, task) -> tuple[dict[str, TokenGroup], jax.Array | None]:
        """({"language": TokenGroup} or {}, the pooled instruction embedding [B, C] or None)."""
        if self.language is None and not self.language_from_clip:
            return {}, None
        ids_BL = jnp.asarray(task["language_instruction"]["input_ids"], jnp.int32)
        mask_BL = language_mask(task)
        if self.language_from_clip:
            hidden_BLC = getattr(self, CLIP).encode_text(ids_BL, mask_BL.astype(jnp.int32))["token_embeds"]
        else:
            hidden_BLC = getattr(self, LANGUAGE_ENCODER)(ids_BL, mask_BL.astype(jnp.int32))
        # Frozen: no gradient reaches the encoder (the optimizer also leaves it untouched).
        hidden_BLC = jax.lax.stop_gradient(hidden_BLC)
        weights_BL1 = mask_BL[..., None].astype(hidden_BLC.dtype)
        embedding_BC = (hidden_BLC * weights_BL1).sum(1) / jnp.maximum(weights_BL1.sum(1), 1.0)
        if self.language_tokens == "sentence":
            norm_B1 = jnp.maximum(jnp.linalg.norm(embedding_BC, axis=-1, keepdims=True), 1e-6)
            return {"language": TokenGroup((embedding_BC / norm_B1)[:, None], mask_BL.any(axis=1, keepdims=True))}, embedding_BC
        return {"language": TokenGroup(hidden_BLC, mask_BL)}, embedding_BC

    def readout_groups(self, observation, task, *, train: bool) -> dict[str, TokenGroup]:
        """The transformer's readout tokens by group name ("readout_<name>")."""
        task_groups, language_embedding_BC = self.language_groups(task)

        def tokenize(tokenizer: nn.Module) -> TokenGroup:
            extra = {}
            if getattr(tokenizer, "reads_clip", False):
                extra = {"language": task_groups.get("language"), "clip": getattr(self, CLIP, None)}
            return tokenizer(observation, task, train=train, language_embedding_BC=language_embedding_BC, **extra)

        for name, tokenizer in self.task_tokenizer_modules.items():
            task_groups[name] = tokenize(tokenizer)
        obs_groups = {name: tokenize(tokenizer) for name, tokenizer in self.observation_tokenizer_modules.items()}
        readouts = {f"readout_{name}": size for name, size in self.readouts.items()}
        _, _, readout_out = self.block_transformer(task_groups, obs_groups, readouts, train=train)
        return readout_out

    def __call__(self, observation, task, *, train: bool = False):
        """Touches every parameter (for init): the heads' outputs by head name."""
        readouts = self.readout_groups(observation, task, train=train)
        return {name: head(readouts[head.readout_key], train=train) for name, head in self.head_modules.items()}

    def loss(self, observation, task, actions_BTHA, action_pad_mask_BTHA, *, rng, train: bool):
        readouts = self.readout_groups(observation, task, train=train)
        total, metrics = 0.0, {}
        for index, (name, head) in enumerate(sorted(self.head_modules.items())):
            loss, head_metrics = head.loss(
                readouts[head.readout_key], actions_BTHA, action_pad_mask_BTHA, observation["timestep_pad_mask"],
                rng=jax.random.fold_in(rng, index), train=train,
            )
            total = total + loss
            metrics.update({f"{name}_{key}": value for key, value in head_metrics.items()})
        return total, metrics

    def action_mse(self, observation, task, actions_BTHA, action_pad_mask_BTHA, *, rng):
        """Per head: the masked MSE of sampled action chunks against the targets (normalized space)."""
        readouts = self.readout_groups(observation, task, train=False)
        valid_BTHA = action_pad_mask_BTHA & observation["timestep_pad_mask"][:, :, None, None]
        metrics = {}
        for index, (name, head) in enumerate(sorted(self.head_modules.items())):
            predicted_BTHA = head.predict_action(readouts[head.readout_key], rng=jax.random.fold_in(rng, index), train=False)
            squared_BTHA = jnp.where(valid_BTHA, (predicted_BTHA - actions_BTHA) ** 2, 0.0)
            metrics[f"{name}_action_mse"] = squared_BTHA.sum() / jnp.maximum(valid_BTHA.sum(), 1)
        return metrics

    def predict_action(self, observation, task, *, rng, head: str, sampling: Mapping[str, Any]):
        readouts = self.readout_groups(observation, task, train=False)
        module = self.head_modules[head]
        return module.predict_action(readouts[module.readout_key], rng=rng, train=False, **sampling)


def resolve_model_config(model_config: Mapping) -> dict:
    """`model_config` with the CLIP's and the VLA backbone's architectures written into their
    `config` (from the checkpoint's config.json, else the `size` preset), as the release stores it."""
    model_config = _plain(model_config)
    if model_config.get("vla") is not None:
        model_config = {**model_config, "vla": resolve_vla_config(model_config["vla"])}
    if model_config.get("clip") is not None:
        clip = resolve_architecture(model_config["clip"], "model.clip", clip_config_from_hf, CLIP_SIZES, CLIPConfig.to_dict)
        model_config = {**model_config, "clip": clip}
    return model_config


def make_network(model_config: Mapping, window_size: int) -> PolicyNetwork | VLANetwork:
    model_config = resolve_model_config(model_config)
    language = model_config.get("language")
    encoder = (language or {}).get("encoder", "minilm")
    if encoder not in LANGUAGE_ENCODERS:
        raise InputError(f"model.language.encoder='{encoder}'; expected one of {', '.join(LANGUAGE_ENCODERS)}")
    if (encoder == "backbone") != (model_config.get("vla") is not None):
        raise InputError(f"model.language.encoder='{encoder}' with{'out' if model_config.get('vla') is None else ''} a model.vla section; "
                         "expected encoder='backbone' exactly when the VLA backbone reads the instruction")
    if model_config.get("vla") is not None:
        return make_vla_network(model_config["vla"])
    language_tokens = (language or {}).get("tokens", "all")
    if language_tokens not in LANGUAGE_TOKENS:
        raise InputError(f"model.language.tokens='{language_tokens}'; expected one of {', '.join(LANGUAGE_TOKENS)}")
    clip = model_config.get("clip")
    if encoder == "clip" and clip is None:
        raise InputError("model.language.encoder='clip' needs a model.clip section")
    bert_config = None
    if language is not None and encoder == "minilm":
        checkpoint = language.get("checkpoint") or installed_minilm_dir()
        bert_config = BertConfig.from_json(os.path.join(checkpoint, "config.json"))
    return PolicyNetwork(
        observation_tokenizers=model_config.get("observation_tokenizers", {}),
        task_tokenizers=model_config.get("task_tokenizers", {}),
        readouts=model_config.get("readouts", {"action": 1}),
        transformer=model_config.get("transformer", {"size": "tiny"}),
        heads=model_config["heads"],
        language=bert_config,
        window_size=window_size,
        clip_config=None if clip is None else CLIPConfig.from_dict(clip["config"], "model.clip.config"),
        language_from_clip=language is not None and encoder == "clip",
        language_tokens=language_tokens,
    )


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
        self._sample_fns = {}
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
        return PolicyModel(self.module, self.network_params(self.params), {**self.config, "model": model_config},
                           self.example_batch, self.dataset_statistics)

    @property
    def window_size(self) -> int:
        return self.example_batch["observation"]["timestep_pad_mask"].shape[1]

    @classmethod
    def create(cls, config: Mapping, example_batch: Mapping, dataset_statistics: Mapping, rng: jax.Array,
               shardings_of: Callable[[Any], Any] | None = None) -> "PolicyModel":
        """A new model: initialized parameters with the configured pretrained parts loaded.

        With `shardings_of` (parameter shapes -> a tree of NamedSharding, e.g. the trainer's FSDP
        rules), the parameters are initialized directly in that layout and the loaded checkpoints
        are placed slice by slice, so that no device ever holds the whole model."""
        config = _plain(config)
        config = {**config, "model": resolve_model_config(config["model"])}
        example_batch = jax.tree_util.tree_map(np.asarray, dict(example_batch))
        example_batch = {key: example_batch[key] for key in ("observation", "task", "action", "action_pad_mask")}
        # The example batch of the release holds one sample: enough for shapes, small on disk.
        example_batch = jax.tree_util.tree_map(lambda x: x[:1], example_batch)
        window_size = example_batch["observation"]["timestep_pad_mask"].shape[1]
        module = make_network(config["model"], window_size)
        observation, task = _model_inputs(example_batch)
        params_rng, dropout_rng = jax.random.split(rng)
        rngs = {"params": params_rng, "dropout": dropout_rng}

        def init(rngs):
            return flax.core.unfreeze(module.init(rngs, observation, task, train=False)["params"])

        out_shardings = None if shardings_of is None else shardings_of(jax.eval_shape(init, rngs))
        params = jax.jit(init, out_shardings=out_shardings)(rngs)
        # Loaded weights stay on the host until placed: on the mesh, or on the default device.
        as_arrays = (lambda tree: jax.tree_util.tree_map(jnp.asarray, tree)) if shardings_of is None else (lambda tree: tree)
        if LANGUAGE_ENCODER in params:
            checkpoint = config["model"]["language"].get("checkpoint") or installed_minilm_dir()
            params[LANGUAGE_ENCODER] = as_arrays(load_bert_params(checkpoint)[1])
        clip_checkpoint = (config["model"].get("clip") or {}).get("checkpoint")
        if CLIP in params and clip_checkpoint:
            pretrained = load_clip_params(clip_checkpoint, module.clip_config)
            # Only the parts the policy uses exist (no vision tower without image tokenizers).
            params[CLIP] = {name: pretrained[name] for name in params[CLIP]}
        if isinstance(module, VLANetwork):
            largest_id = int(np.max(task["language_instruction"]["input_ids"])) if "language_instruction" in task else -1
            check_instruction_vocabulary(largest_id + 1, module.backbone_config.text.vocab_size)
            backbone_checkpoint = config["model"]["vla"]["backbone"].get("checkpoint")
            if backbone_checkpoint:
                params["backbone"] = as_arrays(load_paligemma_params(backbone_checkpoint, module.backbone_config))
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
            {"params": self.network_params(params)}, observation, task, batch["action"], batch["action_pad_mask"],
            rng=rng, train=train, method=type(self.module).loss, rngs={"dropout": rng},
        )

    def action_mse(self, params: dict, batch: Mapping, rng: jax.Array) -> dict:
        """{"<head>_action_mse": ...} of a batch: how far sampled chunks are from the targets."""
        observation, task = _model_inputs(batch)
        return self.module.apply(
            {"params": self.network_params(params)}, observation, task, batch["action"], batch["action_pad_mask"], rng=rng,
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
                task[key] = np.asarray(goals[key]) if given else np.zeros((batch_size, *example.shape[1:]), example.dtype)
                pad_mask[key] = np.full(batch_size, given)
        task["pad_mask_dict"] = pad_mask
        return task

    def sample_actions(self, observation: Mapping, task: Mapping, *, rng: jax.Array,
                       unnormalization_statistics: Mapping | None = None, head: str = "action", **sampling) -> jax.Array:
        """Actions [B, H, A] for the last timestep of the window; unnormalized when statistics are given."""
        from octo_like.utils.normalization import unnormalize  # array-namespace code: no TensorFlow

        _check_observation(observation, self.example_batch["observation"])
        if head not in self.module.heads:
            raise InputError(f"unknown head '{head}'; the model has {sorted(self.module.heads)}")
        key = (head, tuple(sorted(sampling.items())))
        if key not in self._sample_fns:
            self._sample_fns[key] = jax.jit(
                lambda params, observation, task, rng: self.module.apply(
                    {"params": self.network_params(params)}, observation, task, rng=rng, head=head, sampling=sampling,
                    method=type(self.module).predict_action,
                )
            )
        actions_BTHA = self._sample_fns[key](self.params, observation, task, rng)
        actions_BHA = actions_BTHA[:, -1]
        if unnormalization_statistics is not None:
            # Statistics carry how training normalized (see `with_normalization_settings`); a dataset
            # with fewer action dimensions than the model (padded in a mixture) gets its own back.
            stats = unnormalization_statistics
            num_dims = len(np.asarray(stats["mean"]))
            mask = stats.get("mask")
            actions_BHA = unnormalize(
                actions_BHA[..., :num_dims], stats, str(stats.get("normalization_type", "normal")),
                None if mask is None else np.asarray(mask, bool), xp=jnp,
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
        write_text_atomically(os.path.join(run_dir, "config.json"), json.dumps(self.config, indent=2, default=_json_default))
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
        params_like = jax.eval_shape(lambda: add_lora(
            flax.core.unfreeze(module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, observation, task)["params"]),
            config["model"], jax.random.key(2)))
        params, _ = release.restore_params(run_dir, params_like, step)
        return cls(module, params, config, example_batch, statistics)


def declared_action_chunks(model_config: Mapping) -> list[tuple[str, int, str, int]]:
    """(horizon key, horizon, action_dim key, action_dim) of every action output: what the data must match."""
    vla = model_config.get("vla")
    if vla is not None:
        return [("model.vla.action.horizon", vla["action"]["horizon"], "model.vla.action.action_dim", vla["action"]["action_dim"])]
    return [(f"model.heads.{name}.kwargs.action_horizon", head["kwargs"]["action_horizon"],
             f"model.heads.{name}.kwargs.action_dim", head["kwargs"]["action_dim"]) for name, head in model_config["heads"].items()]


def add_lora(params: dict, model_config: Mapping, rng: jax.Array) -> dict:
    """`params` plus the LoRA factors (`params["lora"]`) when the config asks for them."""
    lora = (model_config.get("vla") or {}).get("lora")
    if lora is None:
        return params
    return {**params, LORA: init_lora(params, lora["targets"], int(lora["rank"]), rng)}


def check_instruction_vocabulary(num_ids: int, vocab_size: int) -> None:
    """Instruction ids index the backbone's embedding (an id past it would silently read a clamped
    row): one line when the tokenizer's ids, or the data's, reach past the vocabulary."""
    if num_ids > vocab_size:
        raise InputError(f"instruction token ids reach {num_ids - 1}; the backbone's vocabulary has {vocab_size} ids "
                         "(expected the checkpoint's own tokenizer in model.language.tokenizer_json and the dataset's text_tokenizer)")


def with_normalization_settings(statistics: Mapping, normalization_type: str, action_mask=None, proprio_mask=None,
                                proprio_obs_key: str | None = None) -> dict:
    """One dataset's statistics plus how the pipeline normalized with them, so that inference
    (un)normalizes identically from the release alone; `proprio["obs_key"]` names the dataset
    observation the proprio was read from, so inference reads the same one."""
    statistics = dict(statistics)
    for key, mask in (("action", action_mask), ("proprio", proprio_mask)):
        statistics[key] = {**statistics[key], "normalization_type": normalization_type}
        if mask is not None:
            statistics[key]["mask"] = [bool(m) for m in mask]
    if proprio_obs_key is not None:
        statistics["proprio"]["obs_key"] = proprio_obs_key
    return statistics


def _json_default(value):
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to config.json")
