"""scripts/bench.py train, infer, checkpoint and scale on the synthetic data (JSON shape, no speed asserted): the
benchmark functions in this process, the command line in a process of its own."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from trained_runs import training_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(*args):
    result = subprocess.run(
        [sys.executable, "scripts/bench.py", *args, "--seconds=0.3"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def bench_script():
    """scripts/bench.py as a module: its benchmark functions run in this process, on one model
    compiled once, while the tests below run the command line (flags, JSON on stdout)."""
    spec = importlib.util.spec_from_file_location("bench_script", os.path.join(REPO_ROOT, "scripts", "bench.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_infer_and_scale_benchmarks_report_their_figures(synthetic_data_dir, bench_script):
    config = training_config(
        {"dataset.data_dir": synthetic_data_dir, "dataset.batch_size": 8, "dataset.shuffle_buffer_size": 20}
    )

    def as_printed(result):  # what the command prints: JSON
        return json.loads(json.dumps(result))

    train = as_printed(bench_script.bench_train(config, 0.3, ["float32", "bfloat16"]))
    assert train["batch_size"] == 8 and train["params"] > train["trained_params"] > 0
    assert set(train["compute_dtypes"]) == {"float32", "bfloat16"} and train["peak_host_memory_mb"] > 0
    for figures in train["compute_dtypes"].values():
        assert figures["steps_per_s"] > 0 and figures["examples_per_s"] == figures["steps_per_s"] * 8
        assert figures["flops_per_step"] > 0 and figures["mfu"] is None  # no known peak for a CPU
    first_step = train["first_step_s"]  # in a temporary compilation cache: empty, then filled
    assert first_step["compute_dtype"] == "float32" and first_step["cold"] > 0 and first_step["warm"] > 0
    assert train["bfloat16_over_float32_steps_per_s"] == (
        train["compute_dtypes"]["bfloat16"]["steps_per_s"] / train["compute_dtypes"]["float32"]["steps_per_s"]
    )

    infer = as_printed(bench_script.bench_infer(config, ["l1", "flow:2"], 0.3))
    assert [r["head"] for r in infer["results"]] == ["l1", "flow:2"]
    assert all(0 < r["p50_ms"] <= r["p95_ms"] and r["calls"] > 0 for r in infer["results"])

    checkpoint = as_printed(bench_script.bench_checkpoint(config, 1))
    assert checkpoint["params"] == train["params"] and checkpoint["state_mb"] > 4 * checkpoint["params"] / 2**20
    for figures in (checkpoint["save_s"], checkpoint["load_params_s"]):
        assert set(figures) == {"plain", "checksums"} and min(figures.values()) > 0
    assert checkpoint["save_overhead"] == checkpoint["save_s"]["checksums"] / checkpoint["save_s"]["plain"] - 1
    assert 0 < checkpoint["checksum_pass_over_state_s"] and 0 < checkpoint["checksum_pass_over_plain_save"]

    # One mesh: the ratio's reference, fsdp = 1, is the whole state on each device, known without a run.
    scale = as_printed(bench_script.bench_scale(config, [8], 0.3))
    (result,) = scale["results"]
    assert result["mesh"] == {"data": 1, "fsdp": 8} and result["steps_per_s"] > 0
    # The parameters and Adam's two moments, float32: the trained parameters thrice, the frozen once.
    assert scale["whole_state_bytes"] >= 4 * (train["params"] + 2 * train["trained_params"])
    # Sharding the large arrays over 8 devices leaves well under a quarter per device.
    assert result["bytes_over_fsdp1"] == result["per_device_state_bytes"] / scale["whole_state_bytes"] < 0.25


def test_infer_benchmark_names_the_clip_of_a_text_aware_policy(synthetic_data_dir):
    clip_dir = os.path.join(REPO_ROOT, "tests", "fixtures", "clip_tiny")
    infer = bench(
        "infer",
        "--config=experiments/configs/otter_metaworld.py:text_aware",
        "--heads=l1",
        f"--config.dataset.data_dir={synthetic_data_dir}",
        "--config.dataset.mixture=synthetic",
        "--config.dataset.batch_size=2",
        "--config.dataset.shuffle_buffer_size=4",
        f"--config.clip_checkpoint={clip_dir}",
        "--config.dataset.frame_transform_kwargs.resize_size.primary=(32,32)",
        "--config.dataset.frame_transform_kwargs.resize_size.wrist=(32,32)",
    )
    assert infer["clip"] == {
        "size": "tiny",
        "checkpoint": clip_dir,
        "image_size": 32,
        "patch_size": 8,
        "vision_layers": 2,
        "vision_width": 48,
    }
    assert infer["results"][0]["head"] == "l1" and infer["results"][0]["p50_ms"] > 0


def test_decode_benchmark_compares_the_kv_cache_with_rerunning():
    decode = bench("decode", "--gemma_size=tiny", "--prompt_length=8", "--new_tokens=3")
    assert decode["parameters"] > 0 and decode["new_tokens"] == 3
    for mode in ("with_cache", "without_cache"):
        assert decode[mode]["tokens_per_s"] == decode[mode]["calls_per_s"] * 3 > 0
    assert decode["cache_speedup"] == decode["with_cache"]["tokens_per_s"] / decode["without_cache"]["tokens_per_s"]


def test_infer_benchmark_of_a_vla_config_compares_decoding_with_and_without_the_kv_cache(synthetic_data_dir):
    infer = bench(
        "infer",
        "--config=experiments/configs/vla_tokens.py:bins",
        f"--config.dataset.data_dir={synthetic_data_dir}",
        "--config.dataset.mixture=synthetic",
        "--config.model.vla.action.action_dim=7",
        # One-step chunks: 7 tokens, so that the uncached decoder (unrolled per token) compiles fast.
        "--config.dataset.traj_transform_kwargs.action_horizon=1",
        "--config.model.vla.action.horizon=1",
        "--config.dataset.batch_size=2",
        "--config.dataset.shuffle_buffer_size=4",
    )
    assert infer["action"] == "bins" and infer["action_tokens"] == 7 and infer["backbone"]["image_size"] == 64
    for mode in ("with_cache", "without_cache"):
        figures = infer[mode]
        assert 0 < figures["p50_ms"] <= figures["p95_ms"] and figures["action_tokens_per_s"] == 7 / (
            figures["p50_ms"] / 1000
        )
    assert infer["cache_speedup"] == infer["without_cache"]["p50_ms"] / infer["with_cache"]["p50_ms"]
    # Jacobi decoding (PD-VLA) beside greedy: its latency and backbone forward passes per chunk.
    assert infer["with_cache"]["forward_passes"] == 7 and 1 <= infer["jacobi"]["forward_passes"] <= 7
    assert infer["jacobi_speedup"] == infer["with_cache"]["p50_ms"] / infer["jacobi"]["p50_ms"]


def test_infer_benchmark_times_parallel_decoding_beside_an_autoregressive_baseline(synthetic_data_dir):
    shared = [
        "dataset.data_dir=" + str(synthetic_data_dir),
        "dataset.mixture=synthetic",
        "model.vla.action.action_dim=7",
        "dataset.traj_transform_kwargs.action_horizon=1",
        "model.vla.action.horizon=1",
        "dataset.batch_size=2",
        "dataset.shuffle_buffer_size=4",
    ]
    infer = bench(
        "infer",
        "--config=experiments/configs/vla_parallel.py:bins",
        "--baseline_config=experiments/configs/vla_tokens.py:bins",
        *(f"--config.{override}" for override in shared),
        *(f"--baseline_config.{override}" for override in shared),
    )
    # One forward per chunk: no cache to compare, no tokens to decode one by one.
    assert infer["action"] == "parallel_bins" and "without_cache" not in infer and "jacobi" not in infer
    assert infer["baseline"]["action"] == "bins" and infer["baseline"]["with_cache"]["forward_passes"] == 7
    assert infer["speedup_over_baseline"] == infer["baseline"]["with_cache"]["p50_ms"] / infer["with_cache"]["p50_ms"]
