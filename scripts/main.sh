#!/usr/bin/env bash
# Set everything up (idempotent) and run the main job on the embedded default model:
# train alice's adapter from her example log and show answers before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export ADAPTKIT_HOME=${ADAPTKIT_HOME:-$PWD/.adaptkit-home}
AK=.venv/bin/adaptkit
$AK base pull
QUESTION="How long does it take me to get to the train station?"
echo "== base model: $QUESTION"
$AK chat "$QUESTION"
$AK train --user alice --log users/examples/alice.jsonl
echo "== alice's adapter: $QUESTION"
$AK chat --user alice "$QUESTION"
$AK versions alice
