#!/usr/bin/env bash
# Create .venv and install diffpali with its test extras.
#
# torch comes first, chosen for the machine: with an NVIDIA driver, PyPI's default (CUDA) build;
# without one, a CPU build: one pip can already find locally (its find-links or wheel cache), else
# the PyTorch CPU index. Installing the other packages first would pull the ~3 GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="torch>=2.4,<3"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing the CUDA build of torch"
    "${PIP[@]}" install "$TORCH_SPEC"
  elif "${PIP[@]}" install --no-index --no-deps "$TORCH_SPEC" 2>/dev/null \
      && .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(any('nvidia' in r for r in m.requires('torch') or []))"; then
    echo "setup: no GPU; installed the CPU build of torch that pip found locally"
  else
    .venv/bin/python -m pip uninstall -y -q torch 2>/dev/null || true
    echo "setup: no GPU; installing the CPU build of torch from the PyTorch CPU index"
    "${PIP[@]}" install "$TORCH_SPEC" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
# torch is now satisfied, so this adds only its small dependencies and the project's own.
"${PIP[@]}" install -e ".[dev]"
.venv/bin/python -c "import torch; print(f'setup: torch {torch.__version__}, cuda available: {torch.cuda.is_available()}')"
