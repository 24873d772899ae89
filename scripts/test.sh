#!/usr/bin/env bash
# Sets up .venv (see setup_env.sh), checks formatting and lint (ruff, settings in pyproject.toml:
# a violation fails the run; `.venv/bin/ruff format . && .venv/bin/ruff check --fix .` repairs most),
# then runs the test suite. Extra arguments go to pytest.
# Two workers (pytest-xdist), each running whole test files (module fixtures such as a trained
# run are built once); OCTO_LIKE_TEST_WORKERS=0 runs everything in this one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff format --check .
.venv/bin/ruff check .
exec .venv/bin/python -m pytest tests --numprocesses="${OCTO_LIKE_TEST_WORKERS:-2}" --dist=loadfile --durations=15 "$@"
