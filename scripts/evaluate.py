"""Closed-loop evaluation on Meta-World: success rates, videos and a chart.

    python scripts/evaluate.py --policy=scripted --tasks=mt10 --episodes=20 --seed=0 \
        --output_dir=runs/eval/scripted_mt10 [--videos_per_task=2] [--workers=8]
    python scripts/evaluate.py --policy=checkpoint --checkpoint=runs/RUN_DIR [--step=N] \
        --tasks=mt10 --episodes=50 --output_dir=runs/eval/RUN [--instructions=heldout.json]
    python scripts/evaluate.py --policy=remote --address=ws://localhost:8000 [--api_key=KEY] \
        --tasks=mt10 --episodes=50 --output_dir=runs/eval/RUN_remote

Writes to --output_dir:
  results.json          {"tasks": {task: {success_rate, episodes, mean_length, ci95}}, "mean_success_rate", "settings"}
  results.md            the same as a markdown table
  success_rates.png     bar chart with 95% intervals
  episodes.jsonl        one line per episode: task, index, seed, instruction, success, length
  videos/<task>/episode_<i>.mp4   the first --videos_per_task episodes of every task (both cameras side by side)

--instructions=FILE.json ({task: [instruction, ...]}) replaces the instructions the policy is
given; --instructions=heldout gives it the held-out paraphrases of the tasks
(`--write_heldout_instructions=FILE.json` writes them to a file, to edit).
Cameras render at --image_size; a checkpoint's default is the largest image size it was trained
on (read from the release), a served policy's the largest of its observation spec (read from the
server's metadata), the scripted and random policies' 128. `--policy=remote` asks a policy server
(scripts/serve_policy.py) for every chunk, each evaluation worker over its own connection; with the
same settings it gives the same episodes as `--policy=checkpoint` on the served release.
`--async_overlap=K` runs it asynchronously (LeRobot's async inference: the next chunk is requested
when K actions of the current one are left, and executed without the ones already taken).
"""

import dataclasses
import json
import os

from absl import flags

from octo_like.eval.envs.metaworld_tasks import heldout_instructions, resolve_tasks
from octo_like.eval.policies import (
    DEFAULT_RENDER_SIZE,
    RandomPolicy,
    ScriptedPolicy,
    load_checkpoint_policy,
    render_size_of_release,
)
from octo_like.eval.report import markdown_table, plot_success_rates, summarize, write_results, write_video
from octo_like.eval.rollout import EvalSettings, evaluate
from octo_like.policy.registry import read_release_config
from octo_like.policy.release import check_release
from octo_like.serving.client import AsyncRemotePolicy, RemotePolicy
from octo_like.serving.server import API_KEY_VARIABLE
from octo_like.utils import spec
from octo_like.utils.cli import run_config_cli
from octo_like.utils.errors import InputError
from octo_like.utils.files import write_text_atomically

_POLICY = flags.DEFINE_enum(
    "policy", "scripted", ["scripted", "random", "checkpoint", "remote"], "Which policy to run."
)
_ADDRESS = flags.DEFINE_string("address", None, "--policy=remote: the policy server, ws://HOST:PORT.")
_ASYNC_OVERLAP = flags.DEFINE_integer(
    "async_overlap",
    None,
    "--policy=remote: asynchronous inference, requesting the next chunk when this many actions are left "
    "(default: synchronous, one chunk at a time).",
)
_API_KEY = flags.DEFINE_string(
    "api_key", None, "--policy=remote: the server's API key (default: the OCTO_LIKE_API_KEY environment variable)."
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Run directory of a trained policy (--policy=checkpoint).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_DATASET_NAME = flags.DEFINE_string(
    "dataset_name", None, "Whose action statistics to use, for multi-dataset checkpoints."
)
_TASKS = flags.DEFINE_string(
    "tasks", "mt10", "Comma-separated task names or sets (mt10, mt50, mt50_train, mt50_heldout)."
)
_EPISODES = flags.DEFINE_integer("episodes", 20, "Episodes per task.")
_SEED = flags.DEFINE_integer("seed", 0, "Evaluation seed: fixes every episode's start, instruction and policy noise.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where results, videos and the chart go.")
_INSTRUCTIONS = flags.DEFINE_string(
    "instructions", None, "JSON file {task: [instruction, ...]} given to the policy, or 'heldout'."
)
_VIDEOS = flags.DEFINE_integer("videos_per_task", 0, "Episodes per task saved as mp4.")
_WORKERS = flags.DEFINE_integer("workers", None, "Parallel episode processes (default: one per CPU).")
_MAX_STEPS = flags.DEFINE_integer("max_episode_steps", 500, "Steps after which an episode counts as failed.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size",
    None,
    "Rendered image size, resized to the policy's inputs (default: a checkpoint's largest training size, else 128).",
)
_EXEC_HORIZON = flags.DEFINE_integer(
    "exec_horizon", None, "Actions run per predicted chunk (default: the whole chunk)."
)
_TEMPORAL_ENSEMBLE = flags.DEFINE_bool("temporal_ensemble", False, "Predict every step and average overlapping chunks.")
_EXP_WEIGHT = flags.DEFINE_float(
    "exp_weight", 0.0, "Temporal ensemble weight decay (positive favours older predictions)."
)
_WRITE_HELDOUT = flags.DEFINE_string(
    "write_heldout_instructions", None, "Write the held-out paraphrases of --tasks to this JSON file and exit."
)


def read_instructions(path: str, tasks: list[str]) -> dict[str, list[str]]:
    if path == "heldout":
        return {task: list(texts) for task, texts in heldout_instructions(tasks).items()}
    if not os.path.isfile(path):
        raise InputError(f"--instructions file '{path}' not found; expected a JSON file {{task: [instruction, ...]}}")
    try:
        with open(path) as file:
            data = json.load(file)
    except json.JSONDecodeError as error:
        raise InputError(
            f"--instructions file '{path}' is not valid JSON ({error}); expected {{task: [instruction, ...]}}"
        ) from error
    if not isinstance(data, dict) or not all(
        isinstance(texts, list) and all(isinstance(text, str) for text in texts) for texts in data.values()
    ):
        raise InputError(f"--instructions file '{path}' must map task names to lists of strings")
    return {resolve_tasks([task])[0]: texts for task, texts in data.items()}


def policy_spec() -> dict:
    if _POLICY.value == "checkpoint":
        if not _CHECKPOINT.value:
            raise InputError("--policy=checkpoint needs --checkpoint=RUN_DIR")
        # Before any output or evaluation work: a directory without a saved step, or whose config
        # names what a release may not, fails at once.
        check_release(_CHECKPOINT.value, _STEP.value)
        read_release_config(_CHECKPOINT.value)
        return spec.create(
            load_checkpoint_policy, _CHECKPOINT.value, step=_STEP.value, dataset_name=_DATASET_NAME.value
        )
    if _POLICY.value == "remote":
        if not _ADDRESS.value:
            raise InputError("--policy=remote needs --address=ws://HOST:PORT (scripts/serve_policy.py serves one)")
        api_key = _API_KEY.value or os.environ.get(API_KEY_VARIABLE)
        if _ASYNC_OVERLAP.value is not None:
            return spec.create(AsyncRemotePolicy, _ADDRESS.value, api_key=api_key, overlap=_ASYNC_OVERLAP.value)
        return spec.create(RemotePolicy, _ADDRESS.value, api_key=api_key)
    return spec.create(ScriptedPolicy if _POLICY.value == "scripted" else RandomPolicy)


def default_image_size() -> int:
    if _POLICY.value == "remote":
        policy = spec.instantiate(policy_spec())
        policy.close()
        return max(max(size) for size in policy.image_sizes.values())
    return render_size_of_release(_CHECKPOINT.value) if _POLICY.value == "checkpoint" else DEFAULT_RENDER_SIZE


def write_outputs(output_dir: str, settings: EvalSettings, episodes: list, results: dict) -> None:
    for episode in episodes:
        if episode.frames is not None:
            write_video(
                os.path.join(output_dir, "videos", episode.task, f"episode_{episode.index}.mp4"), episode.frames
            )
    write_results(output_dir, episodes, results)
    plot_success_rates(results, os.path.join(output_dir, "success_rates.png"), title=f"{_POLICY.value} policy")


def main(argv):
    if len(argv) > 1:
        raise InputError(f"unexpected arguments {argv[1:]}; only flags are accepted")
    tasks = resolve_tasks(_TASKS.value)
    if _WRITE_HELDOUT.value:
        write_text_atomically(_WRITE_HELDOUT.value, json.dumps(heldout_instructions(tasks), indent=2))
        print(f"wrote the held-out instructions of {len(tasks)} tasks to {_WRITE_HELDOUT.value}")
        return
    if not _OUTPUT_DIR.value:
        raise InputError("--output_dir is required")
    policy = policy_spec()
    settings = EvalSettings(
        tasks=tasks,
        episodes_per_task=_EPISODES.value,
        seed=_SEED.value,
        max_episode_steps=_MAX_STEPS.value,
        image_size=_IMAGE_SIZE.value or default_image_size(),
        exec_horizon=_EXEC_HORIZON.value,
        temporal_ensemble=_TEMPORAL_ENSEMBLE.value,
        exp_weight=_EXP_WEIGHT.value,
        videos_per_task=_VIDEOS.value,
        instructions=read_instructions(_INSTRUCTIONS.value, tasks) if _INSTRUCTIONS.value else None,
    )
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    episodes = evaluate(policy, settings, num_workers=_WORKERS.value)
    results = summarize(episodes)
    results["settings"] = {
        "policy": _POLICY.value,
        "checkpoint": _CHECKPOINT.value,
        "step": _STEP.value,
        "instructions": _INSTRUCTIONS.value,
        **{key: value for key, value in dataclasses.asdict(settings).items() if key != "instructions"},
    }
    write_outputs(_OUTPUT_DIR.value, settings, episodes, results)
    print(markdown_table(results), end="")
    print(f"wrote {os.path.join(_OUTPUT_DIR.value, 'results.json')}")


if __name__ == "__main__":
    run_config_cli(main)
