"""A pi0-style policy on Meta-World: a PaliGemma backbone and a flow-matching action expert.

    python -m data_pipelines.metaworld.build --name quickstart --tasks reach,drawer-open,button-press-topdown \
        --episodes_per_task 6 --image_size 64
    python scripts/train.py --config experiments/configs/vla_flow.py --config.run_dir=runs/vla_flow
    python scripts/evaluate.py --policy=checkpoint --checkpoint=runs/vla_flow \
        --tasks=reach,drawer-open,button-press-topdown --episodes=20 --image_size=64

Variant: none, or any of `lora` (rank-16 LoRA on the attention and MLP of the backbone and of the
expert, both bases frozen), `adarms` (pi0.5's time conditioning: the flow time modulates every
norm of the expert instead of entering the action tokens), `ki` (pi0.5's knowledge insulation:
the backbone learns the chunk's FAST tokens while the flow loss trains only the expert, which
reads the backbone's keys and values through a stop-gradient; loss weights
`model.vla.action.token_loss_weight` / `flow_loss_weight`; it needs a FAST tokenizer, as
vla_tokens.py:fast, and inference runs the expert alone) and `pod` (the 3B backbone with pi0's
width-1024 expert, 224x224 cameras, FSDP over every device, bf16, multi-host auto-detection):
`lora`, `adarms`, `adarms,ki`, `lora,pod`.

    python scripts/fit_fast.py --config experiments/configs/vla_tokens.py:fast --output_dir runs/fast_quickstart
    python scripts/train.py --config experiments/configs/vla_flow.py:adarms,ki \
        --config.model.vla.action.fast_tokenizer=runs/fast_quickstart --config.run_dir=runs/vla_flow_ki
`--config.backbone_checkpoint=/path/to/paligemma` starts from PaliGemma weights (see vla_tokens.py).

Model: vla_tokens.py's prefix (both cameras of the current step and the instruction, attending
bidirectionally), the proprio and the 4-action chunk as the expert's suffix (width 64 next to
the tiny backbone's 128, same attention geometry), flow matching with t ~ Beta(1.5, 1), 10 Euler
steps at inference on a prefix KV cache. Actions and proprio are normalized to mean 0, std 1.
"""

import os

import ml_collections

from octo_like.utils.config import load_config_module


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    options = [option for option in (variant or "").split(",") if option]
    vla_tokens = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "vla_tokens.py"))
    action = {"time_conditioning": "adarms" if "adarms" in options else "concat"}
    if "ki" in options:
        action.update(knowledge_insulation=True, token_loss_weight=1.0, flow_loss_weight=1.0)
    return vla_tokens.vla_config(
        "flow",
        options,
        run_name="_".join(["vla_flow", *options]),
        allowed=(*vla_tokens.OPTIONS, "adarms", "ki"),
        action_settings=action,
    )
