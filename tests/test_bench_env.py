"""`scripts/bench.py env`: Meta-World rendering, physics and episode speed as JSON (figures checked for shape,
never for speed)."""

import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/bench.py", "env", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


def test_bench_env_reports_fast_and_default_rendering_physics_and_episodes():
    result = run_bench("--seconds=0.2", "--tasks=reach")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["benchmark"] == "env" and report["tasks"] == ["reach-v3"] and report["image_size"] == 128
    render = report["render_fps"]
    assert render["camera"] == "corner"
    assert render["fast"] > 0 and render["default"] > 0
    assert render["fast_over_default"] == render["fast"] / render["default"]
    assert report["physics_steps_per_s"] > 0
    episode = report["scripted_episode"]
    assert episode["cameras"] == ["corner", "gripperPOV"]
    assert episode["seconds"] > 0 and 1 <= episode["steps"] <= 500
    assert episode["episodes_per_s"] == 1.0 / episode["seconds"]


def test_bench_env_rejects_an_unknown_task_in_one_line():
    result = run_bench("--seconds=0.2", "--tasks=reach,fly")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown Meta-World task 'fly'" in lines[0], result.stderr
