#!/usr/bin/env bash
# Set everything up (idempotent) and run the test suite: unit tier on a tiny random
# model, integration tier on the real packaged SmolLM2-135M. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
