"""Config loading, override-key checks, argv parsing, and the one-line errors of the scripts/ CLIs."""

import os
import subprocess
import sys

import pytest

from octo_like.utils.config import (
    check_override_keys,
    config_arg_from_argv,
    config_keys,
    load_config,
    override_keys_from_argv,
    with_overrides,
)
from octo_like.utils.errors import InputError

CONFIG_FILE = """
import ml_collections
from ml_collections import config_dict


def get_config(variant=None):
    config = ml_collections.ConfigDict()
    config.variant = variant or "default"
    config.seed = 0
    config.use_ema = False
    config.optimizer = ml_collections.ConfigDict(dict(lr=1e-3, wd=0.1, schedule=dict(warmup_steps=10)))
    config.num_steps = config_dict.placeholder(int)
    config.model = config_dict.FieldReference(None, field_type=dict)
    return config
"""

# A CLI written exactly like the ones in scripts/ (no tensorflow, so it starts fast).
SCRIPT_FILE = """
from absl import app
from ml_collections import config_flags

from octo_like.utils.cli import run_config_cli
from octo_like.utils.errors import InputError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config: path.py[:variant].", lock_config=True)


def main(argv):
    config = _CONFIG.value
    if config.optimizer.lr < 0:
        raise InputError(f"optimizer.lr is {config.optimizer.lr}; expected >= 0")
    if config.optimizer.wd < 0:
        raise RuntimeError("a bug, not bad input")
    print(f"variant={config.variant} lr={config.optimizer.lr} use_ema={config.use_ema}")


if __name__ == "__main__":
    run_config_cli(main)
"""


@pytest.fixture
def config_path(tmp_path) -> str:
    path = tmp_path / "cfg.py"
    path.write_text(CONFIG_FILE)
    return str(path)


def _one_line_error(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


def test_load_config_with_and_without_variant(config_path):
    assert load_config(config_path).variant == "default"
    config = load_config(f"{config_path}:small")
    assert config.variant == "small"
    assert config.optimizer.lr == 1e-3


@pytest.mark.parametrize(
    "body, expected",
    [
        (None, "config file '{path}' not found"),
        ("X = 1\n", "config file '{path}' has no get_config function"),
        (
            "def get_config(variant=None):\n    pass\n",
            "get_config() of '{path}' returned NoneType; expected a ConfigDict",
        ),
    ],
    ids=["missing_file", "no_get_config", "returns_none"],
)
def test_load_config_errors(tmp_path, body, expected):
    path = tmp_path / "bad.py"
    if body is not None:
        path.write_text(body)
    with pytest.raises(InputError) as err:
        load_config(f"{path}:variant")
    assert expected.format(path=path) in str(err.value)
    assert "\n" not in str(err.value)


def test_config_keys_lists_inner_nodes_and_leaves(config_path):
    assert config_keys(load_config(config_path)) == [
        "model",
        "num_steps",
        "optimizer",
        "optimizer.lr",
        "optimizer.schedule",
        "optimizer.schedule.warmup_steps",
        "optimizer.wd",
        "seed",
        "use_ema",
        "variant",
    ]


def test_with_overrides_sets_dotted_keys_on_a_copy_and_refuses_unknown_keys_and_types(config_path):
    config = load_config(config_path)
    changed = with_overrides(config, {"optimizer.schedule.warmup_steps": 3, "num_steps": 7, "optimizer.lr": 1})
    assert changed.optimizer.schedule.warmup_steps == 3 and changed.num_steps == 7 and changed.optimizer.lr == 1.0
    assert config.optimizer.schedule.warmup_steps == 10 and config.num_steps is None  # the original is unchanged
    with pytest.raises(InputError, match=r"^unknown config key 'optimizer.lrr'; closest valid keys: optimizer.lr"):
        with_overrides(config, {"optimizer.lrr": 1.0})
    with pytest.raises(InputError, match=r"^config.seed='zero': .*int") as error:
        with_overrides(config, {"seed": "zero"})
    assert "\n" not in str(error.value)


def test_check_override_keys_accepts_valid_keys(config_path):
    config = load_config(config_path)
    valid = ["optimizer.lr", "optimizer", "optimizer.schedule.warmup_steps", "use_ema", "num_steps"]
    # Below a FieldReference nothing can be checked, so anything counts as existing.
    check_override_keys(config, [*valid, "model.any.depth"])


@pytest.mark.parametrize(
    "keys, expected",
    [
        (["seed", "optimizer.lrr", "bad"], "unknown config key 'optimizer.lrr'; closest valid keys: optimizer.lr, "),
        (["optimiser.lr"], "unknown config key 'optimiser.lr'; closest valid keys: optimizer.lr"),
        (
            ["optimizer.xxxxxxxxxxxxxxxx"],
            "unknown config key 'optimizer.xxxxxxxxxxxxxxxx'; valid keys under 'optimizer': "
            "optimizer.lr, optimizer.schedule, optimizer.wd",
        ),
        (
            ["optimizer.lr.xxxxxxxxxxxxxxxx"],  # below a leaf: the leaf's level is listed
            "valid keys under 'optimizer': optimizer.lr, optimizer.schedule, optimizer.wd",
        ),
        (
            ["xxxxxxxxxxxxxxxx"],
            "valid keys at the top level: model, num_steps, optimizer, seed, use_ema, variant",
        ),
    ],
    ids=["typo", "typo_in_parent", "far_off_child", "below_leaf", "far_off_top"],
)
def test_check_override_keys_rejects_unknown_keys(config_path, keys, expected):
    with pytest.raises(InputError) as err:
        check_override_keys(load_config(config_path), keys)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_override_keys_from_argv():
    argv = [
        "prog.py",
        "data",
        "--config",
        "cfg.py:small",
        "--config.optimizer.lr=1e-4",
        "--config.seed",
        "3",
        "--noconfig.use_ema",
        "-config.optimizer.wd=0",
        "--config.use_ema",  # repeated: reported once
        "--configs.x=1",
        "--other.y=2",
        "--seconds=3",
    ]
    assert override_keys_from_argv(argv) == ["optimizer.lr", "seed", "use_ema", "optimizer.wd"]
    assert override_keys_from_argv(["prog.py", "--exp.a.b=1", "--config.c=2"], flag_name="exp") == ["a.b"]
    assert override_keys_from_argv(["prog.py", "--config=cfg.py"]) == []


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--config=cfg.py:small", "--config.seed=1"], "cfg.py:small"),
        (["data", "--config", "cfg.py", "--seconds=2"], "cfg.py"),
        (["-config=a.py", "--config", "b.py"], "b.py"),
        (["--config.seed=1", "--configs=x.py"], None),
        (["--seconds=2", "--config"], None),
    ],
    ids=["equals", "separate", "last_wins", "absent", "no_value"],
)
def test_config_arg_from_argv(argv, expected):
    assert config_arg_from_argv(["prog.py", *argv]) == expected


def _run_script(tmp_path, config_path, *args):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT_FILE)
    # Run from outside the repository with no PYTHONPATH: `octo_like` is the installed package.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, str(script), "--config", config_path, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_unknown_override_key_is_one_line_error(tmp_path, config_path):
    result = _run_script(tmp_path, f"{config_path}:small", "--config.optimizer.lrr=3")
    assert result.returncode == 2
    error = _one_line_error(result.stderr)
    assert "'optimizer.lrr'" in error and "optimizer.lr," in error
    assert result.stdout == ""


def test_cli_missing_config_file_is_one_line_error(tmp_path):
    result = _run_script(tmp_path, "missing.py:small")
    assert result.returncode == 2
    assert "config file 'missing.py' not found" in _one_line_error(result.stderr)


def test_cli_valid_overrides_run(tmp_path, config_path):
    result = _run_script(tmp_path, f"{config_path}:small", "--config.optimizer.lr", "0.5", "--config.use_ema")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "variant=small lr=0.5 use_ema=True"


def test_cli_input_error_in_main_is_one_line(tmp_path, config_path):
    result = _run_script(tmp_path, config_path, "--config.optimizer.lr=-1")
    assert result.returncode == 2
    assert _one_line_error(result.stderr) == "error: optimizer.lr is -1.0; expected >= 0"


def test_cli_other_exceptions_keep_their_traceback(tmp_path, config_path):
    result = _run_script(tmp_path, config_path, "--config.optimizer.wd=-1")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: a bug, not bad input" in result.stderr


def test_octo_scratch_options_give_octos_layout_and_the_readout_history():
    fused = load_config("experiments/configs/octo_scratch.py:small,fused_goal").to_dict()
    model = fused["model"]
    (primary,) = model["observation_tokenizers"].values()
    assert primary["kwargs"]["fuse_goal"] and primary["kwargs"]["image_size"] == (128, 128)
    assert model["language"] is None and model["task_tokenizers"] == {} and model["readouts"] == {"action": 1}
    assert model["transformer"]["dropout_rate"] == 0.0 and model["transformer"]["history"] == "causal"
    assert fused["optimizer"]["frozen_keys"] == () and fused["dataset"]["frame_transform_kwargs"]["resize_size"][
        "primary"
    ] == (128, 128)
    readout = load_config("experiments/configs/octo_scratch.py:tiny,readout_history,l1").to_dict()
    assert readout["model"]["transformer"]["history"] == "readout" and readout["model"]["language"] is not None
    assert readout["run_dir"] == "runs/octo_scratch_tiny_l1_readout_history"
    with pytest.raises(InputError, match="options from fused_goal, readout_history"):
        load_config("experiments/configs/octo_scratch.py:small,fused")
