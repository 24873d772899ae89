"""Closed-loop success tracked during training: rollouts of saved steps in a separate process,
logged beside the losses."""

import json

import pytest
from trained_runs import train

from data_pipelines.metaworld.builder import build
from data_pipelines.metaworld.collect import CollectionSettings
from octo_like.train.rollout_eval import check_rollout_eval_config
from octo_like.utils.config import load_config
from octo_like.utils.errors import InputError

CONFIG = "experiments/configs/metaworld_mt10.py:wrist=off"


def test_rollout_eval_is_off_by_default_and_a_bad_section_is_one_line():
    config = load_config(CONFIG).to_dict()
    check_rollout_eval_config(config)  # tasks unset: off
    config["rollout_eval"].update(tasks="reach", interval=750)
    with pytest.raises(
        InputError, match=r"^rollout_eval.interval=750 is not a multiple of save_interval=500; expected rollouts"
    ):
        check_rollout_eval_config(config)
    config["rollout_eval"].update(tasks="reach,fly", interval=1000)
    with pytest.raises(InputError, match=r"unknown Meta-World task 'fly'"):
        check_rollout_eval_config(config)


def test_training_logs_the_success_of_saved_steps_beside_the_losses(tmp_path, capsys):
    data_dir = str(tmp_path / "data")
    build(
        data_dir,
        "rollout",
        CollectionSettings(tasks=("reach-v3",), episodes_per_task=2, image_size=32),
        val_fraction=0.5,
        workers=1,
    )
    run_dir = tmp_path / "run"
    overrides = {
        "dataset.mixture": "metaworld/rollout",
        "dataset.data_dir": data_dir,
        "run_dir": str(run_dir),
        "num_steps": 4,
        "save_interval": 2,
        "log_interval": 1,
        "eval_interval": 4,
        "eval_batches": 1,
        "dataset.batch_size": 8,
        "dataset.shuffle_buffer_size": 10,
        "rollout_eval.tasks": "reach",
        "rollout_eval.episodes": 2,
        "rollout_eval.interval": 2,
        "rollout_eval.max_episode_steps": 6,
    }
    train(overrides, CONFIG)
    assert "rollout evaluation of step 4: mean success 0.00 (2 episodes per task)" in capsys.readouterr().out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rollouts = sorted((record["step"], record) for record in records if "rollout/mean_success" in record)
    # Step 2 may be skipped only if step 4 was saved while it still ran; the last step is always evaluated.
    assert [step for step, _ in rollouts][-1] == 4 and {step for step, _ in rollouts} <= {2, 4}
    assert all(record["rollout/reach-v3"] == record["rollout/mean_success"] == 0.0 for _, record in rollouts)
    for step, _ in rollouts:
        results = json.loads((run_dir / "rollout_eval" / str(step) / "results.json").read_text())
        assert results["tasks"]["reach-v3"]["episodes"] == 2 and results["settings"]["step"] == step
        assert results["settings"]["max_episode_steps"] == 6
        episodes = (run_dir / "rollout_eval" / str(step) / "episodes.jsonl").read_text().splitlines()
        assert [json.loads(line)["length"] for line in episodes] == [6, 6]
    assert (run_dir / "loss.png").stat().st_size > 1000
