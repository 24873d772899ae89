"""Evaluation results as numbers, a markdown table, a bar chart and videos.

`summarize` gives the results.json structure:

    {"tasks": {"<task>": {"success_rate": f, "episodes": n, "mean_length": f, "ci95": [lo, hi]}},
     "mean_success_rate": f}

`ci95` is the Wilson score interval of the success rate (well-behaved at 0/n and n/n, unlike the
normal approximation); `mean_success_rate` is the unweighted mean over tasks.
"""

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from octo_like.eval.rollout import EpisodeResult
from octo_like.utils.files import write_atomically, write_text_atomically

Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score confidence interval for a binomial success rate."""
    if trials == 0:
        return 0.0, 1.0
    rate = successes / trials
    denominator = 1 + z**2 / trials
    center = (rate + z**2 / (2 * trials)) / denominator
    half_width = z * math.sqrt(rate * (1 - rate) / trials + z**2 / (4 * trials**2)) / denominator
    # At 0/n and n/n the bound is exactly the rate; rounding would otherwise leave it a hair off.
    low = 0.0 if successes == 0 else max(0.0, center - half_width)
    high = 1.0 if successes == trials else min(1.0, center + half_width)
    return low, high


def summarize(episodes: Sequence[EpisodeResult]) -> dict:
    """Per-task success rate, episode count, mean length and 95% interval, plus the mean over tasks."""
    by_task: dict[str, list[EpisodeResult]] = {}
    for episode in episodes:
        by_task.setdefault(episode.task, []).append(episode)
    tasks = {}
    for task, results in by_task.items():
        successes = sum(result.success for result in results)
        low, high = wilson_interval(successes, len(results))
        tasks[task] = {
            "success_rate": successes / len(results),
            "episodes": len(results),
            "mean_length": float(np.mean([result.length for result in results])),
            "ci95": [low, high],
        }
    mean = float(np.mean([task["success_rate"] for task in tasks.values()])) if tasks else 0.0
    return {"tasks": tasks, "mean_success_rate": mean}


def markdown_table(results: Mapping) -> str:
    lines = [
        "| task | success rate | 95% CI | episodes | mean length |",
        "|---|---:|---:|---:|---:|",
    ]
    for task, row in results["tasks"].items():
        low, high = row["ci95"]
        lines.append(
            f"| {task} | {row['success_rate']:.2f} | [{low:.2f}, {high:.2f}] | {row['episodes']} | "
            f"{row['mean_length']:.1f} |"
        )
    lines.append(f"| **mean** | **{results['mean_success_rate']:.2f}** | | | |")
    return "\n".join(lines) + "\n"


def write_results(output_dir: str, episodes: Sequence[EpisodeResult], results: Mapping) -> None:
    """episodes.jsonl (one line per episode, frames left out), results.md and results.json, the
    last written last: its presence means the rest is complete."""
    lines = [
        json.dumps({key: value for key, value in dataclasses.asdict(episode).items() if key != "frames"})
        for episode in episodes
    ]
    files = {
        "episodes.jsonl": "\n".join(lines) + "\n",
        "results.md": markdown_table(results),
        "results.json": json.dumps(results, indent=2),
    }
    for name, text in files.items():
        write_text_atomically(os.path.join(output_dir, name), text)


def write_video(path: str, frames: Sequence[np.ndarray], fps: int = 20) -> None:
    """H.264 mp4 of uint8 [H, W, 3] frames (ffmpeg from the imageio-ffmpeg wheel)."""
    import imageio.v2 as imageio

    def write(temp_path):
        # macro_block_size=1 keeps the frame size as is (the default pads up to multiples of 16).
        with imageio.get_writer(
            temp_path, fps=fps, codec="libx264", macro_block_size=1, ffmpeg_log_level="error"
        ) as writer:
            for frame in frames:
                writer.append_data(np.asarray(frame, np.uint8))

    write_atomically(path, write)


def plot_success_rates(results: Mapping, path: str | None = None, title: str = "Success rate"):
    """A bar chart of per-task success rates with their 95% intervals; saved as PNG when `path` is given."""
    # A bare Figure (no pyplot): no display or backend state involved, and notebooks show it inline.
    from matplotlib.figure import Figure

    tasks = list(results["tasks"])
    rates = np.array([results["tasks"][task]["success_rate"] for task in tasks])
    intervals = np.array([results["tasks"][task]["ci95"] for task in tasks]).reshape(-1, 2)
    errors = np.clip(np.stack([rates - intervals[:, 0], intervals[:, 1] - rates]), 0.0, None)  # rounding
    figure = Figure(figsize=(max(4.0, 0.6 * len(tasks) + 1.5), 3.5))
    axes = figure.subplots()
    axes.bar(range(len(tasks)), rates, yerr=errors, capsize=3, color="tab:blue")
    axes.set_xticks(range(len(tasks)), [task.removesuffix("-v3") for task in tasks], rotation=45, ha="right")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("success rate")
    axes.set_title(f"{title} (mean {results['mean_success_rate']:.2f})")
    figure.tight_layout()
    if path is not None:
        write_atomically(path, lambda temp_path: figure.savefig(temp_path, dpi=120))
    return figure
