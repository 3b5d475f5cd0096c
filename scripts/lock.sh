#!/usr/bin/env bash
# Update requirements.lock: the exact version of every Python dependency of this package (and of
# its `test` extra), resolved by pip-tools' pip-compile, which reads pip's own configuration
# (pip.conf: index, find-links, constraints) as pip does. torch is not in the lock: scripts/in-venv.sh
# installs it first from scripts/torch.txt, so each machine keeps the torch build that fits it (the
# CPU build here), and the lock is resolved against that version.
#   bash scripts/lock.sh            # keep the pins that still resolve, add what is new
#   bash scripts/lock.sh --upgrade  # move every pin to the newest release that resolves
# Then commit requirements.lock; the next `bash scripts/in-venv.sh ...` reinstalls from it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RGA_VENV:-$ROOT/.venv}"
[ -x "$VENV/bin/python" ] || bash "$ROOT/scripts/in-venv.sh" true
"$VENV/bin/python" -m pip install -q "pip-tools==7.7.0"
cd "$ROOT"
"$VENV/bin/pip-compile" -q "$@" --extra test --strip-extras --unsafe-package torch --no-emit-index-url \
  --no-emit-find-links --constraint scripts/torch.txt --output-file requirements.lock pyproject.toml
echo "requirements.lock updated; commit it" >&2
