"""Benchmarks, printed as JSON.

    python scripts/bench.py data --config experiments/configs/synthetic.py:default [--seconds 10]
    python scripts/bench.py train --config experiments/configs/metaworld_scratch.py:diffusion [--seconds 20]
    python scripts/bench.py infer --config experiments/configs/metaworld_scratch.py [--heads l1,diffusion:ddim:5]
    python scripts/bench.py infer --config experiments/configs/otter_metaworld.py:text_aware --heads flow:10,l1 \
        --config.model.clip.size=B/16 --config.dataset.frame_transform_kwargs.resize_size.primary='(224,224)' \
        --config.dataset.frame_transform_kwargs.resize_size.wrist='(224,224)'
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python scripts/bench.py scale \
        --config experiments/configs/metaworld_scratch.py:diffusion [--fsdp_sizes 1,2,4,8]
    python scripts/bench.py decode [--gemma_size tiny|2B] [--prompt_length 64] [--new_tokens 8] [--dtype bfloat16]
    python scripts/bench.py infer --config experiments/configs/vla_flow.py[:pod] [--euler_steps 10]
    python scripts/bench.py infer --config experiments/configs/vla_parallel.py:bins \
        --baseline_config experiments/configs/vla_tokens.py:bins
    python scripts/bench.py checkpoint --config experiments/configs/octo_scratch.py:tiny [--repeats 5]
    python scripts/bench.py serve --checkpoint runs/RUN_DIR [--seconds 5]
    python scripts/bench.py env [--tasks reach,drawer-open,button-press-topdown] [--image_size 128] [--seconds 5]

`data`: throughput of the data pipeline of a config's `dataset` section: trajectories/s (read,
restructure, normalize, chunk), frames/s (plus decode, resize, augment) and batches/s (the full
pipeline, shuffle and batch included), each with all parallelism on and with one thread per stage,
and their ratio side by side.

`train`: the model of a config's `model` section on one real batch of its dataset (with the frozen
instruction encoder's states computed outside the step, as train.py does): parameter
count, and for each `--compute_dtypes` entry (default float32 and bfloat16, with their ratio) train
steps/s, examples/s (jitted step, data loading excluded), FLOPs per step (XLA's count) and MFU
against the chip's dense bf16 peak where it is known (GPUs, TPUs; null on CPUs); peak host memory;
and the first step's wall time (tracing, compilation or loading it, one step: what `train.py`
prints as "first step") in float32, cold (an empty persistent compilation cache) and warm (the
cache the cold run wrote, the in-memory caches cleared: a second run of the same command).

`infer`: `PolicyModel.sample_actions` latency (p50/p95 over calls, batch 1, jitted) for each
`--heads` entry (`diffusion:ddim:5` = DDIM with 5 steps, `flow:10` = 10 Euler steps), on a model
built from the config with that head, and beside it the steady-state latency of a control loop
with the episode cache (octo_like/policy/episode_cache.py: the window slides by one step per call,
so each call encodes one new frame and the head runs on the cached readout), with their ratio;
for a policy with a CLIP (otter_metaworld.py) the result names its size and image resolution (a
ViT-B/16 CLIP as above: random weights, the same compute).

`scale`: for each `--fsdp_sizes` N (data = devices / N), the per-device bytes of parameters and
optimizer state under the default FSDP rule (expected to fall as about 1/N for the sharded
part), their ratio to N = 1 (the whole state, which pure data parallelism holds on every
device), and train steps/s on that mesh. On a CPU, force devices with
XLA_FLAGS=--xla_force_host_platform_device_count=8.

`decode`: greedy decoding of a randomly initialized Gemma (`--gemma_size`, `--dtype`) after a
`--prompt_length` prompt, `--new_tokens` tokens per call, with the KV cache and without it
(rerunning the whole sequence per token), tokens/s side by side and their ratio.

`infer` of a VLA config (vla_tokens.py, vla_flow.py, vla_parallel.py, vla_bridge.py): the latency
of one chunk (p50/p95) with the KV cache and, where the kind has one, without it (the prefix, or
the whole sequence, rerun at every Euler step or token), and their ratio; for action tokens also
Jacobi decoding (PD-VLA) with its backbone forward passes per chunk beside greedy decoding's;
`--euler_steps` for the flow expert and the flow heads; `--baseline_config` times a second VLA
config's chunk beside it and gives the ratio (parallel decoding against autoregressive bins).

`serve`: a release's chunk latency (p50/p95, batch 1) in-process and through the policy server on
localhost (scripts/serve_policy.py's server, msgpack over websockets), the difference as the
network's cost per chunk, and requests/s with 1 and 4 concurrent clients (queued onto one model).

`checkpoint`: the cost of checkpoint checksums for the model of a config (and its Adam state):
the time of one synchronous save of a step (parameters + train state, as training saves) and of
loading the parameters (as `load_pretrained` does), each with the checksums (computed at save,
verified at load) and without them (plain orbax), medians over `--repeats` after one warm-up
(compilation), with the overhead ratio side by side; plus the checksum pass alone (seconds, and as
a fraction of the plain save).

`env`: Meta-World simulation speed, each figure the mean over `--tasks`: frames/s of one camera
rendered as MetaWorldEnv renders (no multisampling, shadows or reflections) and, side by side, by
the default gymnasium/Meta-World renderer (`render_mode="rgb_array"`), with their ratio; physics
steps/s with no rendering; and the wall time of one scripted-expert episode with both cameras
rendered (reset included), with episodes/s.
"""

import json
import os
import time

import numpy as np
from absl import flags
from ml_collections import config_flags

from octo_like.eval.envs.metaworld_tasks import resolve_tasks
from octo_like.utils.cli import run_config_cli
from octo_like.utils.errors import InputError
from octo_like.utils.timing import calls_per_second

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config: path.py[:variant].", lock_config=True)
_BASELINE_CONFIG = config_flags.DEFINE_config_file(
    "baseline_config", None, "infer of a VLA config: a second VLA config timed beside it (e.g. bins).", lock_config=True
)
_SECONDS = flags.DEFINE_float("seconds", 5.0, "Measuring time per figure, after warm-up.")
_TASKS = flags.DEFINE_string(
    "tasks", "reach,drawer-open,button-press-topdown", "env: Meta-World tasks (comma-separated)."
)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "env: rendered image height and width.")
_INFER_HEADS = flags.DEFINE_string(
    "heads",
    "l1,discrete,diffusion:ddpm:20,diffusion:ddim:5,flow:10,flow:5",
    "infer: head[:sampler][:steps] entries (samplers of diffusion: ddpm, ddim).",
)
_FSDP_SIZES = flags.DEFINE_list("fsdp_sizes", ["1", "2", "4", "8"], "scale: fsdp axis sizes to compare.")
_COMPUTE_DTYPES = flags.DEFINE_list("compute_dtypes", ["float32", "bfloat16"], "train: compute dtypes to compare.")
_GEMMA_SIZE = flags.DEFINE_string("gemma_size", "tiny", "decode: Gemma size (GEMMA_SIZES), randomly initialized.")
_PROMPT_LENGTH = flags.DEFINE_integer(
    "prompt_length", 64, "decode: prompt tokens (PaliGemma: 256 image tokens + text)."
)
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 8, "decode: greedy tokens per call (e.g. one action chunk of bins).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "decode: parameter and compute dtype (float32 or bfloat16).")
_EULER_STEPS = flags.DEFINE_integer(
    "euler_steps",
    None,
    "infer of a VLA config: Euler (or DDIM) steps per action chunk (default: the kind's own, e.g. 10 for flow).",
)
_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint", None, "serve: the release (run directory) to serve.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "checkpoint: timed saves and loads per variant, after one warm-up.")
BENCHMARKS = ("data", "env", "train", "infer", "scale", "decode", "checkpoint", "serve")
RENDER_CAMERA = "corner"  # the primary camera of evaluation and collection


def bench_data(config, seconds: float) -> dict:
    # Imports tensorflow, which must stay out of `env`'s process: MuJoCo's EGL renderer segfaults beside it.
    from octo_like.data.throughput import data_throughput

    dataset_config = config.dataset.to_dict()
    parallel = data_throughput(dataset_config, seconds)
    serial = data_throughput(dataset_config, seconds, serial=True)
    return {
        "benchmark": "data",
        "mixture": dataset_config["mixture"],
        "batch_size": dataset_config["batch_size"],
        "cpu_count": os.cpu_count(),
        "parallel": parallel,
        "serial": serial,
        "parallel_over_serial": {key: parallel[key] / serial[key] for key in parallel},
        "frames_per_s_in_batches": parallel["batches_per_s"] * dataset_config["batch_size"],
    }


def fast_render_fps(task: str, image_size: int, seconds: float) -> float:
    from octo_like.eval.envs.metaworld import MetaWorldEnv  # imports mujoco: only where it runs

    env = MetaWorldEnv(task, cameras={"primary": RENDER_CAMERA}, image_size=image_size)
    env.reset(seed=0)
    fps = calls_per_second(env.render_cameras, seconds)
    env.close()
    return fps


def default_render_fps(task: str, image_size: int, seconds: float) -> float:
    import metaworld

    benchmark = metaworld.MT1(task, seed=0)
    env = benchmark.train_classes[task](
        render_mode="rgb_array", camera_name=RENDER_CAMERA, width=image_size, height=image_size
    )
    env.set_task(benchmark.train_tasks[0])
    env.reset(seed=0)
    fps = calls_per_second(env.render, seconds)
    env.close()
    return fps


def physics_steps_per_s(task: str, seconds: float) -> float:
    from octo_like.eval.envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv(task, cameras={})
    env.reset(seed=0)
    env.action_space.seed(0)

    def step():
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset(seed=0)

    steps_per_s = calls_per_second(step, seconds)
    env.close()
    return steps_per_s


def scripted_episodes(task: str, image_size: int, seconds: float) -> tuple[float, float]:
    """(mean wall time, mean steps) of scripted-expert episodes with both cameras, run for `seconds` (at least one)."""
    from octo_like.eval.envs.metaworld import DEFAULT_CAMERAS, MetaWorldEnv

    env = MetaWorldEnv(task, cameras=DEFAULT_CAMERAS, image_size=image_size)
    env.reset(seed=0)  # warm-up: the first render sets up the GL context
    durations, lengths = [], []
    while sum(durations) < seconds:
        start = time.perf_counter()
        env.reset(seed=len(durations))
        while True:
            _, _, terminated, truncated, _ = env.step(env.expert_action())
            if terminated or truncated:
                break
        durations.append(time.perf_counter() - start)
        lengths.append(env.num_steps)
    env.close()
    return float(np.mean(durations)), float(np.mean(lengths))


def bench_env(tasks: list[str], image_size: int, seconds: float) -> dict:
    from octo_like.eval.envs.metaworld import DEFAULT_CAMERAS

    seconds_per_task = seconds / len(tasks)
    fast = np.mean([fast_render_fps(task, image_size, seconds_per_task) for task in tasks])
    default = np.mean([default_render_fps(task, image_size, seconds_per_task) for task in tasks])
    physics = np.mean([physics_steps_per_s(task, seconds_per_task) for task in tasks])
    episode_s, episode_steps = np.mean(
        [scripted_episodes(task, image_size, seconds_per_task) for task in tasks], axis=0
    )
    return {
        "benchmark": "env",
        "tasks": tasks,
        "image_size": image_size,
        "mujoco_gl": os.environ["MUJOCO_GL"],
        "cpu_count": os.cpu_count(),
        "render_fps": {"camera": RENDER_CAMERA, "fast": fast, "default": default, "fast_over_default": fast / default},
        "physics_steps_per_s": physics,
        "scripted_episode": {
            "cameras": list(DEFAULT_CAMERAS.values()),
            "seconds": episode_s,
            "steps": episode_steps,
            "episodes_per_s": 1.0 / episode_s,
        },
    }


def _example_batch(config) -> dict:
    from octo_like.data.mixtures import make_named_mixture  # TensorFlow: kept out of `env`

    data, _ = make_named_mixture(train=True, **config["dataset"])
    return next(data.iterator())


def _model(config: dict, example_batch: dict):
    import jax

    from octo_like.policy.model import PolicyModel

    statistics = {"bench": {"action": {"mean": [0.0] * example_batch["action"].shape[-1]}}}
    return PolicyModel.create(config, example_batch, statistics, jax.random.key(0))


# Dense bf16 peak FLOP/s per chip by `device_kind` substring, the usual denominator of MFU.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v4": 275e12,
    "TPU v6": 918e12,
}


def peak_flops(device) -> float | None:
    return next((flops for kind, flops in PEAK_BF16_FLOPS.items() if kind in device.device_kind), None)


def _first_step_seconds(train_step, make_state, make_batch) -> dict:
    """Seconds from making the device batch (`make_batch`: as train.py, with the instruction
    states) to the result of the jitted `train_step` on it, in a new temporary persistent
    compilation cache: cold (empty: tracing and compilation) and warm (tracing, and the executables
    the cold call wrote), the in-memory caches cleared before each, as two new processes see it."""
    import tempfile

    import jax
    from jax.experimental.compilation_cache import compilation_cache

    def timed() -> float:
        jax.clear_caches()
        state = make_state()
        start = time.perf_counter()
        jax.block_until_ready(train_step(state, make_batch()))
        return time.perf_counter() - start

    user_cache_dir = jax.config.jax_compilation_cache_dir
    with tempfile.TemporaryDirectory() as directory:
        jax.config.update("jax_compilation_cache_dir", directory)
        compilation_cache.reset_cache()  # the cache opens its directory once; reopen it at the new one
        try:
            cold = timed()
            warm = timed()
        finally:
            jax.config.update("jax_compilation_cache_dir", user_cache_dir)
            compilation_cache.reset_cache()
    return {"cold": cold, "warm": warm}


def bench_train(config: dict, seconds: float, compute_dtypes: list[str]) -> dict:
    import resource

    import jax

    from octo_like.train.instruction_states import InstructionStates
    from octo_like.train.optim import frozen_parameters, make_optimizer
    from octo_like.train.state import TrainState
    from octo_like.train.step import COMPUTE_DTYPES, make_train_step
    from octo_like.utils.flops import matmul_flops

    for name in compute_dtypes:  # before any data or model work
        if name not in COMPUTE_DTYPES:
            raise InputError(f"--compute_dtypes entry '{name}'; expected one of {', '.join(COMPUTE_DTYPES)}")
    batch = _example_batch(config)
    model = _model(config, batch)
    optimizer, _ = make_optimizer(model.params, config["optimizer"], config["num_steps"], model.frozen_keys)
    frozen = frozen_parameters(model.params, config["optimizer"], model.frozen_keys)
    host_params = jax.device_get(model.params)  # each dtype's state gets its own buffers: the step donates them

    def make_batch():  # as train.py feeds its step: the frozen encoder's states computed outside it
        instruction_states = InstructionStates.for_model(model)
        train_batch = batch if instruction_states is None else instruction_states(batch)
        return jax.device_put({key: value for key, value in train_batch.items() if key != "dataset_name"})

    device_batch = make_batch()
    device = jax.devices()[0]
    peak = peak_flops(device)
    batch_size = batch["action"].shape[0]
    by_dtype = {}
    for name in compute_dtypes:
        train_step = make_train_step(model.loss, optimizer, frozen=frozen, compute_dtype=COMPUTE_DTYPES[name])
        state = TrainState.create(host_params, optimizer, jax.random.key(1))
        # Compiled once for the timed steps (calling `train_step` would compile again). FLOPs of
        # the matrix products and convolutions of forward, backward and update, counted on the
        # jaxpr: XLA's cost analysis counts a scanned body (scan_layers, micro-batches) once.
        compiled_step = train_step.lower(state, device_batch).compile()
        flops = matmul_flops(train_step, state, device_batch)

        def step():
            nonlocal state
            state, metrics = compiled_step(state, device_batch)
            jax.block_until_ready((state, metrics))

        steps_per_s = calls_per_second(step, seconds, warmup=2)
        if name == compute_dtypes[0]:
            first_step_s = _first_step_seconds(
                train_step, lambda: TrainState.create(host_params, optimizer, jax.random.key(1)), make_batch
            )
        by_dtype[name] = {
            "steps_per_s": steps_per_s,
            "examples_per_s": steps_per_s * batch_size,
            "flops_per_step": flops,
            "mfu": flops * steps_per_s / peak if flops and peak else None,
        }
    leaves = jax.tree_util.tree_leaves(model.params)
    frozen_leaves = [False] * len(leaves) if frozen is None else jax.tree_util.tree_leaves(frozen)
    trained = sum(x.size for x, is_frozen in zip(leaves, frozen_leaves) if not is_frozen)
    result = {
        "benchmark": "train",
        # The from-scratch family names heads and a transformer; the VLA family an action kind.
        "heads": sorted(config["model"].get("heads") or {}),
        "transformer": config["model"].get("transformer"),
        "vla_action": (config["model"].get("vla") or {}).get("action", {}).get("kind"),
        "batch_size": batch_size,
        "device": str(device),
        "device_kind": device.device_kind,
        "peak_bf16_flops": peak,
        "params": sum(x.size for x in leaves),
        "trained_params": trained,  # without the frozen encoders (MiniLM, CLIP)
        "compute_dtypes": by_dtype,
        "first_step_s": {"compute_dtype": compute_dtypes[0], **first_step_s},
        "peak_host_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if {"float32", "bfloat16"} <= set(by_dtype):
        result["bfloat16_over_float32_steps_per_s"] = (
            by_dtype["bfloat16"]["steps_per_s"] / by_dtype["float32"]["steps_per_s"]
        )
    return result


def bench_checkpoint(config: dict, repeats: int) -> dict:
    import tempfile

    import jax
    import orbax.checkpoint as ocp

    from octo_like.policy import release
    from octo_like.train.optim import make_optimizer
    from octo_like.train.state import TrainState
    from octo_like.utils.checksums import tree_checksums

    model = _model(config, _example_batch(config))
    optimizer, _ = make_optimizer(model.params, config["optimizer"], config["num_steps"], model.frozen_keys)
    state = TrainState.create(model.params, optimizer, jax.random.key(1))
    target = release.abstract_tree(model.params)

    def save_plain(manager, step):
        manager.save(
            step,
            args=ocp.args.Composite(params=ocp.args.StandardSave(state.params), state=ocp.args.StandardSave(state)),
        )

    def save_checked(manager, step):
        release.save(manager, step, state.params, state)

    def load_plain(manager, step):
        manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))

    def load_checked(manager, step):
        release.restore_verified(manager, step, "params", target)

    def timed(manager, action, step: int) -> float:
        start = time.perf_counter()
        action(manager, step)
        manager.wait_until_finished()
        return time.perf_counter() - start

    def medians(actions: dict, managers: dict) -> dict:
        """Median seconds per variant; the variants alternate, so that drift in the machine's load
        falls on both alike, and the first round (compilation) is dropped."""
        rounds = [{name: timed(managers[name], action, step) for name, action in actions.items()} for step in steps]
        return {name: float(np.median([times[name] for times in rounds[1:]])) for name in actions}

    steps = range(1, repeats + 2)
    with tempfile.TemporaryDirectory() as plain_dir, tempfile.TemporaryDirectory() as checked_dir:
        managers = {
            "plain": release.checkpoint_manager(plain_dir),
            "checksums": release.checkpoint_manager(checked_dir),
        }
        save = medians({"plain": save_plain, "checksums": save_checked}, managers)
        load = medians({"plain": load_plain, "checksums": load_checked}, managers)
    tree_checksums(state)
    start = time.perf_counter()
    for _ in range(repeats):
        tree_checksums(state)
    pass_s = (time.perf_counter() - start) / repeats
    leaves = jax.tree_util.tree_leaves(state)
    return {
        "benchmark": "checkpoint",
        "transformer": config["model"].get("transformer"),
        "params": sum(x.size for x in jax.tree_util.tree_leaves(model.params)),
        "state_mb": sum(x.nbytes for x in leaves if hasattr(x, "nbytes")) / 2**20,
        "save_s": save,
        "load_params_s": load,
        "save_overhead": save["checksums"] / save["plain"] - 1,
        "load_overhead": load["checksums"] / load["plain"] - 1,
        "checksum_pass_over_state_s": pass_s,
        # The checksums' own cost, free of the noise in the difference of two save times.
        "checksum_pass_over_plain_save": pass_s / save["plain"],
        "repeats": repeats,
    }


def bench_scale(config: dict, fsdp_sizes: list[int], seconds: float) -> dict:
    import jax

    from octo_like.train.mesh import (
        batch_sharding,
        check_batch_size,
        make_mesh,
        param_shardings,
        shard_batch,
        shard_params,
    )
    from octo_like.train.optim import frozen_parameters, make_optimizer
    from octo_like.train.state import TrainState
    from octo_like.train.step import make_train_step

    batch = _example_batch(config)
    model = _model(config, batch)
    optimizer, _ = make_optimizer(model.params, config["optimizer"], config["num_steps"], model.frozen_keys)
    frozen = frozen_parameters(model.params, config["optimizer"], model.frozen_keys)
    host_params = jax.device_get(model.params)  # each mesh gets its own buffers: the step donates them
    results = []
    for fsdp in fsdp_sizes:
        mesh = make_mesh(data=-1, fsdp=fsdp)
        check_batch_size(batch["action"].shape[0], mesh)
        state = shard_params(TrainState.create(host_params, optimizer, jax.random.key(1)), mesh)
        shardings = param_shardings(state, mesh)
        train_step = make_train_step(
            model.loss, optimizer, frozen=frozen, state_shardings=shardings, batch_sharding=batch_sharding(mesh)
        )
        per_device_bytes = sum(
            int(np.prod(sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
            for leaf, sharding in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(shardings))
        )
        device_batch = shard_batch(batch, mesh)

        def step():
            nonlocal state
            state, metrics = train_step(state, device_batch)
            jax.block_until_ready((state, metrics))  # the whole step, not just the loss

        with jax.set_mesh(mesh):  # as in training: the model's activation constraints apply
            steps_per_s = calls_per_second(step, seconds, warmup=2)
        results.append(
            {"mesh": dict(mesh.shape), "per_device_state_bytes": per_device_bytes, "steps_per_s": steps_per_s}
        )
    # fsdp = 1 (pure data parallelism) holds the whole state on every device: the reference of the
    # ratios, known without building that mesh.
    whole_state_bytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(state))
    for result in results:
        result["bytes_over_fsdp1"] = result["per_device_state_bytes"] / whole_state_bytes
    return {
        "benchmark": "scale",
        "devices": len(jax.devices()),
        "batch_size": int(batch["action"].shape[0]),
        "whole_state_bytes": whole_state_bytes,
        "results": results,
    }


def _latency_ms(call, seconds: float) -> dict:
    """p50/p95 of `call()` (blocked until ready) over `seconds`, after one warm-up (compile) call."""
    import jax

    latencies = []

    def timed():
        start = time.perf_counter()
        jax.block_until_ready(call())
        latencies.append(time.perf_counter() - start)

    calls_per_second(timed, seconds, warmup=1)
    latencies_ms = 1000 * np.asarray(latencies[1:])
    return {
        "p50_ms": float(np.percentile(latencies_ms, 50)),
        "p95_ms": float(np.percentile(latencies_ms, 95)),
        "calls": len(latencies_ms),
    }


def _vla_chunk_latencies(config: dict, euler_steps: int | None, seconds: float) -> tuple[dict, dict]:
    """(a VLA config's settings, its chunk latencies by variant): the default sampling on the cache;
    without the cache (the prefix, or the whole sequence, rerun at every Euler step or token) where
    the kind has one; for action tokens also Jacobi decoding with its backbone forward passes."""
    import jax

    batch = _example_batch(config)
    model = _model(config, batch)
    observation = jax.tree_util.tree_map(lambda x: x[:1], batch["observation"])
    task = model.create_tasks(texts=["open the drawer"])
    vla = model.config["model"]["vla"]
    actions = model.module.actions
    given = euler_steps is not None and "num_steps" in actions.sampling_options
    sampling = {"num_steps": euler_steps} if given else {}
    variants = {"with_cache": sampling}
    if "use_cache" in actions.sampling_options:
        variants["without_cache"] = {**sampling, "use_cache": False}
    if "decoding" in actions.sampling_options:
        variants["jacobi"] = {"decoding": "jacobi"}
    latencies = {
        name: _latency_ms(
            lambda options=options: model.sample_actions(observation, task, rng=jax.random.key(0), **options),
            seconds,
        )
        for name, options in variants.items()
    }
    architecture = vla["backbone"]["config"]
    settings = {
        "action": vla["action"]["kind"],
        **({"euler_steps": euler_steps} if sampling else {}),
        "backbone": {
            "size": vla["backbone"].get("size"),
            "checkpoint": vla["backbone"].get("checkpoint"),
            "image_size": architecture["vision"]["image_size"],
            "text_width": architecture["text"]["hidden_size"],
            "text_layers": architecture["text"]["num_layers"],
        },
    }
    if "decoding" in actions.sampling_options:
        _, passes = model.module.apply(
            {"params": model.network_params(model.params)},
            observation,
            task,
            method=lambda network, observation, task: network.actions.jacobi_decode(
                network, *network.actions.token_prefix(network, observation, task)
            ),
        )
        settings["action_tokens"] = actions.num_action_tokens
        for name, latency in latencies.items():
            latency["action_tokens_per_s"] = actions.num_action_tokens / (latency["p50_ms"] / 1000)
        # Greedy decoding: the prefix pass gives token 0, then one pass per further token.
        latencies["with_cache"]["forward_passes"] = actions.num_action_tokens
        latencies["jacobi"]["forward_passes"] = int(passes)
    return settings, latencies


def bench_infer_vla(config: dict, baseline_config: dict | None, euler_steps: int | None, seconds: float) -> dict:
    """A VLA config's chunk latencies (`_vla_chunk_latencies`) side by side, their ratios to the
    cached default, and with `baseline_config` the baseline's default chunk latency and the ratio."""
    import jax

    settings, latencies = _vla_chunk_latencies(config, euler_steps, seconds)
    result = {"benchmark": "infer", "device": str(jax.devices()[0]), "batch_size": 1, **settings, **latencies}
    if "without_cache" in latencies:
        result["cache_speedup"] = latencies["without_cache"]["p50_ms"] / latencies["with_cache"]["p50_ms"]
    if "jacobi" in latencies:
        result["jacobi_speedup"] = latencies["with_cache"]["p50_ms"] / latencies["jacobi"]["p50_ms"]
    if baseline_config is not None:
        baseline_settings, baseline_latencies = _vla_chunk_latencies(baseline_config, euler_steps, seconds)
        result["baseline"] = {**baseline_settings, "with_cache": baseline_latencies["with_cache"]}
        result["speedup_over_baseline"] = baseline_latencies["with_cache"]["p50_ms"] / latencies["with_cache"]["p50_ms"]
    return result


def bench_serve(checkpoint: str, seconds: float) -> dict:
    """A release's chunk latency in-process and through the policy server on localhost (p50/p95,
    batch 1) with their difference (the network's cost per chunk), and requests/s with 1 and 4
    concurrent clients."""
    import concurrent.futures

    from octo_like.eval.policies import load_checkpoint_policy
    from octo_like.serving.client import RemotePolicy
    from octo_like.serving.server import PolicyServer, ServedPolicy

    served = ServedPolicy(load_checkpoint_policy(checkpoint))
    served.warm_up()
    request = served.example_request()
    window, prompt, seed = served.window(request)
    in_process = _latency_ms(lambda: served.infer(window, prompt, seed), seconds)
    with PolicyServer(served, "127.0.0.1", 0).in_background() as server:
        address = f"ws://127.0.0.1:{server.port}"
        clients = [RemotePolicy(address) for _ in range(4)]
        remote = _latency_ms(lambda: clients[0].infer(request), seconds)
        throughput = {}
        for count in (1, 4):
            with concurrent.futures.ThreadPoolExecutor(count) as pool:
                deadline, done = time.perf_counter() + seconds, [0] * count

                def client_loop(index):
                    while time.perf_counter() < deadline:
                        clients[index].infer(request)
                        done[index] += 1

                start = time.perf_counter()
                list(pool.map(client_loop, range(count)))
                throughput[f"{count}_clients"] = sum(done) / (time.perf_counter() - start)
        for client in clients:
            client.close()
    return {
        "benchmark": "serve",
        "checkpoint": checkpoint,
        "family": "vla" if served.policy.model.config["model"].get("vla") is not None else "scratch",
        "in_process": in_process,
        "through_server": remote,
        "network_overhead_ms_p50": remote["p50_ms"] - in_process["p50_ms"],
        "requests_per_s": throughput,
    }


def _token_counts(model, observation: dict, task: dict) -> dict:
    """The transformer's sequence length: task tokens, tokens per timestep (observations and
    readouts) and the whole window's, from shapes alone (nothing runs)."""
    import jax

    module = model.module

    def groups(network):
        task_groups, language_embedding_BC = network.task_groups(task, train=False)
        return task_groups, network.observation_groups(
            observation, task, task_groups, language_embedding_BC, train=False
        )

    task_groups, obs_groups = jax.eval_shape(
        lambda params: module.apply({"params": model.network_params(params)}, method=groups), model.params
    )
    task_tokens = sum(group.tokens.shape[1] for group in task_groups.values())
    per_step = sum(group.tokens.shape[2] for group in obs_groups.values()) + sum(module.readouts.values())
    window = observation["timestep"].shape[1]
    return {"task": task_tokens, "per_timestep": per_step, "window": window, "total": task_tokens + window * per_step}


def _cached_latency_ms(model, observation: dict, task: dict, sampling: dict, seconds: float) -> dict:
    """`_latency_ms` of a control loop with the episode cache: call i sees the window of timesteps
    i .. i + T - 1 (every slot real), so each call after the first encodes only its newest frame."""
    import jax

    window = observation["timestep"].shape[1]
    cache = model.episode_cache(task)
    calls = iter(range(2**31))

    def step():
        first = next(calls)
        timestep_1T = np.arange(first, first + window, dtype=np.int32)[None]
        window_observation = {
            **observation,
            "timestep": timestep_1T,
            "timestep_pad_mask": np.ones_like(timestep_1T, bool),
        }
        return model.sample_actions(window_observation, task, rng=jax.random.key(0), cache=cache, **sampling)

    step()  # the first call of the episode encodes the whole window (and compiles that shape)
    return _latency_ms(step, seconds)


def bench_infer(config: dict, head_entries: list[str], seconds: float) -> dict:
    import jax

    from octo_like.model.heads import head_spec

    batch = _example_batch(config)
    observation = jax.tree_util.tree_map(lambda x: x[:1], batch["observation"])
    horizon, action_dim = batch["action"].shape[2:]
    results = []
    for entry in head_entries:
        name, *options = entry.split(":")
        sampling = {}
        if name == "diffusion" and options:
            sampling["sampler"] = options[0]
            if len(options) > 1:
                sampling["num_inference_steps"] = int(options[1])
        elif name == "flow" and options:
            sampling["num_inference_steps"] = int(options[0])
        model_config = {
            **config["model"],
            "heads": {"action": head_spec(name, action_horizon=horizon, action_dim=action_dim)},
        }
        model = _model({**config, "model": model_config}, batch)
        task = model.create_tasks(texts=["open the drawer"])
        latency = _latency_ms(
            lambda: model.sample_actions(observation, task, rng=jax.random.key(0), **sampling), seconds
        )
        cached = _cached_latency_ms(model, observation, task, sampling, seconds)
        results.append(
            {"head": entry, **latency, "cached": cached, "cache_speedup": latency["p50_ms"] / cached["p50_ms"]}
        )
    result = {
        "benchmark": "infer",
        "device": str(jax.devices()[0]),
        "transformer": config["model"]["transformer"],
        "tokens": _token_counts(model, observation, task),
        "batch_size": 1,
        "results": results,
    }
    clip = model.config["model"].get("clip")
    if clip is not None:
        vision = clip["config"]["vision"]
        result["clip"] = {
            "size": clip.get("size"),
            "checkpoint": clip.get("checkpoint"),
            "image_size": vision["image_size"],
            "patch_size": vision["patch_size"],
            "vision_layers": vision["num_layers"],
            "vision_width": vision["hidden_size"],
        }
    return result


def bench_decode(size: str, prompt_length: int, new_tokens: int, dtype_name: str, seconds: float) -> dict:
    import jax
    import jax.numpy as jnp

    from octo_like.model.language.gemma import GEMMA_SIZES, GemmaForCausalLM

    if size not in GEMMA_SIZES or dtype_name not in ("float32", "bfloat16"):
        raise InputError(
            f"--gemma_size={size} --dtype={dtype_name}; expected one of {', '.join(GEMMA_SIZES)} and float32 or "
            "bfloat16"
        )
    if prompt_length < 1 or new_tokens < 1:
        raise InputError(f"--prompt_length={prompt_length} --new_tokens={new_tokens}; expected positive numbers")
    config = GEMMA_SIZES[size]
    module = GemmaForCausalLM(config)
    ids = jax.random.randint(jax.random.key(0), (1, prompt_length), 0, config.vocab_size)
    mask = jnp.ones_like(ids)
    params = jax.jit(module.init)(jax.random.key(1), ids, mask)["params"]
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.dtype(dtype_name)), params)
    results = {}
    for use_cache in (True, False):
        decode = jax.jit(
            lambda params: module.apply(
                {"params": params}, ids, mask, new_tokens, use_cache, method=GemmaForCausalLM.greedy_decode
            )
        )
        calls = calls_per_second(lambda: jax.block_until_ready(decode(params)), seconds, warmup=1)
        results["with_cache" if use_cache else "without_cache"] = {
            "calls_per_s": calls,
            "tokens_per_s": calls * new_tokens,
        }
    return {
        "benchmark": "decode",
        "device": str(jax.devices()[0]),
        "gemma_size": size,
        "dtype": dtype_name,
        "parameters": sum(x.size for x in jax.tree_util.tree_leaves(params)),
        "prompt_length": prompt_length,
        "new_tokens": new_tokens,
        **results,
        "cache_speedup": results["with_cache"]["tokens_per_s"] / results["without_cache"]["tokens_per_s"],
    }


def main(argv):
    if len(argv) != 2 or argv[1] not in BENCHMARKS:
        raise InputError(f"expected one benchmark name, one of: {', '.join(BENCHMARKS)}; got {argv[1:]}")
    if _SECONDS.value <= 0:
        raise InputError(f"--seconds={_SECONDS.value}; expected a positive number")
    if argv[1] in ("data", "train", "infer", "scale", "checkpoint") and _CONFIG.value is None:
        raise InputError(f"{argv[1]} needs --config, e.g. --config experiments/configs/metaworld_scratch.py:diffusion")
    if argv[1] == "data":
        result = bench_data(_CONFIG.value, _SECONDS.value)
    elif argv[1] == "train":
        result = bench_train(_CONFIG.value.to_dict(), _SECONDS.value, _COMPUTE_DTYPES.value)
    elif argv[1] == "checkpoint":
        if _REPEATS.value < 1:
            raise InputError(f"--repeats={_REPEATS.value}; expected an integer >= 1")
        result = bench_checkpoint(_CONFIG.value.to_dict(), _REPEATS.value)
    elif argv[1] == "scale":
        result = bench_scale(_CONFIG.value.to_dict(), [int(size) for size in _FSDP_SIZES.value], _SECONDS.value)
    elif argv[1] == "infer":
        if _EULER_STEPS.value is not None and _EULER_STEPS.value < 1:  # before the data and the model are built
            raise InputError(f"--euler_steps={_EULER_STEPS.value}; expected a positive number of Euler steps")
        config = _CONFIG.value.to_dict()
        if config["model"].get("vla") is not None:
            baseline = None if _BASELINE_CONFIG.value is None else _BASELINE_CONFIG.value.to_dict()
            result = bench_infer_vla(config, baseline, _EULER_STEPS.value, _SECONDS.value)
        else:
            result = bench_infer(config, _INFER_HEADS.value.split(","), _SECONDS.value)
    elif argv[1] == "serve":
        if not _CHECKPOINT_DIR.value:
            raise InputError("serve needs --checkpoint=RUN_DIR (a release)")
        result = bench_serve(_CHECKPOINT_DIR.value, _SECONDS.value)
    elif argv[1] == "decode":
        result = bench_decode(_GEMMA_SIZE.value, _PROMPT_LENGTH.value, _NEW_TOKENS.value, _DTYPE.value, _SECONDS.value)
    else:
        if _IMAGE_SIZE.value < 1:
            raise InputError(f"--image_size={_IMAGE_SIZE.value}; expected a positive number of pixels")
        result = bench_env(resolve_tasks(_TASKS.value), _IMAGE_SIZE.value, _SECONDS.value)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    run_config_cli(main)
