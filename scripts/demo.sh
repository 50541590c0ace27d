#!/usr/bin/env bash
# Set up (if needed) and run Kiln's main job on the bundled example (GPU if there is one, else CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
