"""Guards of a training run: config ranges checked before any work, one writer per run directory,
and a run that stops at the first non-finite metric without saving it."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from trained_runs import REPO_ROOT, as_flags, run_script, small_run, train

from octo_like.train.metrics import check_finite_metrics
from octo_like.train.run_lock import LOCK_FILE, hold_run_lock
from octo_like.train.validate import check_training_config
from octo_like.utils.config import load_config
from octo_like.utils.errors import InputError


def valid_config() -> dict:
    return load_config("experiments/configs/metaworld_scratch.py:diffusion").to_dict()


@pytest.mark.parametrize(
    "config_arg",
    [
        "metaworld_scratch.py:diffusion",
        "octo_scratch.py:tiny",
        "octo_scratch.py:small",
        "vla_tokens.py:bins",
        "vla_flow.py:adarms",
        "otter_metaworld.py:text_aware",
        "metaworld_mt10.py",
    ],
)
def test_the_shipped_configs_are_in_range(config_arg):
    check_training_config(load_config(f"experiments/configs/{config_arg}").to_dict())


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("dataset.batch_size", 0, "an integer >= 1"),
        ("save_interval", 0, "an integer >= 1"),
        ("num_steps", -5, "an integer >= 1"),
        ("log_interval", True, "an integer >= 1"),
        ("eval_batches", -1, "an integer >= 0"),
        ("dataset.traj_transform_kwargs.window_size", 0, "an integer >= 1"),
        ("dataset.traj_transform_kwargs.action_horizon", 0, "an integer >= 1"),
        ("optimizer.learning_rate", float("nan"), "a finite number > 0"),
        ("optimizer.learning_rate", -1e-4, "a finite number > 0"),
        ("optimizer.final_lr_fraction", 1.5, "a number in [0, 1]"),
        ("mesh.fsdp", 0, "an integer >= 1, or -1 for all remaining devices"),
        ("mesh.data", -2, "an integer >= 1, or -1 for all remaining devices"),
        ("max_checkpoints_to_keep", 0, "an integer >= 1 or None"),
    ],
)
def test_an_out_of_range_number_is_one_line_naming_key_value_and_range(key, value, expected):
    config = valid_config()
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = value
    with pytest.raises(InputError) as error:
        check_training_config(config)
    assert str(error.value) == f"config.{key}={value!r} is out of range; expected {expected}"


def test_the_run_lock_names_its_holder_and_dies_with_it(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from octo_like.train.run_lock import hold_run_lock
        with hold_run_lock({str(run_dir)!r}):
            print("locked", flush=True)
            time.sleep(600)
    """),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError) as error:
            with hold_run_lock(str(run_dir)):
                pass
        message = str(error.value)
        assert f"run directory '{run_dir}' is in use by another training run (pid {holder.pid} on host " in message
        assert "\n" not in message and (run_dir / LOCK_FILE).is_file()
    finally:
        holder.kill()
        holder.wait()
    # Killed, the holder leaves no stale lock: the kernel released it with the process.
    (run_dir / "metrics.jsonl").write_text("{}\n")
    with hold_run_lock(str(run_dir)):
        assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert sorted(os.listdir(run_dir)) == ["metrics.jsonl"]  # the lock file goes, what the run wrote stays


def test_a_run_that_wrote_nothing_leaves_no_directory_and_an_unwritable_one_is_one_line(tmp_path):
    with pytest.raises(RuntimeError):
        with hold_run_lock(str(tmp_path / "new")):
            raise RuntimeError("failed before writing anything")
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(
        InputError, match=r"^cannot write the run directory '.*/file/run': Not a directory; expected a writable"
    ):
        with hold_run_lock(str(tmp_path / "file" / "run")):
            pass


def test_check_finite_names_the_step_the_first_bad_metric_and_the_datasets():
    batch = {"dataset_name": np.array([b"bridge", b"metaworld/mt10", b"bridge"], dtype=object)}
    check_finite_metrics(7, {"loss": np.float32(0.5), "grad_norm": np.float32(1.0)}, batch)
    with pytest.raises(
        InputError, match=r"^training stopped at step 7: train/grad_norm is nan on a batch from bridge, metaworld/mt10;"
    ):
        check_finite_metrics(
            7, {"loss": np.float32(0.5), "grad_norm": np.float32(np.nan), "action_mse": np.float32(np.inf)}, batch
        )


def test_train_fails_before_any_work_on_a_bad_number_or_a_locked_run_dir(synthetic_data_dir, tmp_path):
    result = run_script("train.py", *as_flags(small_run(synthetic_data_dir, tmp_path / "run", save_interval=0)))
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == "error: config.save_interval=0 is out of range; expected an integer >= 1"
    )
    assert not (tmp_path / "run").exists()  # no run directory stub
    with hold_run_lock(str(tmp_path / "locked")):
        result = run_script("train.py", *as_flags(small_run(synthetic_data_dir, tmp_path / "locked")))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: run directory '{tmp_path / 'locked'}' is in use by another training run (pid {os.getpid()} "
            "on host "
        )
    )


def diverging_run(data_dir, run_dir, save_interval: int, warmup_steps: int) -> dict:
    """Six steps at a learning rate of 1e30, unclipped: the parameters overflow within two steps."""
    return small_run(
        data_dir,
        run_dir,
        num_steps=6,
        log_interval=1,
        save_interval=save_interval,
        **{"optimizer.learning_rate": 1e30, "optimizer.warmup_steps": warmup_steps, "optimizer.clip_gradient": 0.0},
    )


def test_a_diverging_run_stops_at_the_first_non_finite_step_and_keeps_the_last_good_checkpoint(
    synthetic_data_dir, tmp_path
):
    from octo_like.policy.model import PolicyModel

    # The learning rate warms up from 0: step 1 changes nothing (and is saved), step 2 explodes.
    run_dir = tmp_path / "diverged"
    with pytest.raises(InputError, match=r"^training stopped at step 2: train/.*synthetic_rlds/default"):
        train(diverging_run(synthetic_data_dir, run_dir, save_interval=1, warmup_steps=3))
    assert sorted(int(name) for name in os.listdir(run_dir) if name.isdigit()) == [1]
    model = PolicyModel.load_pretrained(str(run_dir))  # verified against its checksums
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(model.params))


def test_the_run_directory_is_a_release_but_the_parameters_from_step_0(synthetic_data_dir, tmp_path):
    # Diverges at step 2, long before the first save: what the run trains is on disk anyway.
    run_dir = tmp_path / "early"
    with pytest.raises(InputError, match=r"^training stopped at step [12]: "):
        train(diverging_run(synthetic_data_dir, run_dir, save_interval=6, warmup_steps=0))
    names = set(os.listdir(run_dir))
    assert {"config.json", "dataset_statistics.json", "example_batch.msgpack"} <= names
    assert not [name for name in names if name.isdigit()]
    assert json.loads((run_dir / "config.json").read_text())["num_steps"] == 6
    assert "synthetic_rlds/default" in json.loads((run_dir / "dataset_statistics.json").read_text())
