"""Scripted-expert episodes on Meta-World, collected in parallel processes into resumable files.

One job is one (task, episode index). A job runs the task's scripted expert from a seed derived
from (collection seed, task, episode index, attempt), optionally executing a noisy action while
recording the expert's (clipped) action as the label; with `only_successes`, a failed attempt is
retried with the next attempt's seed, up to `max_attempts`. The finished episode is written to
`<episodes_dir>/<task>/episode_<index>.npz` through a temporary file and a rename, so a killed
collection keeps every finished episode and the next run does only what is missing. A job whose
attempts all failed leaves `episode_<index>.failed.json`, so it is not retried on resume either.

Every job depends on its own seed only, so the files are the same whatever the number of
processes, the order in which jobs finish, or how many times the collection was resumed.
"""

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from octo_like.eval.envs.metaworld_tasks import CAMERAS, episode_seed_sequence, resolve_tasks, train_instructions
from octo_like.utils.errors import InputError
from octo_like.utils.files import write_atomically, write_text_atomically
from octo_like.utils.parallel import map_in_processes

SETTINGS_FILE = "collection.json"


@dataclasses.dataclass(frozen=True)
class CollectionSettings:
    tasks: tuple[str, ...]
    episodes_per_task: int
    image_size: int = 128
    primary_camera: str = "corner"
    wrist_camera: str = "gripperPOV"
    action_noise: float = 0.0  # std of the Gaussian noise added to the executed action
    only_successes: bool = True
    max_attempts: int = 5
    max_episode_steps: int = 500
    seed: int = 0

    def __post_init__(self):
        if self.episodes_per_task < 1:
            raise InputError(f"episodes_per_task={self.episodes_per_task}; expected at least 1")
        if self.action_noise < 0:
            raise InputError(f"action_noise={self.action_noise}; expected a standard deviation >= 0")
        for camera in (self.primary_camera, self.wrist_camera):
            if camera not in CAMERAS:
                raise InputError(f"unknown Meta-World camera '{camera}'; expected one of {', '.join(CAMERAS)}")
        if self.max_attempts < 1:
            raise InputError(f"max_attempts={self.max_attempts}; expected at least 1")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "CollectionSettings":
        data = dict(data)
        data["tasks"] = tuple(data["tasks"])
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class EpisodeJob:
    task: str
    index: int


def episode_path(episodes_dir: str, job: EpisodeJob) -> str:
    return os.path.join(episodes_dir, job.task, f"episode_{job.index:05d}.npz")


def failure_path(episodes_dir: str, job: EpisodeJob) -> str:
    return os.path.join(episodes_dir, job.task, f"episode_{job.index:05d}.failed.json")


_ENVS = {}  # per worker process: one environment per task, reused across its episodes


def _env_for(settings: CollectionSettings, task: str):
    from octo_like.eval.envs.metaworld import MetaWorldEnv  # imports mujoco: only in workers

    if task not in _ENVS:
        _ENVS[task] = MetaWorldEnv(
            task,
            cameras={"primary": settings.primary_camera, "wrist": settings.wrist_camera},
            image_size=settings.image_size,
            max_episode_steps=settings.max_episode_steps,
        )
    return _ENVS[task]


def run_attempt(settings: CollectionSettings, job: EpisodeJob, attempt: int) -> dict:
    """One scripted episode: per-step arrays plus its metadata."""
    env = _env_for(settings, job.task)
    env_seed_seq, noise_seed_seq, language_seed_seq = episode_seed_sequence(
        "collect", settings.seed, job.task, job.index, attempt
    ).spawn(3)
    noise_rng = np.random.default_rng(noise_seed_seq)
    instructions = train_instructions(job.task)
    instruction = instructions[np.random.default_rng(language_seed_seq).integers(len(instructions))]
    env_seed = int(env_seed_seq.generate_state(1)[0])

    observation, info = env.reset(seed=env_seed)
    steps = {key: [] for key in (*observation, "action", "executed_action", "reward")}
    success = False
    for _ in range(settings.max_episode_steps):
        action = np.clip(env.expert_action(), -1.0, 1.0)
        executed = action
        if settings.action_noise > 0:
            executed = np.clip(action + settings.action_noise * noise_rng.standard_normal(action.shape), -1.0, 1.0)
        for key, value in observation.items():
            steps[key].append(value)
        next_observation, reward, terminated, truncated, step_info = env.step(executed)
        steps["action"].append(action.astype(np.float32))
        steps["executed_action"].append(np.asarray(executed, np.float32))
        steps["reward"].append(np.float32(reward))
        observation = next_observation
        success = step_info["success"]
        if terminated or truncated:
            break
    metadata = dict(
        task=job.task,
        index=job.index,
        attempt=attempt,
        seed=env_seed,
        variation=info["variation"],
        success=bool(success),
        instruction=instruction,
    )
    return {"steps": {key: np.stack(values) for key, values in steps.items()}, "metadata": metadata}


def run_job(settings: CollectionSettings, job: EpisodeJob, episodes_dir: str) -> dict:
    """Runs a job's attempts until one is kept, writes it (or a failure record); returns its metadata."""
    attempts = settings.max_attempts if settings.only_successes else 1
    for attempt in range(attempts):
        episode = run_attempt(settings, job, attempt)
        if episode["metadata"]["success"] or not settings.only_successes:
            arrays = {f"steps/{key}": value for key, value in episode["steps"].items()}
            arrays["metadata"] = np.frombuffer(json.dumps(episode["metadata"]).encode(), np.uint8)
            write_atomically(
                episode_path(episodes_dir, job), lambda temp_path: np.savez_compressed(temp_path, **arrays)
            )
            return episode["metadata"]
    failure = {**episode["metadata"], "attempts": attempts}
    write_text_atomically(failure_path(episodes_dir, job), json.dumps(failure))
    return failure


def load_episode(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """(per-step arrays, metadata) of an episode file."""
    with np.load(path) as data:
        steps = {key.removeprefix("steps/"): data[key] for key in data.files if key.startswith("steps/")}
        metadata = json.loads(data["metadata"].tobytes().decode())
    return steps, metadata


def all_jobs(settings: CollectionSettings) -> list[EpisodeJob]:
    return [EpisodeJob(task, index) for task in settings.tasks for index in range(settings.episodes_per_task)]


def pending_jobs(settings: CollectionSettings, episodes_dir: str) -> list[EpisodeJob]:
    return [
        job
        for job in all_jobs(settings)
        if not os.path.exists(episode_path(episodes_dir, job)) and not os.path.exists(failure_path(episodes_dir, job))
    ]


def check_settings(settings: CollectionSettings, episodes_dir: str) -> None:
    """Records the settings of a new collection, or checks that a resumed one used the same."""
    path = os.path.join(episodes_dir, SETTINGS_FILE)
    if os.path.exists(path):
        with open(path) as file:
            recorded = CollectionSettings.from_json(json.load(file))
        if recorded != settings:
            changed = [
                f"{field.name}: {getattr(recorded, field.name)!r} -> {getattr(settings, field.name)!r}"
                for field in dataclasses.fields(settings)
                if getattr(recorded, field.name) != getattr(settings, field.name)
            ]
            raise InputError(
                f"'{episodes_dir}' holds a collection with other settings ({'; '.join(changed)}); "
                "expected the same settings to resume, or another dataset name"
            )
        return
    write_text_atomically(path, json.dumps(settings.to_json(), indent=2))


def _run_batch(jobs: Sequence[tuple[CollectionSettings, EpisodeJob, str]]) -> list[dict]:
    return [run_job(settings, job, episodes_dir) for settings, job, episodes_dir in jobs]


def collect(settings: CollectionSettings, episodes_dir: str, num_workers: int | None = None) -> dict[str, int]:
    """Runs every pending job; returns counts of kept episodes and failed jobs (all jobs so far)."""
    settings = dataclasses.replace(settings, tasks=tuple(resolve_tasks(settings.tasks)))
    check_settings(settings, episodes_dir)
    jobs = pending_jobs(settings, episodes_dir)
    map_in_processes(
        _run_batch,
        [(settings, job, episodes_dir) for job in jobs],
        num_workers=num_workers,
        desc="Collecting Meta-World episodes",
        unit="episode",
        done_before=len(all_jobs(settings)) - len(jobs),
    )
    kept = sum(os.path.exists(episode_path(episodes_dir, job)) for job in all_jobs(settings))
    return {"episodes": kept, "failed_jobs": len(all_jobs(settings)) - kept}
