"""The VLM-initialized policy: a PaliGemma backbone and one of the ways to turn its states into
action chunks (`kinds.VLA_ACTIONS`, each behind `actions.VLAActions`).

Axis letters: B batch, T window, P prefix tokens, S action tokens, C backbone width, H horizon,
A action dimensions, V vocabulary.

`config["model"]["vla"]` (instead of the from-scratch tokenizers, transformer and heads):

    backbone: {"checkpoint": None, "size": "tiny" | "3B", "config": None}
        a PaliGemmaForConditionalGeneration directory (architecture and weights), else a randomly
        initialized preset of VLA_SIZES; `octo_like.policy.build.resolve_vla_config` writes the
        architecture into `config` so that a release rebuilds it without the checkpoint.
    action: {"kind": a key of kinds.VLA_ACTIONS, "horizon": 4, "action_dim": 4,
             **the kind's settings: VLA_ACTION_DEFAULTS below, one comment each}
    lora: None or {"rank": 16, "alpha": 16.0, "targets": GEMMA_LORA_TARGETS}

The prefix is, in order: every camera's image tokens for every step of the window (SigLIP, then
the projector; steps before the episode start are masked), then the instruction's token
embeddings (padding masked). It attends bidirectionally; positions count its valid tokens.

The kinds (the module docstrings say how each reads the prefix):
- `bins`, `fast` (actions.py): action tokens decoded by the backbone, greedily on a KV cache or
  by Jacobi iterations (PD-VLA), teacher-forced cross-entropy;
- `parallel_l1`, `parallel_bins` (parallel.py): OpenVLA-OFT's empty action slots, one forward;
- `token_bridge`, `pool_bridge` (bridges.py): CogACT's <ACT> tokens or DexVLA's pooled states
  condition a from-scratch head (diffusion, flow, L1) that denoises on them alone;
- `cross_bridge` (cross_expert.py): SmolVLA's expert cross-attending the backbone's states;
- `flow` (actions.py, action_expert.py): pi0's expert attending jointly with the prefix in every
  layer (adaRMS: pi0.5; knowledge insulation: pi0.5 + KI).

Only the last step of the window is predicted: actions [B, 1, H, A], as the policy's
`sample_actions` reads them.
"""

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from octo_like.model.heads import masked_mean
from octo_like.model.language.gemma import GEMMA_SIZES, GemmaConfig
from octo_like.model.vision.siglip import SIGLIP_SIZES, SiglipVisionConfig
from octo_like.model.vla.actions import VLAActions
from octo_like.model.vla.kinds import VLA_ACTIONS
from octo_like.model.vla.paligemma import PaliGemma, PaliGemmaConfig
from octo_like.utils.errors import InputError

# tiny: CPU-sized, 64x64 images (16 patches), a vocabulary that holds the installed MiniLM
# tokenizer's 30522 ids below 1025 action ids. 3B: pi0's PaliGemma-3B (So400m/14 at 224, Gemma 2B).
VLA_SIZES = {
    "tiny": PaliGemmaConfig(
        dataclasses.replace(
            SIGLIP_SIZES["B/16"],
            hidden_size=128,
            num_layers=2,
            num_heads=4,
            intermediate_size=256,
            image_size=64,
            patch_size=16,
            use_head=False,
        ),
        dataclasses.replace(
            GEMMA_SIZES["tiny"], vocab_size=32000, hidden_size=128, num_heads=4, head_dim=32, intermediate_size=512
        ),
        image_token_id=31999,
    ),
    "3B": PaliGemmaConfig(
        dataclasses.replace(SIGLIP_SIZES["So400m/14"], use_head=False),
        dataclasses.replace(GEMMA_SIZES["2B"], vocab_size=257216),
        image_token_id=257152,
    ),
}
# Every kind's settings, filled in when a config (or an older release) leaves them out.
VLA_ACTION_DEFAULTS = {
    "n_bins": 256,  # bins, parallel_bins: uniform bins over [-1, 1]
    "fast_tokenizer": None,  # fast, and flow with knowledge insulation: a scripts/fit_fast.py directory
    "max_action_tokens": 32,  # fast: tokens per chunk, end-of-actions included
    "expert": {"hidden_size": 64, "intermediate_size": 256},  # flow, cross_bridge: the expert's width
    "time_conditioning": "concat",  # flow: pi0's time in the action tokens, or "adarms" (pi0.5)
    "knowledge_insulation": False,  # flow: pi0.5 + KI (FAST tokens train the backbone, flow the expert)
    "token_loss_weight": 1.0,  # flow with knowledge insulation
    "flow_loss_weight": 1.0,  # flow with knowledge insulation
    "head": None,  # parallel_l1, token_bridge, pool_bridge: {"name": a from-scratch head, **its fields}
    "bridge_tokens": 1,  # token_bridge: learned <ACT> tokens
    "pooling": "mean",  # pool_bridge: "mean" | "max" | "attention"
    "backbone_layers": None,  # bridges: run only the first N backbone layers (None: all)
}
# pi0's action expert is Gemma-300M: width 1024, MLP 4096, the 2B's attention geometry.
EXPERT_3B = {"hidden_size": 1024, "intermediate_size": 4096}


def paligemma_config_from_dict(values: Mapping, where: str) -> PaliGemmaConfig:
    try:
        return PaliGemmaConfig(
            SiglipVisionConfig(**values["vision"]), GemmaConfig(**values["text"]), values["image_token_id"]
        )
    except (KeyError, TypeError) as error:
        raise InputError(
            f"{where} is not a PaliGemma architecture ({error}); expected the dict resolve_vla_config writes"
        ) from None


class VLANetwork(nn.Module):
    """PaliGemma plus an action representation (`kinds.VLA_ACTIONS[action["kind"]]`); the
    methods are PolicyNetwork's."""

    backbone_config: PaliGemmaConfig
    action: Mapping
    expert_config: GemmaConfig | None = None

    @property
    def actions(self) -> VLAActions:
        return VLA_ACTIONS[self.action["kind"]](self.action, self.backbone_config)

    @property
    def heads(self) -> dict:
        return {"action": self.action["kind"]}

    def setup(self):
        self.backbone = PaliGemma(self.backbone_config)
        self.actions.add_modules(self)

    def prefix(self, observation, task) -> tuple[jax.Array, jax.Array]:
        """(embeddings [B, P, C], valid [B, P]): image tokens of every camera and step, then the instruction."""
        language = self.backbone.language_model
        pieces, valid = [], []
        timestep_valid_BT = observation["timestep_pad_mask"].astype(bool)
        for key in sorted(k for k in observation if k.startswith("image_")):
            images_BTHWC = observation[key]
            batch, window = images_BTHWC.shape[:2]
            size = self.backbone_config.vision.image_size
            if tuple(images_BTHWC.shape[2:4]) != (size, size):
                raise InputError(
                    f"observation['{key}'] holds {images_BTHWC.shape[2]}x{images_BTHWC.shape[3]} images; "
                    f"the backbone's SigLIP reads {size}x{size} "
                    f"(dataset.frame_transform_kwargs.resize_size.{key.removeprefix('image_')})"
                )
            # SigLIP's preprocessing: pixels scaled to [-1, 1].
            pixels = images_BTHWC.reshape(batch * window, *images_BTHWC.shape[2:]).astype(jnp.float32) / 127.5 - 1.0
            image_BNC = self.backbone.multi_modal_projector(self.backbone.vision_tower(pixels)["last_hidden_state"])
            image_BPC = image_BNC.reshape(batch, -1, image_BNC.shape[-1])
            step_valid_BT = timestep_valid_BT & observation.get("pad_mask_dict", {}).get(key, timestep_valid_BT).astype(
                bool
            )
            pieces.append(image_BPC)
            valid.append(jnp.repeat(step_valid_BT, image_BNC.shape[1], axis=1))
        instruction = task.get("language_instruction")
        if instruction is not None:
            ids_BL = jnp.asarray(instruction["input_ids"], jnp.int32)
            given_B = task.get("pad_mask_dict", {}).get("language_instruction", jnp.ones(ids_BL.shape[0], bool))
            pieces.append(language.embed(ids_BL))
            valid.append(instruction["attention_mask"].astype(bool) & given_B.astype(bool)[:, None])
        dtype = pieces[-1].dtype if instruction is not None else pieces[0].dtype
        return jnp.concatenate([piece.astype(dtype) for piece in pieces], axis=1), jnp.concatenate(valid, axis=1)

    def last_proprio(self, observation, batch: int) -> jax.Array:
        """The last step's proprio [B, P], or zeros [B, 1] when the observation has none."""
        if "proprio" in observation:
            return observation["proprio"][:, -1]
        return jnp.zeros((batch, 1))

    # --- the PolicyNetwork interface --------------------------------------------------------

    def __call__(self, observation, task, *, train: bool = False):
        """Touches every parameter (for init)."""
        return self.actions.init_outputs(self, observation, task)

    def loss(self, observation, task, actions_BTHA, action_pad_mask_BTHA, *, rng, train: bool):
        valid_BHA = action_pad_mask_BTHA[:, -1] & observation["timestep_pad_mask"][:, -1, None, None]
        return self.actions.loss(self, observation, task, actions_BTHA[:, -1], valid_BHA, rng, train)

    def action_mse(self, observation, task, actions_BTHA, action_pad_mask_BTHA, *, rng):
        predicted_BHA, valid_B = self.actions.sample(self, observation, task, rng)
        valid_BHA = action_pad_mask_BTHA[:, -1] & observation["timestep_pad_mask"][:, -1, None, None]
        metrics = {"action_action_mse": masked_mean((predicted_BHA - actions_BTHA[:, -1]) ** 2, valid_BHA)}
        return {**metrics, **self.actions.sample_metrics(valid_B)}

    def predict_action(self, observation, task, *, rng, head: str, sampling: Mapping):
        """Chunks [B, 1, H, A] of the last step; `sampling`: the kind's `sampling_options`
        (num_steps for flow, use_cache for all)."""
        del head  # one action representation: "action"
        unknown = sorted(set(sampling) - self.actions.sampling_options)
        if unknown:
            raise InputError(f"sampling options {unknown} do not apply to '{self.action['kind']}' actions")
        return self.actions.sample(self, observation, task, rng, **sampling)[0][:, None]


def make_vla_network(vla: Mapping) -> VLANetwork:
    """`vla` as `octo_like.policy.build.resolve_vla_config` returns it."""
    backbone = paligemma_config_from_dict(vla["backbone"]["config"], "model.vla.backbone.config")
    action = {**VLA_ACTION_DEFAULTS, **vla["action"]}
    if action["kind"] not in VLA_ACTIONS:
        raise InputError(f"model.vla.action.kind='{action['kind']}'; expected one of {', '.join(VLA_ACTIONS)}")
    actions = VLA_ACTIONS[action["kind"]](action, backbone)
    error = actions.check()
    if error is not None:
        raise InputError(error)
    return VLANetwork(backbone, action, actions.expert_config())
