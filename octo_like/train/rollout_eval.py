"""Closed-loop success during training: Meta-World rollouts of saved steps, in a separate process.

Validation loss and success disagree on Meta-World (the loss of a policy that keeps improving in
closed loop can rise), so checkpoints are chosen by success. With `config.rollout_eval.tasks` set,
every `interval` steps the trainer starts `python -m octo_like.train.rollout_eval` on the step it
has just saved and goes on training; the evaluation runs at a lower CPU priority, writes
`<run_dir>/rollout_eval/<step>/{results.json,results.md,episodes.jsonl}`, and once it is done
the trainer logs `rollout/<task>` and `rollout/mean_success` at that step to metrics.jsonl and
tensorboard (loss.png draws them). One evaluation runs at a time: a step saved while one is
running waits, and only the newest waiting step is evaluated. The trainer waits for the
evaluation still running when training ends, so the last success is in the metrics.

    config.rollout_eval = dict(tasks="mt10", episodes=10, interval=1000, workers=1, seed=0, max_episode_steps=500)
"""

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Mapping

from absl import logging

from octo_like.utils.errors import InputError

OUTPUT_DIR = "rollout_eval"
NICENESS = 10  # below the trainer: the evaluation takes the CPU time training leaves


@dataclasses.dataclass(frozen=True)
class RolloutEvalSettings:
    tasks: str
    episodes: int = 10
    interval: int = 1000
    workers: int = 1
    seed: int = 0
    max_episode_steps: int = 500

    @classmethod
    def from_config(cls, config: Mapping) -> "RolloutEvalSettings | None":
        section = config.get("rollout_eval") or {}
        if not section.get("tasks"):
            return None
        return cls(**{key: value for key, value in section.items() if value is not None})


def check_rollout_eval_config(config: Mapping) -> None:
    """One line for a rollout_eval section training could not honour, before any training work
    (its numbers' ranges are checked with the others' by octo_like/train/validate.py)."""
    settings = RolloutEvalSettings.from_config(config)
    if settings is None:
        return
    from octo_like.eval.envs.metaworld_tasks import resolve_tasks

    resolve_tasks(settings.tasks)
    if settings.interval % config["save_interval"]:
        raise InputError(
            f"rollout_eval.interval={settings.interval} is not a multiple of save_interval={config['save_interval']}; "
            "expected rollouts of saved steps"
        )


def results_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, OUTPUT_DIR, str(step), "results.json")


class RolloutEvaluator:
    """Starts, watches and logs the evaluation processes of one training run (process 0 only)."""

    def __init__(self, run_dir: str, settings: RolloutEvalSettings, log_metrics):
        self.run_dir = run_dir
        self.settings = settings
        self.log_metrics = log_metrics  # (step, {name: value}) -> None
        self._running: tuple[int, subprocess.Popen] | None = None
        self._waiting_step: int | None = None

    def saved(self, step: int) -> None:
        """Training saved `step`: evaluate it if it is an interval step."""
        if step % self.settings.interval == 0:
            self._waiting_step = step
        self.poll()

    def poll(self) -> None:
        """Logs a finished evaluation and starts the waiting one once its step is on disk (orbax
        saves in the background); never blocks."""
        from octo_like.policy.release import saved_steps

        if self._running is not None and self._running[1].poll() is not None:
            self._finish(*self._running)
            self._running = None
        if self._running is None and self._waiting_step is not None and self._waiting_step in saved_steps(self.run_dir):
            self._running = (self._waiting_step, self._start(self._waiting_step))
            self._waiting_step = None

    def wait(self) -> None:
        """At the end of training, once the saves are finished: every started or waiting evaluation
        finishes and is logged."""
        self.poll()
        while self._running is not None:
            self._running[1].wait()
            self.poll()

    def _start(self, step: int) -> subprocess.Popen:
        log_path = os.path.join(self.run_dir, OUTPUT_DIR, str(step), "log.txt")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        request = {
            "run_dir": self.run_dir,
            "step": step,
            "parent_pid": os.getpid(),
            **dataclasses.asdict(self.settings),
        }
        with open(log_path, "w") as log:
            return subprocess.Popen(
                [sys.executable, "-m", __name__, json.dumps(request)], stdout=log, stderr=subprocess.STDOUT
            )

    def _finish(self, step: int, process: subprocess.Popen) -> None:
        path = results_path(self.run_dir, step)
        if process.returncode != 0 or not os.path.isfile(path):
            log_path = os.path.join(os.path.dirname(path), "log.txt")
            logging.warning(
                "rollout evaluation of step %d failed (exit code %s); see %s", step, process.returncode, log_path
            )
            print(f"rollout evaluation of step {step} failed (exit code {process.returncode}); see {log_path}")
            return
        with open(path) as file:
            results = json.load(file)
        metrics = {f"{task}": task_results["success_rate"] for task, task_results in results["tasks"].items()}
        metrics["mean_success"] = results["mean_success_rate"]
        self.log_metrics(step, metrics)
        print(
            f"rollout evaluation of step {step}: mean success {results['mean_success_rate']:.2f} "
            f"({self.settings.episodes} episodes per task)"
        )


def run_request(request: dict) -> None:
    """The evaluation process: rolls out `request["step"]` of the run and writes its results."""
    from octo_like.eval.policies import load_checkpoint_policy, render_size_of_release
    from octo_like.eval.report import summarize, write_results
    from octo_like.eval.rollout import EvalSettings, evaluate
    from octo_like.utils import spec

    run_dir, step = request["run_dir"], request["step"]
    settings = EvalSettings(
        tasks=request["tasks"].split(","),
        episodes_per_task=request["episodes"],
        seed=request["seed"],
        max_episode_steps=request["max_episode_steps"],
        image_size=render_size_of_release(run_dir),
    )
    policy = spec.create(load_checkpoint_policy, run_dir, step=step)
    episodes = evaluate(policy, settings, num_workers=request["workers"], show_progress=False)
    results = summarize(episodes)
    results["settings"] = {
        "checkpoint": run_dir,
        "step": step,
        **{key: request[key] for key in ("tasks", "episodes", "seed", "max_episode_steps")},
    }
    write_results(os.path.dirname(results_path(run_dir, step)), episodes, results)


def main(argv: list[str]) -> None:
    from octo_like.utils.parallel import die_with_parent

    request = json.loads(argv[1])
    die_with_parent(request["parent_pid"])  # a killed trainer leaves no evaluation behind
    os.nice(NICENESS)
    run_request(request)


if __name__ == "__main__":
    main(sys.argv)
