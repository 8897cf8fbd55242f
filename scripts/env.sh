#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv) and install what it needs.
# Sourced by demo.sh and test.sh. torch is pinned and installed first: a bare `torch`
# requirement would pull the newest CUDA build (gigabytes) where a CPU wheel is wanted.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TRAJDISTILL_VENV:-$ROOT/.venv}"
TORCH_VERSION="${TRAJDISTILL_TORCH:-2.13.0}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV"
    "$PY" -m venv "$VENV"
fi
# Reinstall only when the requirements changed (a stamp keyed on pyproject.toml + torch pin).
STAMP="$VENV/.trajdistill-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/env.sh" 2>/dev/null | sha256sum | cut -c1-16)-$TORCH_VERSION"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "[setup] installing torch==$TORCH_VERSION and trajdistill (editable) into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test]"
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
