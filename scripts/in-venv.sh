#!/usr/bin/env bash
# Run a command inside the project's virtual environment, creating it and installing everything
# it needs first when that is missing or out of date. Usage: bash scripts/in-venv.sh CMD [ARGS...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RGA_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.rga-installed"
TORCH="$(grep -v '^#' "$ROOT/scripts/torch.txt" | head -n1)"
# the install is redone when the package, the lock file or the torch pin changes
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/requirements.lock" "$ROOT/scripts/torch.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[rga] creating virtual environment in $VENV" >&2
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[rga] installing dependencies ($TORCH first, then requirements.lock, then the rga package)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first and pinned (scripts/torch.txt): on this kind of machine pip takes the CPU build of
  # 2.13.0 from the local wheel store; a bare 'torch' would pull a multi-GB CUDA build from PyPI.
  "$VENV/bin/python" -m pip install -q "$TORCH"
  # every other dependency at the exact version of the lock file (scripts/lock.sh updates it);
  # pip reads this machine's pip.conf (index, find-links), which uv would ignore
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements.lock"
  "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
  echo "$WANT" > "$STAMP"
fi
# A relative data mirror is taken relative to where the command was started.
if [ -n "${RGA_DATA_MIRROR:-}" ] && [ "${RGA_DATA_MIRROR#/}" = "$RGA_DATA_MIRROR" ]; then
  RGA_DATA_MIRROR="$(cd "$RGA_DATA_MIRROR" 2>/dev/null && pwd || echo "$PWD/$RGA_DATA_MIRROR")"
  export RGA_DATA_MIRROR
fi
export PATH="$VENV/bin:$PATH"
export TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false
cd "$ROOT"
exec "$@"
