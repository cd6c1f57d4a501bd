#!/usr/bin/env bash
# Run the test suite against the newest versions pyproject.toml allows, so that the next release
# that breaks diffpali is found here, not by a user. Prints the versions that differ from
# requirements-lock.txt, then the suite's result; exits with the suite's status.
#
#   scripts/check_latest.sh [pytest args]        # e.g. scripts/check_latest.sh -x -q
#
# When it passes with newer versions: regenerate the lock from .venv-latest
# (.venv-latest/bin/python scripts/lock.py > requirements-lock.txt), and when a new transformers
# minor has passed, raise the cap in pyproject.toml (see docs/setup.md, "Tested versions").
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --latest || { echo "check_latest: scripts/setup.sh --latest failed" >&2; exit 1; }
PY=.venv-latest/bin/python
echo
"$PY" scripts/lock.py --compare requirements-lock.txt
"$PY" -c "import sys, torch, transformers, peft, lightning; print(f'check_latest: Python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, lightning {lightning.__version__}')"
echo
"$PY" -m pytest "${@:--q}"
status=$?
if [ $status -eq 0 ]; then
  echo "check_latest: the suite PASSED with the newest allowed versions (above)"
else
  echo "check_latest: the suite FAILED (pytest exit status $status) with the newest allowed versions (above)"
fi
exit $status
