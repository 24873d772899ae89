"""Training runs for the tests, in the test process (octo_like.train.loop) unless a test needs a
process of its own (a SIGKILL, a two-process job): the run directory and the config are what
scripts/train.py writes and reads, without starting an interpreter and compiling again."""

import os
import subprocess
import sys

from octo_like.train.loop import run_finetuning, run_training
from octo_like.utils.config import load_config, with_overrides

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The L1 head: these runs test the trainer, the release and the run directory, which are the same
# for every head (test_heads and test_policy cover the heads), and it compiles in less time.
CONFIG = "experiments/configs/octo_scratch.py:tiny,l1"


def small_run(data_dir, run_dir, **overrides) -> dict:
    """`--config.*` overrides (as dotted keys) of a few-step run on the synthetic dataset."""
    return {
        "dataset.data_dir": str(data_dir),
        "run_dir": str(run_dir),
        "num_steps": 4,
        "log_interval": 2,
        "eval_interval": 4,
        "eval_batches": 1,
        "save_interval": 4,
        "dataset.batch_size": 8,
        "dataset.shuffle_buffer_size": 20,
        **overrides,
    }


def pretraining(data_dir, run_dir) -> dict:
    """The 40-step run the finetuning, resume and release tests start from (tests/conftest.py)."""
    return small_run(data_dir, run_dir, num_steps=40, save_interval=10, eval_interval=20)


def one_layer(config) -> dict:
    """A one-layer transformer as an override, for a config that has one (the scratch configs): these
    runs test the trainer, the run directory and the release, which do not depend on the depth
    (test_transformer covers the stack), and a 4-step run of the tiny config compiles in 23 s with
    one layer instead of 30 s with four."""
    return {"model.transformer.num_layers": 1} if "num_layers" in config.model.get("transformer", {}) else {}


def training_config(overrides: dict, config_arg: str = CONFIG) -> dict:
    """The config dict scripts/train.py builds from `--config=config_arg` and these overrides."""
    config = load_config(os.path.join(REPO_ROOT, config_arg))
    return with_overrides(config, {**one_layer(config), **overrides}).to_dict()


def train(overrides: dict, config_arg: str = CONFIG):
    return run_training(training_config(overrides, config_arg))


def finetune(pretrained_dir, overrides: dict, mode: str = "full", config_arg: str = CONFIG):
    return run_finetuning(training_config(overrides, config_arg), str(pretrained_dir), mode=mode)


def as_flags(overrides: dict, config_arg: str = CONFIG) -> list[str]:
    """The command-line flags of a config and its overrides, for a run that needs its own process."""
    overrides = {**one_layer(load_config(os.path.join(REPO_ROOT, config_arg))), **overrides}
    return [f"--config={config_arg}", *(f"--config.{key}={value}" for key, value in overrides.items())]


def run_script(script, *args, timeout=900):
    return subprocess.run(
        [sys.executable, f"scripts/{script}", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
