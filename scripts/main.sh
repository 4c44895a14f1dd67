#!/usr/bin/env bash
# Set everything up (idempotent) and run the main job on the embedded default model:
# the arena in quick mode on the bundled suite (3 users: learn each user's adapter from
# their history, then score base / oracle / memory / adapter / adapter+memory).
# Extra args go to `adaptkit arena run`; the full suite is `.venv/bin/adaptkit arena run --out DIR`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export ADAPTKIT_HOME=${ADAPTKIT_HOME:-$PWD/.adaptkit-home}
exec .venv/bin/adaptkit arena run --quick --out "$ADAPTKIT_HOME/arena" "$@"
