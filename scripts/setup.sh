#!/usr/bin/env bash
# Create .venv with Kiln and its test dependencies. torch is pinned (constraints.txt) so that pip
# takes the local CPU build and never resolves a newer CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
quiet_pip() {  # this machine's pip config names local indexes that may be absent: drop those warnings
  .venv/bin/pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  quiet_pip install -q "$(grep '^torch==' constraints.txt)"
fi
quiet_pip install -q -c constraints.txt -e ".[test]"
