#!/usr/bin/env bash
# Run the suite against the newest releases of Kiln's dependencies, in .venv-latest, so an upgrade is a
# decision: CI (scripts/test.sh) installs the tested versions in constraints.txt. torch alone stays pinned,
# since an unpinned torch pulls CUDA wheels of several GB. When this is green, refresh the pins with
#   .venv-latest/bin/pip freeze --exclude-editable | sed 's/+cpu//' > constraints.txt   (keep the header)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-latest/bin/python ] || "$PY" -m venv .venv-latest
.venv-latest/bin/pip install -q "$(grep '^torch==' constraints.txt)"
.venv-latest/bin/pip install -q --upgrade --upgrade-strategy eager -e ".[test]" "$(grep '^torch==' constraints.txt)"
.venv-latest/bin/pip list --outdated 2>/dev/null || true
exec .venv-latest/bin/python -m pytest -q -n 2 "$@"
