"""Closed-loop episodes of a policy on Meta-World tasks, in parallel processes.

    settings = EvalSettings(tasks=("reach-v3", "drawer-open-v3"), episodes_per_task=20, seed=0)
    episodes = evaluate(spec.create(ScriptedPolicy), settings, num_workers=8)

An episode is fixed by (seed, task, index): the start state, the instruction given to the policy
(the task's training paraphrases in turn, or `settings.instructions`) and the policy's random
draws all follow from it, so results do not depend on the number of workers or their order.

The environment stack per task: MetaWorldEnv -> RecordFramesWrapper (when videos are asked for)
-> HistoryWrapper(policy.window_size) -> RHCWrapper(exec_horizon) or TemporalEnsembleWrapper.
"""

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from octo_like.eval.envs.metaworld_tasks import episode_seed_sequence, resolve_tasks, train_instructions
from octo_like.eval.policies import DEFAULT_RENDER_SIZE, METAWORLD_ACTION_DIM, Policy
from octo_like.utils import spec as spec_lib
from octo_like.utils.errors import InputError
from octo_like.utils.parallel import map_in_processes


@dataclasses.dataclass
class EvalSettings:
    tasks: Sequence[str]
    episodes_per_task: int = 20
    seed: int = 0
    max_episode_steps: int = 500
    image_size: int = DEFAULT_RENDER_SIZE
    cameras: Mapping[str, str] = dataclasses.field(default_factory=lambda: {"primary": "corner", "wrist": "gripperPOV"})
    exec_horizon: int | None = None  # actions run per chunk (receding horizon); None: the whole chunk
    temporal_ensemble: bool = False  # instead: a new chunk every step, overlapping predictions averaged
    exp_weight: float = 0.0
    videos_per_task: int = 0  # the first K episodes of every task keep their frames
    instructions: Mapping[str, Sequence[str]] | None = None  # {task: [instruction, ...]} replacing the defaults

    def __post_init__(self):
        self.tasks = tuple(resolve_tasks(self.tasks))
        if self.episodes_per_task < 1:
            raise InputError(f"episodes_per_task={self.episodes_per_task}; expected at least 1")
        if self.exec_horizon is not None and self.temporal_ensemble:
            raise InputError("exec_horizon and temporal_ensemble exclude each other; expected one of them")
        if self.instructions is not None:
            missing = [task for task in self.tasks if not self.instructions.get(task)]
            if missing:
                raise InputError(
                    f"the instructions have none for task(s) {missing}; expected a non-empty list for every "
                    "evaluated task"
                )

    def instruction(self, task: str, index: int) -> str:
        choices = self.instructions[task] if self.instructions is not None else train_instructions(task)
        return choices[index % len(choices)]


@dataclasses.dataclass
class EpisodeResult:
    task: str
    index: int
    seed: int
    instruction: str
    success: bool
    length: int
    frames: list[np.ndarray] | None = None  # uint8 [H, W, 3] per env step, for the first episodes


def episode_seed(settings: EvalSettings, task: str, index: int) -> int:
    return int(episode_seed_sequence("evaluate", settings.seed, task, index).generate_state(1)[0])


def check_policy_fits(policy: Policy, settings: EvalSettings) -> None:
    if hasattr(policy, "check_fits"):
        policy.check_fits(tuple(settings.cameras), METAWORLD_ACTION_DIM)
    if settings.exec_horizon is not None and settings.exec_horizon > policy.action_horizon:
        raise InputError(
            f"exec_horizon={settings.exec_horizon} exceeds the policy's action chunk of {policy.action_horizon}"
        )


def make_env(task: str, policy: Policy, settings: EvalSettings):
    from octo_like.eval.envs.metaworld import MetaWorldEnv  # imports mujoco: only where episodes run
    from octo_like.eval.wrappers import HistoryWrapper, RecordFramesWrapper, RHCWrapper, TemporalEnsembleWrapper

    # Render only what is looked at: the policy's cameras, or every camera when recording videos.
    cameras = {name: settings.cameras[name] for name in policy.cameras}
    if settings.videos_per_task > 0:
        cameras = dict(settings.cameras)
    env = MetaWorldEnv(
        task, cameras=cameras, image_size=settings.image_size, max_episode_steps=settings.max_episode_steps
    )
    if settings.videos_per_task > 0:
        env = RecordFramesWrapper(env)
    env = HistoryWrapper(env, policy.window_size)
    if settings.temporal_ensemble:
        return TemporalEnsembleWrapper(env, policy.action_horizon, settings.exp_weight)
    return RHCWrapper(env, settings.exec_horizon or policy.action_horizon)


def run_episode(env, policy: Policy, settings: EvalSettings, task: str, index: int) -> EpisodeResult:
    seed = episode_seed(settings, task, index)
    instruction = settings.instruction(task, index)
    policy.reset(task, instruction)
    rng = np.random.default_rng(seed)
    observation_window, _ = env.reset(seed=seed)
    while True:
        observation_window, _, terminated, truncated, info = env.step(policy(observation_window, rng))
        if terminated or truncated:
            break
    frames = list(env.get_wrapper_attr("frames")) if index < settings.videos_per_task else None
    return EpisodeResult(
        task=task,
        index=index,
        seed=seed,
        instruction=instruction,
        success=bool(info["success"]),
        length=env.get_wrapper_attr("num_steps"),
        frames=frames,
    )


class _Worker:
    """A policy and one environment per task, kept for all the episodes one process runs."""

    def __init__(self, policy_spec: Mapping, settings: EvalSettings):
        self.policy, self.settings, self.envs = spec_lib.instantiate(policy_spec), settings, {}

    def run(self, task: str, index: int) -> EpisodeResult:
        if task not in self.envs:
            self.envs[task] = make_env(task, self.policy, self.settings)
        return run_episode(self.envs[task], self.policy, self.settings, task, index)


_WORKER: _Worker | None = None  # one per process


def _run_batch(jobs: Sequence[tuple[Mapping, EvalSettings, str, int]]) -> list[EpisodeResult]:
    global _WORKER
    if _WORKER is None:
        policy_spec, settings = jobs[0][:2]
        _WORKER = _Worker(policy_spec, settings)
        # Here rather than in the caller, so the policy (a model, maybe on a GPU) is loaded once
        # per worker only; an InputError travels back to the caller as it is.
        check_policy_fits(_WORKER.policy, settings)
    return [_WORKER.run(task, index) for _, _, task, index in jobs]


def evaluate(
    policy_spec: Mapping, settings: EvalSettings, num_workers: int | None = None, show_progress: bool = True
) -> list[EpisodeResult]:
    """Runs every episode of every task; returns the results ordered by (task, index).

    Every worker process builds the policy from `policy_spec` once (a checkpoint policy loads its
    model once per worker: use one worker for a model on a GPU).
    """
    jobs = [
        (policy_spec, settings, task, index) for task in settings.tasks for index in range(settings.episodes_per_task)
    ]
    results = map_in_processes(
        _run_batch,
        jobs,
        num_workers=num_workers,
        desc="Evaluating",
        unit="episode",
        show_progress=show_progress,
    )
    return sorted(results, key=lambda result: (settings.tasks.index(result.task), result.index))
