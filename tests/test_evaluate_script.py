"""scripts/evaluate.py end to end, as a user runs it."""

import json
import os
import shutil
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/evaluate.py", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )


def test_scripted_evaluation_writes_results_table_chart_episodes_and_videos(tmp_path):
    output_dir = tmp_path / "eval"
    result = evaluate(
        "--policy=scripted",
        "--tasks=reach",
        "--episodes=2",
        "--videos_per_task=1",
        "--workers=1",
        "--image_size=48",
        f"--output_dir={output_dir}",
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((output_dir / "results.json").read_text())
    assert results["mean_success_rate"] == 1.0
    assert results["tasks"]["reach-v3"]["episodes"] == 2 and results["tasks"]["reach-v3"]["ci95"][1] == 1.0
    assert results["settings"]["policy"] == "scripted" and results["settings"]["seed"] == 0
    episodes = [json.loads(line) for line in (output_dir / "episodes.jsonl").read_text().splitlines()]
    assert [e["index"] for e in episodes] == [0, 1] and all(e["success"] for e in episodes)
    assert "| reach-v3 | 1.00 |" in (output_dir / "results.md").read_text()
    assert "| reach-v3 | 1.00 |" in result.stdout
    assert (output_dir / "success_rates.png").stat().st_size > 1000
    assert [p.name for p in (output_dir / "videos" / "reach-v3").iterdir()] == ["episode_0.mp4"]


def test_heldout_instructions_round_trip_through_a_file(tmp_path):
    path = tmp_path / "heldout.json"
    result = evaluate("--tasks=reach,drawer-open", f"--write_heldout_instructions={path}")
    assert result.returncode == 0, result.stderr
    assert json.loads(path.read_text()) == {
        "reach-v3": ["put the hand at the target"],
        "drawer-open-v3": ["pull out the drawer"],
    }
    result = evaluate(
        "--policy=random",
        "--tasks=reach",
        "--episodes=1",
        "--max_episode_steps=5",
        f"--instructions={path}",
        f"--output_dir={tmp_path / 'eval'}",
    )
    assert result.returncode == 0, result.stderr
    episode = json.loads((tmp_path / "eval" / "episodes.jsonl").read_text())
    assert episode["instruction"] == "put the hand at the target" and episode["length"] == 5


def test_a_checkpoint_renders_at_its_training_size_and_takes_the_heldout_paraphrases(tmp_path):
    release = "tests/fixtures/release_a34613f"  # a 32x32 primary camera
    result = evaluate(
        "--policy=checkpoint",
        f"--checkpoint={release}",
        "--tasks=reach,drawer-open",
        "--episodes=1",
        "--max_episode_steps=3",
        "--workers=1",
        "--instructions=heldout",
        f"--output_dir={tmp_path / 'eval'}",
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["settings"]["image_size"] == 32 and results["settings"]["instructions"] == "heldout"
    episodes = [json.loads(line) for line in (tmp_path / "eval" / "episodes.jsonl").read_text().splitlines()]
    assert [episode["instruction"] for episode in episodes] == ["put the hand at the target", "pull out the drawer"]


def test_bad_input_fails_in_one_line_before_any_episode(tmp_path):
    output_dir = tmp_path / "out"
    empty_run, unsaved_run = tmp_path / "empty_run", tmp_path / "unsaved_run"
    empty_run.mkdir()
    unsaved_run.mkdir()  # a run killed before its first save: release files, no step
    for name in ("config.json", "dataset_statistics.json", "example_batch.msgpack"):
        (unsaved_run / name).write_text("{}")
    attack_run = tmp_path / "attack_run"  # a saved step, and a config that would run a command
    shutil.copytree(unsaved_run, attack_run)
    (attack_run / "1").mkdir()
    attack = {"module": "os", "name": "system", "args": [f"touch {tmp_path / 'pwned'}"], "kwargs": {}}
    (attack_run / "config.json").write_text(json.dumps({"model": {"heads": {"action": attack}}}))
    checkpoint = ("--policy=checkpoint", f"--output_dir={output_dir}")
    cases = {
        (
            "--tasks=reach,fly",
            f"--output_dir={output_dir}",
        ): "error: unknown Meta-World task 'fly'; expected a task set (mt10,",
        (*checkpoint, f"--checkpoint={tmp_path / 'nope'}"): "is not a directory; expected a run directory",
        (
            *checkpoint,
            f"--checkpoint={empty_run}",
        ): f"error: '{empty_run}' is not a run directory: it has no config.json",
        (
            *checkpoint,
            f"--checkpoint={unsaved_run}",
        ): f"error: run directory '{unsaved_run}' has no saved checkpoint step",
        (
            *checkpoint,
            f"--checkpoint={attack_run}",
        ): "model.heads.action names 'os:system', which is not a registered component",
        (
            "--tasks=reach",
            "--instructions=/no/such.json",
            f"--output_dir={output_dir}",
        ): "--instructions file '/no/such.json' not found",
        ("--tasks=reach",): "error: --output_dir is required",
    }
    for args, message in cases.items():
        result = evaluate(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
    # Nothing written: no output directory, the run directories untouched.
    assert sorted(os.listdir(tmp_path)) == ["attack_run", "empty_run", "unsaved_run"] and not any(empty_run.iterdir())
    assert sorted(os.listdir(unsaved_run)) == ["config.json", "dataset_statistics.json", "example_batch.msgpack"]
