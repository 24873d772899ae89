"""The training loop, callable from Python, and finetuning from a release (no flags here).

    from octo_like.train.loop import run_training, run_finetuning
    model = run_training(config_dict)                       # what scripts/train.py runs
    model = run_finetuning(config_dict, "runs/pretrained")  # what scripts/finetune.py runs

Writes the run directory (the release format): config.json, dataset_statistics.json,
example_batch.msgpack, orbax steps <step>/{params,state}, metrics.jsonl, tensorboard/ and loss.png,
and resumes from the latest step of an existing run directory.
"""

import contextlib
import functools
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Callable

import jax
import numpy as np
import tqdm
from absl import logging
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import PartitionSpec

from octo_like.data.mixtures import make_dataset_kwargs_list, make_named_mixture
from octo_like.model.scratch.transformer import match_layer_layout
from octo_like.policy import release
from octo_like.policy.build import (
    declared_action_chunks,
    resolve_model_config,
    with_action_horizon,
    with_transformer_dimensions,
)
from octo_like.policy.model import PolicyModel
from octo_like.policy.registry import RELEASE_CONFIG, read_config_json
from octo_like.train import checkpoint as checkpoint_lib
from octo_like.train import distributed
from octo_like.train.instruction_states import InstructionStates
from octo_like.train.mesh import batch_sharding, check_batch_size, make_mesh, param_shardings, shard_batch
from octo_like.train.metrics import MetricsWriter, check_finite_metrics, plot_losses
from octo_like.train.optim import frozen_parameters, make_optimizer
from octo_like.train.rollout_eval import RolloutEvalSettings, RolloutEvaluator, check_rollout_eval_config
from octo_like.train.run_lock import hold_run_lock
from octo_like.train.state import TrainState
from octo_like.train.step import COMPUTE_DTYPES, make_eval_step, make_train_step
from octo_like.train.validate import check_training_config
from octo_like.utils.errors import InputError
from octo_like.utils.normalization import with_normalization_settings
from octo_like.utils.sharding import place_params


def dataset_statistics_with_settings(dataset_config: dict, statistics: dict) -> dict:
    """Each dataset's statistics plus the normalization type and masks the pipeline used with them."""
    kwargs_list, _ = make_dataset_kwargs_list(
        dataset_config["mixture"], dataset_config["data_dir"], **dataset_config["dataset_kwargs"]
    )
    return {
        kwargs["name"]: with_normalization_settings(
            statistics[kwargs["name"]],
            kwargs.get("action_proprio_normalization_type", "normal"),
            kwargs.get("action_normalization_mask"),
            kwargs.get("proprio_normalization_mask"),
            kwargs.get("proprio_obs_key"),
        )
        for kwargs in kwargs_list
    }


def check_heads_fit_data(config: dict, example_batch: dict) -> None:
    _, _, horizon, action_dim = example_batch["action"].shape
    for horizon_key, declared_horizon, dim_key, declared_dim in declared_action_chunks(config["model"]):
        if declared_dim != action_dim:
            raise InputError(f"{dim_key}={declared_dim} disagrees with the dataset's {action_dim}-d actions")
        if declared_horizon != horizon:
            raise InputError(
                f"{horizon_key}={declared_horizon} disagrees with the data's action chunk of {horizon} "
                "(dataset.traj_transform_kwargs.action_horizon)"
            )


def check_same_run(run_dir: str, config: dict) -> None:
    """Resuming needs the model the checkpoint was trained with and the same learning-rate schedule
    (the schedule is a function of num_steps and the optimizer section: another num_steps would
    silently continue under another schedule): one line naming the first difference."""
    if not release.saved_steps(run_dir) or not os.path.isfile(os.path.join(run_dir, RELEASE_CONFIG)):
        return
    saved_config = read_config_json(run_dir)  # compared, never built: the run's own components may be any
    saved = with_transformer_dimensions(saved_config["model"])
    current = json.loads(json.dumps(resolve_model_config(config["model"]), default=list))
    if saved != current:
        differing = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
        raise InputError(
            f"run directory '{run_dir}' holds checkpoints of another model (model.{differing[0]} differs); "
            "expected the same model config to resume, or a new --config.run_dir"
        )
    schedule = {
        "num_steps": config["num_steps"],
        **{f"optimizer.{key}": value for key, value in config["optimizer"].items()},
    }
    saved_schedule = {
        "num_steps": saved_config.get("num_steps"),
        **{f"optimizer.{key}": value for key, value in saved_config.get("optimizer", {}).items()},
    }
    schedule, saved_schedule = (json.loads(json.dumps(tree, default=list)) for tree in (schedule, saved_schedule))
    differing = sorted(
        key for key in set(schedule) | set(saved_schedule) if schedule.get(key) != saved_schedule.get(key)
    )
    if differing:
        key = differing[0]
        raise InputError(
            f"run directory '{run_dir}' was trained with {key}={saved_schedule.get(key)!r}, not {schedule.get(key)!r}: "
            "resuming would continue under another learning-rate schedule; expected the same settings, "
            "or a new --config.run_dir (scripts/finetune.py starts a new run from a checkpoint)"
        )


def local_dataset_config(dataset_config: dict) -> dict:
    """The `dataset` section for this process: its shard of every dataset and its part of the batch."""
    dataset_kwargs = {
        **dataset_config.get("dataset_kwargs", {}),
        "shard_index": jax.process_index(),
        "num_shards": jax.process_count(),
    }
    return {
        **dataset_config,
        "dataset_kwargs": dataset_kwargs,
        "batch_size": distributed.local_batch_size(dataset_config["batch_size"]),
    }


def run_training(config: dict, init_params: Callable[[PolicyModel], dict] | None = None) -> PolicyModel:
    """Trains `config` (a plain dict); `init_params(model)` may replace the fresh parameters (finetuning).

    With several processes (config `distributed`), each runs this same function: every process
    reads its own shard of the data and feeds its own devices, all take part in the orbax saves,
    and process 0 alone writes the metrics, prints and holds the run directory's lock.
    """
    check_training_config(config)
    check_rollout_eval_config(config)
    horizon = config["dataset"].get("traj_transform_kwargs", {}).get("action_horizon")
    if horizon is not None:  # else PolicyModel.create takes the example batch's
        config = {**config, "model": with_action_horizon(config["model"], horizon)}
    compute_dtype = config.get("compute_dtype", "float32")
    if compute_dtype not in COMPUTE_DTYPES:
        raise InputError(f"compute_dtype='{compute_dtype}'; expected one of {', '.join(COMPUTE_DTYPES)}")
    distributed.initialize(**config.get("distributed", {}))
    mesh = make_mesh(**config.get("mesh", {}))
    check_batch_size(config["dataset"]["batch_size"], mesh)
    check_same_run(config["run_dir"], config)  # before any data or model work: a wrong run directory fails at once
    with contextlib.ExitStack() as lock:
        lock_error = None
        try:
            lock.enter_context(hold_run_lock(config["run_dir"], active=distributed.is_primary()))
        except InputError as error:
            lock_error = error
        distributed.raise_everywhere(lock_error)
        return _train(config, init_params, mesh, COMPUTE_DTYPES[compute_dtype])


def _train(config: dict, init_params: Callable[[PolicyModel], dict] | None, mesh, compute_dtype) -> PolicyModel:
    primary = distributed.is_primary()
    run_dir = config["run_dir"]

    process_dataset_config = local_dataset_config(config["dataset"])
    train_data, statistics = make_named_mixture(train=True, seed=config["seed"], **process_dataset_config)
    # Repeated: `eval_batches` batches even from a validation split smaller than that.
    val_data, _ = make_named_mixture(train=False, repeat=True, seed=config["seed"], **process_dataset_config)
    statistics = dataset_statistics_with_settings(config["dataset"], statistics)
    train_batches = train_data.iterator()
    example_batch = next(train_batches)
    check_heads_fit_data(config, example_batch)

    rng = jax.random.key(config["seed"])
    # Parameters and optimizer state sharded by the config's rules, then by the default FSDP rule
    # (all replicated when fsdp = 1), and created in that layout: a model larger than one device
    # is never whole on one.
    rules = [(pattern, PartitionSpec(*spec)) for pattern, spec in config.get("sharding_rules", [])]
    shardings_of = functools.partial(param_shardings, mesh=mesh, rules=rules)
    model = PolicyModel.create(config, example_batch, statistics, jax.random.fold_in(rng, 0), shardings_of=shardings_of)
    if init_params is not None:
        model.params = place_params(init_params(model), shardings_of(model.params))
    optimizer, schedule = make_optimizer(model.params, config["optimizer"], config["num_steps"], model.frozen_keys)
    frozen = frozen_parameters(model.params, config["optimizer"], model.frozen_keys)
    state = TrainState.create_sharded(model.params, optimizer, jax.random.fold_in(rng, 1), shardings_of)
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(model.params))
    if primary:
        model.write_release_files(
            run_dir
        )  # the run directory tells what it trains from step 0, not from the first save
        print(
            f"model: {num_params / 1e6:.2f}M parameters; {jax.process_count()} process(es), mesh {dict(mesh.shape)}; "
            f"run directory {run_dir}"
        )

    manager = release.checkpoint_manager(
        run_dir, max_to_keep=config.get("max_checkpoints_to_keep"), keep_period=config.get("keep_checkpoint_every")
    )
    if manager.latest_step() is not None:
        state = checkpoint_lib.restore_state(manager, state)
        if primary:
            print(f"resumed from step {int(state.step)}")
    train_step = make_train_step(
        model.loss,
        optimizer,
        frozen=frozen,
        compute_dtype=compute_dtype,
        grad_accumulation_steps=config.get("grad_accumulation_steps", 1),
        state_shardings=jax.tree_util.tree_map(lambda x: x.sharding, state),
        batch_sharding=batch_sharding(mesh),
    )
    eval_step = make_eval_step(model.loss, model.action_mse)
    # The frozen instruction encoder runs once per distinct instruction, outside the step.
    instruction_states = InstructionStates.for_model(model)
    with_states = instruction_states or (lambda batch: batch)
    start_step = int(state.step)
    writer = MetricsWriter(run_dir, active=primary, resumed_step=start_step)
    rollout_settings = RolloutEvalSettings.from_config(config)
    rollouts = None
    if primary and rollout_settings is not None:
        rollouts = RolloutEvaluator(
            run_dir, rollout_settings, lambda step, metrics: writer.write(step, metrics, prefix="rollout/")
        )
    # Exact resume: the pipeline is deterministic for its seed, so replaying it to the resumed
    # step gives the batches the uninterrupted run saw (step k trains on element k of the stream,
    # element 0 being the example batch). Costs the data work of the skipped steps, not training.
    for _ in tqdm.trange(
        max(start_step - 1, 0),
        desc="Replaying the data stream to the resumed step",
        unit="batch",
        disable=start_step <= 1 or not primary,
    ):
        next(train_batches)
    progress = tqdm.tqdm(
        range(start_step, config["num_steps"]),
        initial=start_step,
        total=config["num_steps"],
        desc="Training",
        unit="step",
        disable=not primary,
    )
    window_start, window_steps = time.perf_counter(), 0
    # Under the mesh, the model's activation constraints (octo_like.utils.sharding) apply. The
    # orbax saves in flight are finished however the loop ends (a non-finite loss stops it).
    with (
        jax.set_mesh(mesh),
        distributed.PreemptionNotice() as preemption,
        contextlib.closing(writer),
        contextlib.ExitStack() as finish_saves,
    ):
        finish_saves.callback(manager.wait_until_finished)
        preempted = False
        loop_start = time.perf_counter()
        for step in progress:
            batch = example_batch if step == 0 else next(train_batches)
            state, metrics = train_step(state, shard_batch(with_states(batch), mesh))
            window_steps += 1
            if step == start_step and primary:
                # What a user waits for before training runs: tracing and compilation (or loading
                # them from the persistent cache) and the first step itself.
                jax.block_until_ready(state)
                cache = jax.config.jax_compilation_cache_dir or "off"
                progress.write(
                    f"first step: {time.perf_counter() - loop_start:.1f} s (compilation included; "
                    f"compilation cache: {cache})"
                )
            if (step + 1) % config["log_interval"] == 0:
                metrics = jax.device_get(metrics)
                check_finite_metrics(step + 1, metrics, batch)
                steps_per_s = window_steps / (time.perf_counter() - window_start)
                writer.write(
                    step + 1, {**metrics, "learning_rate": schedule(step), "steps_per_s": steps_per_s}, prefix="train/"
                )
                progress.set_postfix(loss=f"{float(metrics['loss']):.4f}", steps_per_s=f"{steps_per_s:.1f}")
                window_start, window_steps = time.perf_counter(), 0
                if rollouts is not None:
                    rollouts.poll()
            if (step + 1) % config["eval_interval"] == 0 or step + 1 == config["num_steps"]:
                val_batches = itertools.islice(val_data.iterator(), config["eval_batches"])
                val_metrics = [
                    jax.device_get(eval_step(state.params, shard_batch(with_states(batch), mesh), jax.random.key(step)))
                    for batch in val_batches
                ]
                if val_metrics:
                    writer.write(
                        step + 1, {key: np.mean([m[key] for m in val_metrics]) for key in val_metrics[0]}, prefix="val/"
                    )
                else:
                    logging.warning(
                        "the validation split holds less than one batch: no validation metrics at step %d", step + 1
                    )
            preempted = preemption.reached(step + 1)
            if (step + 1) % config["save_interval"] == 0 or step + 1 == config["num_steps"] or preempted:
                # The metrics of this very step are checked too (a host sync, as the save is anyway):
                # a non-finite step is never saved, whatever the log interval.
                check_finite_metrics(step + 1, jax.device_get(metrics), batch)
                model.save_pretrained(step + 1, run_dir, params=state.params, manager=manager, state=state)
                if rollouts is not None:
                    rollouts.saved(step + 1)
            if preempted:
                if primary:
                    print(f"stopped by SIGTERM after step {step + 1}; saved it: the same command resumes")
                break
        if rollouts is not None and not preempted:
            manager.wait_until_finished()
            rollouts.wait()  # the last success belongs in the metrics written below
    last_step = manager.latest_step()
    if last_step is not None:
        release.check_step_saved(manager, last_step, state.params)
    if primary:
        plot_losses(run_dir)
        saved = f"checkpoint step {last_step}, verified" if last_step is not None else "no checkpoint"
        print(f"wrote {run_dir} (metrics.jsonl, loss.png, {saved})")
    model.params = state.params
    return model


# Which parameters a finetuning mode trains (glob patterns of parameter paths; None: all but the
# frozen encoders).
TRAINABLE_KEYS = {
    "full": None,
    "head_only": ("head_modules_*", "block_transformer/readout_*"),
    "head_mlp_only": ("head_modules_*",),
}


def merge_pretrained(fresh: dict, pretrained: dict) -> tuple[dict, dict[str, list[str]]]:
    """Fresh parameters with every (path, shape) match taken from `pretrained`, its transformer
    layers stacked or split to the fresh `scan_layers` layout first; and the report."""
    fresh_flat = flatten_dict(fresh, sep="/")
    pretrained_flat = match_layer_layout(flatten_dict(pretrained, sep="/"), fresh_flat)
    report = {"loaded": [], "new": [], "dropped": sorted(set(pretrained_flat) - set(fresh_flat))}
    merged = {}
    for path, value in fresh_flat.items():
        match = path in pretrained_flat and np.shape(pretrained_flat[path]) == np.shape(value)
        merged[path] = pretrained_flat[path] if match else value
        report["loaded" if match else "new"].append(path)
    return unflatten_dict(merged, sep="/"), report


def summarize(paths: list[str]) -> str:
    """Parameter paths counted by their top-level module."""
    counts = Counter(path.split("/")[0] for path in paths)
    return ", ".join(f"{module} ({count})" for module, count in sorted(counts.items())) or "none"


def run_finetuning(
    config: dict, pretrained_dir: str, pretrained_step: int | None = None, mode: str = "full"
) -> PolicyModel:
    """Trains `config` starting from the release in `pretrained_dir`.

    The model is built from `config`; every parameter whose path and shape match the release is
    loaded from it, the rest keep their fresh initialization, and released parameters the new
    model has no place for are dropped (the three groups are printed). `mode` is a TRAINABLE_KEYS
    entry. The run directory records where it started (config `finetuned_from`).
    """
    if mode not in TRAINABLE_KEYS:
        raise InputError(f"finetuning mode '{mode}'; expected one of {', '.join(TRAINABLE_KEYS)}")
    if not os.path.isdir(pretrained_dir):
        raise InputError(f"pretrained '{pretrained_dir}' is not a directory; expected a released run directory")
    check_training_config(config)  # before the release loads
    pretrained = PolicyModel.load_pretrained(pretrained_dir, step=pretrained_step)
    config = {
        **config,
        "optimizer": dict(config["optimizer"]),
        "finetuned_from": {"run_dir": os.path.abspath(pretrained_dir), "step": pretrained_step, "mode": mode},
    }
    if TRAINABLE_KEYS[mode] is not None:
        config["optimizer"]["trainable_keys"] = TRAINABLE_KEYS[mode]

    def init_params(model: PolicyModel) -> dict:
        params, report = merge_pretrained(model.params, pretrained.params)
        if distributed.is_primary():
            for group in ("loaded", "new", "dropped"):
                print(f"{group}: {len(report[group])} arrays: {summarize(report[group])}")
        return params

    return run_training(config, init_params=init_params)
