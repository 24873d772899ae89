"""A release is data, never code: its config.json may name only registered components, and the check
runs before anything named in it is imported or called. The registry covers every shipped config."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from octo_like.model.heads import HEADS
from octo_like.policy import registry
from octo_like.policy.model import PolicyModel
from octo_like.policy.registry import RELEASE_COMPONENTS, check_release_config
from octo_like.utils import spec
from octo_like.utils.config import load_config
from octo_like.utils.errors import InputError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE_FIXTURE = os.path.join(REPO_ROOT, "tests", "fixtures", "release_a34613f")  # small, no language encoder
# The variants each config's docstring lists.
HEAD_NAMES = ("l1", "mse", "discrete", "diffusion", "flow")
CONFIG_VARIANTS = [
    *(f"metaworld_scratch.py:{head},{size}" for head in HEAD_NAMES for size in ("tiny", "small", "base")),
    *(f"octo_scratch.py:{size},{head}" for size in ("tiny", "small", "base") for head in HEAD_NAMES),
    "octo_scratch.py:small,fused_goal",
    "octo_scratch.py:tiny,flow,fused_goal,readout_history",
    "octo_scratch.py:base,readout_history",
    *(f"otter_metaworld.py:{selection},{head}" for selection in ("text_aware", "pooled") for head in HEAD_NAMES),
    "synthetic.py:default",
    "synthetic.py:two_robots",
    "vla_flow.py",
    "vla_flow.py:lora",
    "vla_flow.py:adarms",
    "vla_flow.py:pod",
    "vla_flow.py:lora,pod",
    *(f"vla_tokens.py:{kind}{options}" for kind in ("bins", "fast") for options in ("", ",lora", ",pod", ",lora,pod")),
    "metaworld_mt10.py",
    *(f"metaworld_mt10.py:head={head}" for head in HEAD_NAMES),
    "metaworld_mt10.py:proprio=hand,language=all,film=off,wrist=off",
]


def attack(marker) -> dict:
    """A spec that, if it were ever called, would create the file `marker`."""
    return {"module": "os", "name": "system", "args": [f"touch {marker}"], "kwargs": {}}


def copy_release(tmp_path):
    run_dir = tmp_path / "release"
    shutil.copytree(RELEASE_FIXTURE, run_dir)
    return run_dir


def release_with(tmp_path, key_path: str, value) -> str:
    """A copy of the fixture release whose config.json holds `value` at the dotted `key_path`."""
    run_dir = copy_release(tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    *parents, last = key_path.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    (run_dir / "config.json").write_text(json.dumps(config))
    return str(run_dir)


def test_a_spec_calling_os_system_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    run_dir = release_with(tmp_path, "model.heads.action", attack(marker))
    with pytest.raises(InputError) as excinfo:
        PolicyModel.load_pretrained(run_dir)
    message = str(excinfo.value)
    assert message.startswith(
        f"release config '{run_dir}/config.json': model.heads.action names 'os:system', "
        "which is not a registered component"
    ), message
    assert "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("key_path", "make_spec", "expected"),
    [
        # Dotted attribute paths reach os.system through a registered module, or name a stdlib function.
        (
            "model.heads.action",
            lambda m: {"module": "octo_like.policy.model", "name": "os.system", "args": [f"touch {m}"]},
            "model.heads.action names 'octo_like.policy.model:os.system'",
        ),
        (
            "model.heads.action",
            lambda m: {
                "module": "octo_like.model.heads",
                "name": "spec.importlib.import_module",
                "args": ["antigravity"],
            },
            "model.heads.action names 'octo_like.model.heads:spec.importlib.import_module'",
        ),
        (
            "model.observation_tokenizers.primary",
            lambda m: {"module": "os.path", "name": "join", "args": ["a", "b"]},
            "model.observation_tokenizers.primary names 'os.path:join'",
        ),
        (
            "model.heads.action",
            lambda m: {"module": "builtins", "name": "eval", "args": [f"open('{m}', 'w')"]},
            "model.heads.action names 'builtins:eval'",
        ),
        (
            "model.task_tokenizers.goal",
            lambda m: {"module": "builtins", "name": "exec", "args": [f"open('{m}', 'w')"]},
            "model.task_tokenizers.goal names 'builtins:exec'",
        ),
        (
            "model.heads.action",
            lambda m: {"module": "importlib", "name": "import_module", "args": ["antigravity"]},
            "model.heads.action names 'importlib:import_module'",
        ),
        # Nested in a registered head's kwargs, and in a list of args.
        (
            "model.heads.action",
            lambda m: spec.create(
                "octo_like.model.heads:ContinuousActionHead",
                action_horizon=3,
                action_dim=4,
                loss_type={"module": "subprocess", "name": "Popen", "args": [["touch", str(m)]]},
            ),
            "model.heads.action.kwargs.loss_type names 'subprocess:Popen'",
        ),
        (
            "model.heads.action",
            lambda m: spec.create("octo_like.model.heads:ContinuousActionHead", attack(m)),
            "model.heads.action.args[0] names 'os:system'",
        ),
        # A project function that is not a component.
        (
            "model.heads.action",
            lambda m: spec.create("octo_like.utils.files:write_text_atomically", str(m), "x"),
            "model.heads.action names 'octo_like.utils.files:write_text_atomically'",
        ),
        # Outside the model section too: the whole file is data.
        (
            "dataset.traj_transform_kwargs.text_tokenizer",
            attack,
            "dataset.traj_transform_kwargs.text_tokenizer names 'os:system'",
        ),
        # Spec-like mappings that are not well-formed specs.
        ("model.heads.action", lambda m: {**attack(m), "extra": 1}, "model.heads.action is a malformed component spec"),
        (
            "model.heads.action",
            lambda m: {"module": ["os"], "name": "system", "args": [f"touch {m}"]},
            "model.heads.action is a malformed component spec",
        ),
        ("model.heads.action", lambda m: {"module": "os"}, "model.heads.action is a malformed component spec"),
    ],
    ids=[
        "dotted_os_system",
        "dotted_import_module",
        "os_path_join",
        "eval",
        "exec",
        "import_module",
        "nested_kwargs",
        "nested_args",
        "project_function",
        "dataset_section",
        "extra_key",
        "non_string_module",
        "no_name",
    ],
)
def test_unregistered_or_malformed_specs_are_one_line_errors_naming_key_and_target(
    tmp_path, key_path, make_spec, expected
):
    marker = tmp_path / "pwned"
    run_dir = release_with(tmp_path, key_path, make_spec(marker))
    with pytest.raises(InputError) as excinfo:
        PolicyModel.load_pretrained(run_dir)
    assert expected in str(excinfo.value) and "\n" not in str(excinfo.value)
    assert not marker.exists()


def test_a_registered_release_still_loads(tmp_path):
    model = PolicyModel.load_pretrained(str(copy_release(tmp_path)))
    assert model.config["model"]["heads"]["action"]["name"] == "ContinuousActionHead"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", r"is not valid JSON \(Expecting property name enclosed in double quotes: line 1 column 2"),
        ("[1, 2]", "holds a JSON list; expected a JSON object"),
        ('{"dataset": {}}', "has no 'model' object"),
    ],
    ids=["not_json", "array", "no_model"],
)
def test_a_config_that_is_not_a_json_object_is_one_line(tmp_path, text, expected):
    run_dir = copy_release(tmp_path)
    (run_dir / "config.json").write_text(text)
    with pytest.raises(InputError, match=expected) as excinfo:
        PolicyModel.load_pretrained(str(run_dir))
    assert str(excinfo.value).startswith(f"release config '{run_dir}/config.json' ")
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize("config_arg", CONFIG_VARIANTS)
def test_every_spec_of_every_experiment_config_is_registered(config_arg):
    config = load_config(os.path.join(REPO_ROOT, "experiments", "configs", config_arg))
    # As save_pretrained writes it: JSON, tuples as lists.
    check_release_config(json.loads(json.dumps(config.to_dict(), default=list)), source=config_arg)


def test_the_registry_names_every_action_head_and_only_components_that_exist():
    assert {f"{cls.__module__}:{cls.__qualname__}" for cls, _ in HEADS.values()} <= RELEASE_COMPONENTS
    for target in RELEASE_COMPONENTS:
        assert callable(spec.resolve(spec.create(target)))


def test_finetune_with_a_malicious_release_prints_one_error_line_and_exits_2(tmp_path):
    marker = tmp_path / "pwned"
    run_dir = release_with(tmp_path, "model.heads.action", attack(marker))
    result = subprocess.run(
        [
            sys.executable,
            "scripts/finetune.py",
            f"--pretrained={run_dir}",
            "--config=experiments/configs/metaworld_scratch.py:l1",
            f"--config.run_dir={tmp_path / 'finetuned'}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "model.heads.action names 'os:system'" in error_lines[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_user_code_may_register_its_own_component_and_a_file_may_not(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTERED", set())
    config = {"model": {"heads": {"action": spec.create("my_lab.heads:MyHead", action_dim=7)}}}
    with pytest.raises(InputError, match="names 'my_lab.heads:MyHead', which is not a registered component"):
        check_release_config(config, "release")
    registry.register_release_component("my_lab.heads:MyHead")
    check_release_config(config, "release")
    with pytest.raises(InputError, match="cannot register 'os system'; expected 'pkg.module:Name'"):
        registry.register_release_component("os system")


def test_a_release_written_before_the_model_split_reads_with_the_moved_modules_renamed():
    with open(os.path.join(RELEASE_FIXTURE, "config.json"), encoding="utf-8") as file:
        written = file.read()
    assert '"octo_like.model.tokenizers"' in written  # the old path, as that commit wrote it
    tokenizers = registry.read_release_config(RELEASE_FIXTURE)["model"]["observation_tokenizers"]
    assert {f"{node['module']}:{node['name']}" for node in tokenizers.values()} == {
        "octo_like.model.scratch.observation_tokenizers:ImageTokenizer",
        "octo_like.model.scratch.observation_tokenizers:ProprioTokenizer",
    }
    for old, new in registry.MOVED_MODULES.items():
        assert importlib.util.find_spec(old) is None and importlib.util.find_spec(new) is not None
