"""A policy network from a config's `model` section: defaults and architectures resolved, the network
built (from-scratch or VLA family), its pretrained parts loaded from local Hugging Face checkpoints,
and LoRA factors added.

The `model` section of an experiment config:

    observation_tokenizers: {name: spec}   e.g. spec.create(ImageTokenizer, camera="primary")
    task_tokenizers:        {name: spec}   e.g. spec.create(GoalImageTokenizer, camera="primary")
    language:               {"max_length": 16, "tokenizer_json": None, "checkpoint": None,
                             "encoder": "minilm" | "clip" | "backbone", "tokens": "all" | "sentence",
                             "noise_std": 0.0 (train-time jitter of the sentence token)} or None
    clip:                   {"checkpoint": None, "size": "tiny", "config": None} or None
    readouts:               {name: number of tokens}, e.g. {"action": 1}
    transformer:            {"size": "tiny"|"small"|"base", **BlockTransformer overrides}
    heads:                  {name: spec}   e.g. head_spec("diffusion", action_dim=4); the chunk length
                            (action_horizon) is the data's unless given (`with_action_horizon`)
    vla:                    None, or the VLA family's section (octo_like/model/vla/network.py): backbone
                            {checkpoint, size, config}, action {kind: a key of VLA_ACTIONS, horizon
                            (the data's when None), action_dim, ...}, lora {rank, alpha, targets} or None

The MiniLM (`language.encoder="minilm"`, default) loads from `language.checkpoint`, else the
installed all-MiniLM-L6-v2. The CLIP comes from `clip.checkpoint` (a transformers CLIPModel
directory), else it is a randomly initialized `clip.size` (CLIP_SIZES); the VLA backbone from
`vla.backbone.checkpoint`, else the `vla.backbone.size` preset. `resolve_model_config` writes the
architectures into `config`, so that a release rebuilds the network without the checkpoints.
"""

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections

from octo_like.hf.clip import clip_config_from_hf, load_clip_params
from octo_like.hf.minilm import bert_config_from_hf, load_bert_params
from octo_like.hf.paligemma import load_paligemma_params, paligemma_config_from_hf
from octo_like.model.architecture import resolve_architecture
from octo_like.model.lora import GEMMA_LORA_TARGETS, init_lora
from octo_like.model.scratch.network import CLIP, LANGUAGE_ENCODER, LANGUAGE_TOKENS, PolicyNetwork
from octo_like.model.scratch.transformer import transformer_settings
from octo_like.model.vision.clip import CLIP_SIZES, CLIPConfig
from octo_like.model.vla.action_expert import TIME_CONDITIONINGS
from octo_like.model.vla.kinds import VLA_ACTIONS
from octo_like.model.vla.network import VLA_ACTION_DEFAULTS, VLA_SIZES, VLANetwork, make_vla_network
from octo_like.utils.assets import installed_minilm_dir
from octo_like.utils.errors import InputError

LANGUAGE_ENCODERS = ("minilm", "clip", "backbone")
LORA_DEFAULTS = {"rank": 16, "alpha": 16.0, "targets": GEMMA_LORA_TARGETS}
LORA = "lora"
# With LoRA, the base stacks it adapts stay frozen: the backbone, and the expert's attention and MLP.
LORA_FROZEN_KEYS = (
    "backbone/*",
    "flow/expert/layers_*/self_attn/*",
    "flow/expert/layers_*/mlp/*",
    "flow/expert/layers_*/*_layernorm/scale",
)


def plain_config(tree: Any) -> Any:
    return tree.to_dict() if isinstance(tree, ml_collections.ConfigDict) else tree


def resolve_vla_config(vla: Mapping) -> dict:
    """`vla` with defaults filled in and the backbone architecture written into `backbone.config`."""
    vla = {"lora": None, **vla}
    action = {**VLA_ACTION_DEFAULTS, **vla["action"]}
    if action["kind"] not in VLA_ACTIONS:
        raise InputError(f"model.vla.action.kind='{action['kind']}'; expected one of {', '.join(VLA_ACTIONS)}")
    if action["time_conditioning"] not in TIME_CONDITIONINGS:
        raise InputError(
            f"model.vla.action.time_conditioning='{action['time_conditioning']}'; "
            f"expected one of {', '.join(TIME_CONDITIONINGS)}"
        )
    if action["kind"] == "fast" and not action["fast_tokenizer"]:
        raise InputError(
            "model.vla.action.kind='fast' needs model.vla.action.fast_tokenizer (write one with scripts/fit_fast.py)"
        )
    backbone = resolve_architecture(
        vla["backbone"], "model.vla.backbone", paligemma_config_from_hf, VLA_SIZES, dataclasses.asdict
    )
    lora = None if vla["lora"] is None else {**LORA_DEFAULTS, **vla["lora"]}
    if lora is not None:
        lora["targets"] = list(lora["targets"])
    return {**vla, "backbone": backbone, "action": action, "lora": lora}


def with_transformer_dimensions(model_config: Mapping) -> dict:
    """`model_config` with the scratch transformer's size preset written out (`transformer_settings`),
    so that a config that names only the size and one that spells out the same dimensions are the
    same model: a run saved before the configs spelled them out resumes."""
    if model_config.get("transformer") is None:
        return dict(model_config)
    return {**model_config, "transformer": transformer_settings(model_config["transformer"])}


def resolve_model_config(model_config: Mapping) -> dict:
    """`model_config` with the CLIP's and the VLA backbone's architectures written into their
    `config` (from the checkpoint's config.json, else the `size` preset) and the transformer's size
    written out, as the release stores it."""
    model_config = with_transformer_dimensions(plain_config(model_config))
    if model_config.get("vla") is not None:
        model_config = {**model_config, "vla": resolve_vla_config(model_config["vla"])}
    if model_config.get("clip") is not None:
        clip = resolve_architecture(
            model_config["clip"], "model.clip", clip_config_from_hf, CLIP_SIZES, CLIPConfig.to_dict
        )
        model_config = {**model_config, "clip": clip}
    return model_config


def make_network(model_config: Mapping, window_size: int) -> PolicyNetwork | VLANetwork:
    model_config = resolve_model_config(model_config)
    language = model_config.get("language")
    encoder = (language or {}).get("encoder", "minilm")
    if encoder not in LANGUAGE_ENCODERS:
        raise InputError(f"model.language.encoder='{encoder}'; expected one of {', '.join(LANGUAGE_ENCODERS)}")
    if (encoder == "backbone") != (model_config.get("vla") is not None):
        raise InputError(
            f"model.language.encoder='{encoder}' with{'out' if model_config.get('vla') is None else ''} a "
            "model.vla section; "
            "expected encoder='backbone' exactly when the VLA backbone reads the instruction"
        )
    if model_config.get("vla") is not None:
        return make_vla_network(model_config["vla"])
    language_tokens = (language or {}).get("tokens", "all")
    if language_tokens not in LANGUAGE_TOKENS:
        raise InputError(f"model.language.tokens='{language_tokens}'; expected one of {', '.join(LANGUAGE_TOKENS)}")
    noise_std = (language or {}).get("noise_std", 0.0)
    if not (isinstance(noise_std, int | float) and noise_std >= 0) or (noise_std > 0 and language_tokens != "sentence"):
        raise InputError(
            f"model.language.noise_std={noise_std}; expected a number >= 0, "
            "and 0 unless model.language.tokens='sentence'"
        )
    clip = model_config.get("clip")
    if encoder == "clip" and clip is None:
        raise InputError("model.language.encoder='clip' needs a model.clip section")
    bert_config = None
    if language is not None and encoder == "minilm":
        checkpoint = language.get("checkpoint") or installed_minilm_dir()
        bert_config = bert_config_from_hf(os.path.join(checkpoint, "config.json"))
    return PolicyNetwork(
        observation_tokenizers=model_config.get("observation_tokenizers", {}),
        task_tokenizers=model_config.get("task_tokenizers", {}),
        readouts=model_config.get("readouts", {"action": 1}),
        transformer=model_config.get("transformer", {}),
        heads=model_config["heads"],
        language=bert_config,
        window_size=window_size,
        clip_config=None if clip is None else CLIPConfig.from_dict(clip["config"], "model.clip.config"),
        language_from_clip=language is not None and encoder == "clip",
        language_tokens=language_tokens,
        language_noise_std=float(noise_std),
    )


def load_pretrained_parts(
    param_shapes: Mapping, model_config: Mapping, module: PolicyNetwork | VLANetwork, as_arrays: Callable[[dict], dict]
) -> dict:
    """{top-level key: parameters} of the parts the config loads from checkpoints: the MiniLM, a
    CLIP with a checkpoint, a VLA backbone with a checkpoint. `param_shapes` is the model's
    parameter tree (shapes suffice); `as_arrays` places a loaded host tree (on the default device,
    or left to the caller's sharded placement)."""
    parts = {}
    if LANGUAGE_ENCODER in param_shapes:
        checkpoint = model_config["language"].get("checkpoint") or installed_minilm_dir()
        parts[LANGUAGE_ENCODER] = as_arrays(load_bert_params(checkpoint)[1])
    clip_checkpoint = (model_config.get("clip") or {}).get("checkpoint")
    if CLIP in param_shapes and clip_checkpoint:
        pretrained = load_clip_params(clip_checkpoint, module.clip_config)
        # Only the parts the policy uses exist (no vision tower without image tokenizers).
        parts[CLIP] = {name: pretrained[name] for name in param_shapes[CLIP]}
    if isinstance(module, VLANetwork):
        backbone_checkpoint = model_config["vla"]["backbone"].get("checkpoint")
        if backbone_checkpoint:
            pretrained = load_paligemma_params(backbone_checkpoint, module.backbone_config)
            # Only the layers the kind runs exist (a bridge's layer skipping creates the first N).
            parts["backbone"] = as_arrays(restricted_to(pretrained, param_shapes["backbone"]))
    return parts


def restricted_to(tree: Mapping, shapes: Mapping) -> dict:
    """`tree` with only the keys of `shapes` (nested dicts)."""
    return {
        key: restricted_to(tree[key], value) if isinstance(value, Mapping) else tree[key]
        for key, value in shapes.items()
    }


def with_action_horizon(model_config: Mapping, horizon: int) -> dict:
    """`model_config` with `horizon` given to every action output that leaves its chunk length
    unset (a head's `kwargs.action_horizon`, the VLA's `action.horizon`). The chunk length is the
    data's, declared once in the dataset section (dataset.traj_transform_kwargs.action_horizon); a
    length written here as well is checked against the data (`declared_action_chunks`)."""
    model_config = plain_config(model_config)
    vla = model_config.get("vla")
    if vla is not None:
        if vla["action"].get("horizon") is not None:
            return model_config
        return {**model_config, "vla": {**vla, "action": {**vla["action"], "horizon": horizon}}}
    heads = {
        name: head
        if head["kwargs"].get("action_horizon") is not None
        else {**head, "kwargs": {**head["kwargs"], "action_horizon": horizon}}
        for name, head in model_config["heads"].items()
    }
    return {**model_config, "heads": heads}


def declared_action_chunks(model_config: Mapping) -> list[tuple[str, int, str, int]]:
    """(horizon key, horizon, action_dim key, action_dim) of every action output: what the data must match."""
    vla = model_config.get("vla")
    if vla is not None:
        return [
            (
                "model.vla.action.horizon",
                vla["action"]["horizon"],
                "model.vla.action.action_dim",
                vla["action"]["action_dim"],
            )
        ]
    return [
        (
            f"model.heads.{name}.kwargs.action_horizon",
            head["kwargs"]["action_horizon"],
            f"model.heads.{name}.kwargs.action_dim",
            head["kwargs"]["action_dim"],
        )
        for name, head in model_config["heads"].items()
    ]


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
        raise InputError(
            f"instruction token ids reach {num_ids - 1}; the backbone's vocabulary has {vocab_size} ids "
            "(expected the checkpoint's own tokenizer in model.language.tokenizer_json and the dataset's "
            "text_tokenizer)"
        )
