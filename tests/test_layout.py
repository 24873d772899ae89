"""The layout's rules (DESIGN.md): imports flow one way, and no code edits sys.path."""

import ast
import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Package -> the octo_like packages it must never import (no arrow runs back up).
FORBIDDEN_IMPORTS = {
    "utils": ("data", "model", "hf", "policy", "train", "eval", "serving"),
    "model": ("data", "hf", "policy", "train", "eval", "serving"),
    "hf": ("data", "policy", "train", "eval", "serving"),
    "data": ("model", "hf", "policy", "train", "eval", "serving"),
    "policy": ("train", "eval", "serving"),
    "eval": ("train", "serving"),
    "train": ("serving",),
}


def python_files(*folders: str) -> list[str]:
    paths = []
    for folder in folders:
        for directory, _, names in os.walk(os.path.join(REPO_ROOT, folder)):
            paths += [os.path.join(directory, name) for name in names if name.endswith(".py")]
    return sorted(paths)


def imported_modules(path: str) -> set[str]:
    """Every module an `import` or `from ... import` names anywhere in the file (function bodies included)."""
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read(), path)
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_imports_flow_one_way(package):
    violations = []
    for path in python_files(os.path.join("octo_like", package)):
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "octo_like" and len(parts) > 1 and parts[1] in FORBIDDEN_IMPORTS[package]:
                violations.append(f"{os.path.relpath(path, REPO_ROOT)} imports {module}")
    assert not violations, "\n".join(sorted(violations))


def test_the_two_model_families_do_not_import_each_other_and_shared_modules_import_neither():
    # model/scratch (from scratch) and model/vla (VLM-initialized) build on model/'s shared modules.
    violations = []
    for path in python_files("octo_like/model"):
        family = os.path.relpath(path, os.path.join(REPO_ROOT, "octo_like", "model")).split(os.sep)[0]
        others = {"scratch", "vla"} - {family}
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[:2] == ["octo_like", "model"] and len(parts) > 2 and parts[2] in others:
                violations.append(f"{os.path.relpath(path, REPO_ROOT)} imports {module}")
    assert not violations, "\n".join(sorted(violations))


def test_model_and_data_keep_to_their_frameworks():
    model_tf = [
        p for p in python_files("octo_like/model") if any(m.startswith("tensorflow") for m in imported_modules(p))
    ]
    data_flax = [p for p in python_files("octo_like/data") if any(m.startswith("flax") for m in imported_modules(p))]
    assert model_tf == [] and data_flax == []


def test_no_code_edits_sys_path():
    # Scripts run against the installed package (scripts/setup_env.sh installs it in editable mode).
    editing = [
        os.path.relpath(path, REPO_ROOT)
        for path in python_files("octo_like", "scripts", "data_pipelines")
        if "sys.path" in open(path, encoding="utf-8").read()
    ]
    assert editing == []


def test_networks_dispatch_by_declared_interface_not_by_kind_strings():
    # Each VLA action kind is a class behind octo_like.model.vla.actions.VLAActions.
    dispatching = [
        f"{os.path.relpath(path, REPO_ROOT)}:{number}"
        for path in python_files("octo_like/model")
        for number, line in enumerate(open(path, encoding="utf-8"), start=1)
        if "kind ==" in line or "kind !=" in line
    ]
    assert dispatching == []
