#!/usr/bin/env bash
# Install Kiln as a user would: build the wheel, install it with only its default dependencies into a fresh
# venv, and run `kiln build` and `kiln bench` on the bundled example outside the repository (issue 22's bar).
# Heavy (a ~1 GB venv with torch), so not part of the test suite: run it before a release.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3.11 -m venv "$work/venv"
"$work/venv/bin/pip" -q wheel "$repo" -w "$work/wheels" --no-deps
"$work/venv/bin/pip" -q install -c "$repo/constraints.txt" "$work"/wheels/kiln-*.whl
cp "$repo/examples/tiny_resnet.onnx" "$work/"
cd "$work"
/usr/bin/time -f "kiln --version: %es" venv/bin/kiln --version
venv/bin/kiln build tiny_resnet.onnx -o tiny.engine --shapes image:1x3x64x64
venv/bin/kiln bench tiny.engine --shapes image:1x3x64x64 --duration 1
test -f venv/lib/python3.11/site-packages/kiln/py.typed
echo "wheel check: OK"
