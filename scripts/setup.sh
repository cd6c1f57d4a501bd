#!/usr/bin/env bash
# Create .venv and install diffpali with its test extras, at the versions in requirements-lock.txt
# (the exact versions the test suite passed with), so the README's commands give the same
# environment every day.
#
#   scripts/setup.sh            # .venv, the locked versions
#   scripts/setup.sh --latest   # .venv-latest, the newest versions pyproject.toml allows (no lock);
#                               # scripts/check_latest.sh runs the suite there
#
# torch comes first, chosen for the machine: with an NVIDIA driver, PyPI's default (CUDA) build;
# without one, a CPU build: one pip can already find locally (its find-links or wheel cache), else
# the PyTorch CPU index. Installing the other packages first would pull the ~3 GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
LOCK=requirements-lock.txt

MODE=locked
case "${1:-}" in
  "") ;;
  --latest) MODE=latest ;;
  *) echo "usage: scripts/setup.sh [--latest]" >&2; exit 2 ;;
esac

if [ "$MODE" = locked ]; then
  VENV=.venv
  TORCH_SPEC=$(grep -E '^torch==' "$LOCK")
  CONSTRAINTS=(-c "$LOCK")
  UPGRADE=()
else
  VENV=.venv-latest
  TORCH_SPEC="torch>=2.4,<3"
  CONSTRAINTS=()
  UPGRADE=(--upgrade --upgrade-strategy eager)
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

LOCK_PY=$(sed -n 's/^# python //p' "$LOCK")
VENV_PY=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if [ "$MODE" = locked ] && [ "$LOCK_PY" != "$VENV_PY" ]; then
  echo "setup: warning: $LOCK was made on Python $LOCK_PY, this is Python $VENV_PY; some locked versions may" \
       "not exist for it (then use scripts/setup.sh --latest, or PYTHON=python$LOCK_PY scripts/setup.sh)" >&2
fi

cpu_torch() {  # true when the installed torch is a CPU build (no CUDA libraries among its requirements)
  "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(any('nvidia' in r for r in m.requires('torch') or []))"
}

torch_ok() {  # torch imports and, with the lock, is the locked version (local tag aside)
  "$VENV/bin/python" -c "import sys, torch; sys.exit(0 if '$MODE' == 'latest' or 'torch==' + torch.__version__.split('+')[0] == '$TORCH_SPEC' else 1)" 2>/dev/null
}

from_cpu_index() {  # pip's config may add other indexes (CUDA builds): keep the result only if it is a CPU build
  "${PIP[@]}" install --upgrade --no-deps --retries 1 --timeout 30 "$TORCH_SPEC" \
      --index-url https://download.pytorch.org/whl/cpu 2>/dev/null && cpu_torch && return 0
  "$VENV/bin/python" -m pip uninstall -y -q torch 2>/dev/null || true
  return 1
}
from_local() {  # a CPU build pip can already find (its find-links or wheel cache)
  "${PIP[@]}" install "${UPGRADE[@]}" --no-index --no-deps "$TORCH_SPEC" 2>/dev/null && cpu_torch
}

if ! torch_ok || [ "$MODE" = latest ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing the CUDA build of torch ($TORCH_SPEC)"
    "${PIP[@]}" install "${UPGRADE[@]}" "$TORCH_SPEC"
  elif [ "$MODE" = latest ] && from_cpu_index; then
    echo "setup: no GPU; installed the newest CPU build of torch from the PyTorch CPU index"
  elif from_local; then
    echo "setup: no GPU; installed the CPU build of torch that pip found locally ($TORCH_SPEC)"
  elif [ "$MODE" = locked ] && from_cpu_index; then
    echo "setup: no GPU; installed the CPU build of torch ($TORCH_SPEC) from the PyTorch CPU index"
  else
    echo "setup: no CPU build of torch ($TORCH_SPEC) found, locally or on the PyTorch CPU index" >&2
    exit 1
  fi
fi
# torch is now satisfied, so this adds only its small dependencies and the project's own. --latest
# upgrades everything else; torch stays the build chosen above (an eager upgrade would swap a CPU
# build for PyPI's CUDA one).
if [ "$MODE" = latest ]; then
  KEEP_TORCH="$VENV/torch-constraint.txt"
  "$VENV/bin/python" -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > "$KEEP_TORCH"
  CONSTRAINTS=(-c "$KEEP_TORCH")
fi
"${PIP[@]}" install "${UPGRADE[@]}" "${CONSTRAINTS[@]}" -e ".[dev]"
"$VENV/bin/python" -c "import torch; print(f'setup: torch {torch.__version__}, cuda available: {torch.cuda.is_available()}')"
if [ "$MODE" = locked ]; then
  # A venv made before the lock changed keeps its old versions unless told: say so rather than drift.
  "$VENV/bin/python" -m pip check >/dev/null || echo "setup: warning: pip check reports broken requirements in $VENV" >&2
  "$VENV/bin/python" scripts/lock.py --compare "$LOCK" | grep -q "^  none:" \
    || { echo "setup: warning: $VENV differs from $LOCK:" >&2; "$VENV/bin/python" scripts/lock.py --compare "$LOCK" | tail -n +2 >&2; }
fi
