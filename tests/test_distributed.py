"""Two processes on localhost joined by jax.distributed (gloo CPU collectives) train like one."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from trained_runs import as_flags

from octo_like.policy import release
from octo_like.train import distributed
from octo_like.utils.errors import InputError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO_ROOT, "tests", "distributed_worker.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def xla_flags_with_devices(devices: int) -> str:
    """This session's XLA flags (tests/conftest.py) with another forced host device count."""
    others = [flag for flag in os.environ["XLA_FLAGS"].split() if "host_platform_device_count" not in flag]
    return " ".join([f"--xla_force_host_platform_device_count={devices}", *others])


def start_worker(out_dir, process_id, num_processes, port, devices):
    env = {**os.environ, "XLA_FLAGS": xla_flags_with_devices(devices)}
    return subprocess.Popen(
        [sys.executable, WORKER, str(out_dir), str(process_id), str(num_processes), str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process):
    try:
        _, stderr = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, stderr[-3000:]


def test_two_processes_train_and_save_like_one_process(tmp_path):
    single, multi = tmp_path / "one_process", tmp_path / "two_processes"
    port = free_port()
    workers = [start_worker(single, 0, 1, 0, devices=4)]
    workers += [start_worker(multi, i, 2, port, devices=2) for i in range(2)]
    for worker in workers:
        finish(worker)

    reference, result = np.load(single / "result.npz"), np.load(multi / "result.npz")
    # Each process held only its half of the 4 devices, and the kernels were split over fsdp=2.
    np.testing.assert_array_equal(result["kernel_shard_shape"], [32, 32])
    assert set(result.files) == set(reference.files) and len(result.files) > 10
    # The cross-process (gloo) all-reduces may sum in another order than the in-process ones:
    # float32 rounding only.
    np.testing.assert_allclose(result["losses"], reference["losses"], rtol=1e-5)
    for name in reference.files:
        np.testing.assert_allclose(result[name], reference[name], rtol=0, atol=1e-5, err_msg=name)

    # The checkpoint both processes wrote together restores in one process, onto one device.
    params_like = {name: reference[name] for name in reference.files if name not in ("losses", "kernel_shard_shape")}
    manager = release.checkpoint_manager(str(multi / "checkpoints"))
    assert manager.all_steps() == [3]
    restored = release.restore_params(str(multi / "checkpoints"), _nested(params_like))[0]
    for name, value in params_like.items():
        np.testing.assert_array_equal(_lookup(restored, name), result[name], err_msg=name)


def _nested(flat: dict) -> dict:
    tree = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = jax.ShapeDtypeStruct(value.shape, value.dtype)
    return tree


def _lookup(tree: dict, name: str):
    for key in name.split("."):
        tree = tree[key]
    return np.asarray(tree)


@pytest.mark.parametrize(
    "settings, expected",
    [
        (
            dict(num_processes=2, process_id=1),
            "distributed.num_processes=2 / process_id=1 need distributed.coordinator_address",
        ),
        (
            dict(coordinator_address="10.0.0.1", num_processes=2, process_id=0),
            "distributed.coordinator_address='10.0.0.1': expected 'host:port'",
        ),
        (
            dict(coordinator_address="10.0.0.1:1234", process_id=0),
            "distributed.num_processes=None: expected a positive integer",
        ),
        (
            dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=2),
            "distributed.process_id=2: expected an integer in [0, num_processes=2)",
        ),
    ],
)
def test_bad_distributed_settings_fail_in_one_line_before_connecting(settings, expected):
    with pytest.raises(InputError) as excinfo:
        distributed.initialize(**settings)
    assert str(excinfo.value).startswith(expected) and "\n" not in str(excinfo.value)


def test_single_process_needs_no_initialization():
    distributed.initialize()  # no coordinator, not auto: nothing happens
    assert not jax.distributed.is_initialized()
    assert distributed.is_primary() and distributed.local_batch_size(8) == 8


def test_train_script_on_two_processes_stops_together_when_one_is_preempted(synthetic_data_dir, tmp_path):
    """scripts/train.py as a 2-process job (2 devices each, mesh data=2 x fsdp=2); SIGTERM reaches
    process 1 only, and both processes agree on the step to save and stop at."""
    from octo_like.policy.model import PolicyModel

    run_dir, port = tmp_path / "run", free_port()
    common = [
        "scripts/train.py",
        *as_flags(  # the tests' training config (tests/trained_runs.py)
            {
                "dataset.data_dir": synthetic_data_dir,
                "run_dir": run_dir,
                "num_steps": 200,
                "log_interval": 2,
                "eval_interval": 1000,
                "save_interval": 1000,
                "dataset.batch_size": 8,
                "dataset.shuffle_buffer_size": 20,
                "mesh.fsdp": 2,
                "distributed.coordinator_address": f"127.0.0.1:{port}",
                "distributed.num_processes": 2,
            }
        ),
    ]
    env = {**os.environ, "XLA_FLAGS": xla_flags_with_devices(2)}
    processes = [
        subprocess.Popen(
            [sys.executable, *common, f"--config.distributed.process_id={i}"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        deadline = time.time() + 600
        while not (run_dir / "metrics.jsonl").exists() or not (run_dir / "metrics.jsonl").read_text().strip():
            assert all(p.poll() is None for p in processes) and time.time() < deadline, (
                "training ended or stalled before its first log"
            )
            time.sleep(0.2)
        processes[1].send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=600) for p in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    stdout_0, stdout_1 = outputs[0][0], outputs[1][0]
    assert "2 process(es), mesh {'data': 2, 'fsdp': 2}" in stdout_0
    saved_step = int(stdout_0.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert 2 <= saved_step < 200 and "stopped by SIGTERM" not in stdout_1  # process 0 alone prints
    # One step directory, written by both processes together; metrics written once per step.
    assert sorted(p.name for p in run_dir.iterdir() if p.name.isdigit()) == [str(saved_step)]
    logged_steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged_steps == sorted(set(logged_steps)) and logged_steps[-1] <= saved_step
    # The release of a 2-process run loads in one process (here: a test process of 8 devices).
    model = PolicyModel.load_pretrained(str(run_dir))
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(model.params))


def test_one_process_preemption_notice_catches_sigterm_and_restores_the_handler():
    previous = signal.getsignal(signal.SIGTERM)
    with distributed.PreemptionNotice() as notice:
        assert not notice.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)  # the default handler would end the test process
        deadline = time.time() + 10
        while not notice.reached(2):
            assert time.time() < deadline
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) is previous
