"""Training and finetuning end to end on the synthetic dataset (8 forced CPU devices): in this
process through octo_like.train.loop (what scripts/train.py and scripts/finetune.py run), and as
a separate process where the test needs one (a run killed with SIGKILL, the command line)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from trained_runs import REPO_ROOT, as_flags, finetune, pretraining, run_script, small_run, train, training_config

from octo_like.utils.errors import InputError


@pytest.fixture
def pretrained(pretrained_run):
    return pretrained_run


def test_train_writes_the_release_format_and_metrics(pretrained):
    names = {path.name for path in pretrained.iterdir()}
    assert {
        "config.json",
        "dataset_statistics.json",
        "example_batch.msgpack",
        "metrics.jsonl",
        "loss.png",
        "tensorboard",
    } <= names
    assert sorted(int(name) for name in names if name.isdigit()) == [10, 20, 30, 40]
    records = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == list(range(2, 41, 2)) and all(np.isfinite(r["train/loss"]) for r in train)
    assert [r["step"] for r in records if "val/loss" in r] == [20, 40]
    statistics = json.loads((pretrained / "dataset_statistics.json").read_text())
    assert statistics["synthetic_rlds/default"]["action"]["normalization_type"] == "normal"
    assert len(statistics["synthetic_rlds/default"]["action"]["mask"]) == 7
    assert statistics["synthetic_rlds/default"]["proprio"]["obs_key"] == "state"  # where inference reads the proprio


def test_finetune_to_a_new_action_space_loads_what_fits_and_trains_only_the_head(
    pretrained, synthetic_data_dir, tmp_path, capsys
):
    from octo_like.policy.model import PolicyModel

    run_dir = tmp_path / "finetuned"
    overrides = {"dataset.mixture": "synthetic_rlds/no_wrist", "model.heads.action.kwargs.action_dim": 2}
    finetune(pretrained, small_run(synthetic_data_dir, run_dir, **overrides), mode="head_mlp_only")
    lines = {
        line.split(":")[0]: line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(("loaded", "new", "dropped"))
    }
    assert "block_transformer" in lines["loaded"] and "head_modules_action" in lines["new"]
    assert lines["dropped"].startswith("dropped: 0 arrays")  # a reshaped head is new, not dropped
    before, after = PolicyModel.load_pretrained(str(pretrained)), PolicyModel.load_pretrained(str(run_dir))
    # The depth given as a flag (trained_runs.one_layer) is the network's and the release's.
    assert before.config["model"]["transformer"]["num_layers"] == 1
    assert [name for name in before.params["block_transformer"] if name.startswith("block_")] == ["block_0"]
    np.testing.assert_array_equal(
        after.params["block_transformer"]["block_0"]["mlp_out"]["kernel"],
        before.params["block_transformer"]["block_0"]["mlp_out"]["kernel"],
    )
    assert after.example_batch["action"].shape[-1] == 2


def test_a_head_that_disagrees_with_the_data_fails_in_one_line(pretrained, synthetic_data_dir, tmp_path):
    """Through the command line: the error is the last line of stderr and the exit status is 2."""
    result = run_script(
        "finetune.py",
        f"--pretrained={pretrained}",
        *as_flags(small_run(synthetic_data_dir, tmp_path / "bad", **{"model.heads.action.kwargs.action_dim": 5})),
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "error: model.heads.action.kwargs.action_dim=5 disagrees with the dataset's 7-d actions", (
        result.stderr[-2000:]
    )


def test_run_killed_with_sigkill_and_resumed_equals_the_uninterrupted_run(
    synthetic_data_dir, tmp_path, pretrained, capsys
):
    """Killed with SIGKILL, a run has no chance to save on the way out: it resumes from its last
    periodic checkpoint (saved asynchronously every 10 steps) and must end bit for bit where the
    same command run in one go (`pretrained`) ends: restored parameters, optimizer state, step and
    rng, and the data stream replayed to the resumed step. (A SIGTERM saves the step it is on and
    resumes through the same path; tests/test_distributed.py stops a run that way.)"""
    from octo_like.policy.model import PolicyModel

    run_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "scripts/train.py", *as_flags(pretraining(synthetic_data_dir, run_dir))],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 600
    while not (run_dir / "10").is_dir():
        assert process.poll() is None and time.time() < deadline, (
            "training ended or stalled before its first checkpoint"
        )
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=600)
    assert process.returncode == -signal.SIGKILL
    saved_steps = sorted(int(path.name) for path in run_dir.iterdir() if path.name.isdigit())
    assert saved_steps and saved_steps[-1] < 40, saved_steps

    train(pretraining(synthetic_data_dir, run_dir))  # resumed here: the same config, in this process
    assert f"resumed from step {saved_steps[-1]}" in capsys.readouterr().out
    # What the killed run logged after its checkpoint was dropped and logged again: one train
    # record per logged step, as if never interrupted.
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "train/loss" in record] == list(range(2, 41, 2))

    ours, reference = PolicyModel.load_pretrained(str(run_dir)), PolicyModel.load_pretrained(str(pretrained))
    for (path, value), (_, expected) in zip(
        jax.tree_util.tree_leaves_with_path(ours.params),
        jax.tree_util.tree_leaves_with_path(reference.params),
        strict=True,
    ):
        np.testing.assert_array_equal(value, expected, err_msg=jax.tree_util.keystr(path))


def test_a_damaged_newest_step_is_moved_aside_retrained_and_saved_again(
    pretrained, synthetic_data_dir, tmp_path, capsys, caplog
):
    """Before: resume fell back to step 30, retrained, then orbax declined to save step 40 (not newer
    than the damaged 40 on disk) while the run printed "checkpoint step 40"."""
    from octo_like.policy.model import PolicyModel

    run_dir = tmp_path / "damaged"
    shutil.copytree(pretrained, run_dir)
    largest = max(
        (path for path in (run_dir / "40" / "state").rglob("*") if path.is_file()), key=lambda path: path.stat().st_size
    )
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])  # a half-copied file

    train(pretraining(synthetic_data_dir, run_dir))
    out = capsys.readouterr().out
    assert "resumed from step 30" in out and "checkpoint step 40, verified" in out
    assert "moved damaged checkpoint step 40" in caplog.text  # an absl warning
    assert (run_dir / "damaged_steps" / "40" / "state").is_dir() and (run_dir / "40" / "checksums").is_dir()
    # The rewritten step is the one the uninterrupted run saved, bit for bit (exact resume).
    ours, reference = PolicyModel.load_pretrained(str(run_dir), step=40), PolicyModel.load_pretrained(str(pretrained))
    for value, expected in zip(
        jax.tree_util.tree_leaves(ours.params), jax.tree_util.tree_leaves(reference.params), strict=True
    ):
        np.testing.assert_array_equal(value, expected)


def test_resuming_with_another_model_fails_in_one_line(pretrained, synthetic_data_dir):
    with pytest.raises(InputError) as error:
        train(small_run(synthetic_data_dir, pretrained, **{"model.readouts.action": 2}))
    assert str(error.value) == (
        f"run directory '{pretrained}' holds checkpoints of another model (model.readouts differs); "
        "expected the same model config to resume, or a new --config.run_dir"
    )


def test_a_run_whose_config_names_only_the_transformer_size_resumes_with_the_dimensions_spelled_out(
    pretrained, synthetic_data_dir, tmp_path
):
    """Runs saved before the configs spelled out the size's dimensions resume with the same command."""
    from octo_like.policy.build import with_action_horizon
    from octo_like.train.loop import check_same_run

    saved = json.loads((pretrained / "config.json").read_text())
    for key in ("token_dim", "num_heads", "mlp_dim"):  # the tiny preset's: what older configs left to the size
        del saved["model"]["transformer"][key]
    (tmp_path / "10").mkdir()
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = training_config(pretraining(synthetic_data_dir, tmp_path))
    # The chunk length filled in from the data, as run_training does before its check.
    horizon = config["dataset"]["traj_transform_kwargs"]["action_horizon"]
    config["model"] = with_action_horizon(config["model"], horizon)
    check_same_run(str(tmp_path), config)
    saved["model"]["transformer"]["size"] = "small"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(InputError, match=r"another model \(model.transformer differs\)"):
        check_same_run(str(tmp_path), config)


def test_resuming_under_another_schedule_fails_in_one_line(pretrained, synthetic_data_dir):
    with pytest.raises(InputError) as error:
        train({**pretraining(synthetic_data_dir, pretrained), "num_steps": 60})
    assert str(error.value) == (
        f"run directory '{pretrained}' was trained with num_steps=40, not 60: resuming would continue under "
        "another learning-rate schedule; expected the same settings, or a new --config.run_dir "
        "(scripts/finetune.py starts a new run from a checkpoint)"
    )
    with pytest.raises(InputError, match="was trained with optimizer.warmup_steps="):
        train({**pretraining(synthetic_data_dir, pretrained), "optimizer.warmup_steps": 7})


def test_otter_config_trains_on_a_clip_checkpoint_and_tokenizes_with_it(synthetic_data_dir, tmp_path):
    from octo_like.hf.clip import load_clip
    from octo_like.policy.model import PolicyModel

    clip_dir = os.path.join(REPO_ROOT, "tests", "fixtures", "clip_tiny")  # 32x32 images, its own BPE tokenizer
    run_dir = tmp_path / "otter"
    overrides = {
        "num_steps": 2,
        "save_interval": 2,
        "eval_interval": 2,
        "log_interval": 1,
        "clip_checkpoint": clip_dir,
        "dataset.mixture": "synthetic",
        "dataset.frame_transform_kwargs.resize_size.primary": (32, 32),
        "dataset.frame_transform_kwargs.resize_size.wrist": (32, 32),
        "model.heads.action.kwargs.action_dim": 7,
    }
    train(small_run(synthetic_data_dir, run_dir, **overrides), "experiments/configs/otter_metaworld.py:text_aware,l1")
    config = json.loads((run_dir / "config.json").read_text())
    assert (
        config["model"]["clip"]["checkpoint"] == clip_dir
        and config["model"]["clip"]["config"]["vision"]["image_size"] == 32
    )
    # The checkpoint's tokenizer (not MiniLM's, whose ids start with [CLS] = 101) tokenized the data,
    # and travels with the release.
    assert (run_dir / "tokenizer.json").read_bytes() == open(os.path.join(clip_dir, "tokenizer.json"), "rb").read()
    model = PolicyModel.load_pretrained(str(run_dir))
    ids = model.example_batch["task"]["language_instruction"]["input_ids"]
    assert int(ids[0, 0]) == load_clip(clip_dir).config.text.bos_token_id and int(ids.max()) < 122
    # Frozen through training: the release holds the checkpoint's weights.
    pretrained = load_clip(clip_dir).params
    for tower in ("vision_model", "text_model"):
        for got, want in zip(
            jax.tree_util.tree_leaves(model.params["clip"][tower]), jax.tree_util.tree_leaves(pretrained[tower])
        ):
            np.testing.assert_array_equal(got, want)
