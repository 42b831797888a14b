#!/usr/bin/env bash
# Build llama-cpp-python's wheel once per machine and print the folder it is in (for pip --find-links).
# Usage: bash scripts/llama_cpp_wheel.sh   (uses the `pip` on PATH; scripts/setup.sh calls it)
#        pip install --no-deps "$(bash scripts/llama_cpp_wheel.sh)"/llama_cpp_python-*.whl
#
# llama-cpp-python ships only a source distribution: pip compiles llama.cpp for this CPU
# (-march=native), which takes 5 to 10 minutes on 2 cores. The wheel is kept in
# $LONGREAD_WHEELS (default ~/.cache/longread/wheels), in a folder named after the version, the
# build flags and this CPU's feature flags, so later set-ups install it in seconds and a copy made
# for another CPU is never reused. pip's own wheel cache is bypassed on purpose: it keys a build on
# the source file only, not on the flags below.
#
# AMX kernels are left out (-mno-amx-*): virtual machines that advertise AMX without enabling its
# tile state (Firecracker) crash in them (general protection fault in ggml_backend_amx_mul_mat on
# the first Q4_1 matmul); the AVX-512 / AVX2 kernels are used instead. LONGREAD_LLAMA_AMX=1 keeps
# them, for bare-metal Sapphire Rapids and later.
#
# LONGREAD_LLAMA_BLAS=1 builds with OpenBLAS for prompt processing (needs libopenblas-dev and
# pkg-config: apt-get install libopenblas-dev pkg-config); it goes into its own folder. Measure before
# using it: pip install --no-deps --target /tmp/llama-blas "$(LONGREAD_LLAMA_BLAS=1 bash
# scripts/llama_cpp_wheel.sh)"/*.whl, then PYTHONPATH=/tmp/llama-blas python benchmarks/backends.py.
set -euo pipefail
VERSION=0.3.36
# sha256 of llama_cpp_python-0.3.36.tar.gz on PyPI: the source is checked before it is built.
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
ROOT="${LONGREAD_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/longread/wheels}"
flags=""
[ "${LONGREAD_LLAMA_AMX:-0}" = 1 ] || flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cpu=$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m) | cksum | cut -d' ' -f1)
tag=$([ -n "$flags" ] && echo noamx || echo amx)
cmake_args=""
if [ "${LONGREAD_LLAMA_BLAS:-0}" = 1 ]; then
  cmake_args="-DGGML_BLAS=ON -DGGML_BLAS_VENDOR=OpenBLAS"
  tag="$tag-openblas"
fi
dir="$ROOT/llama-cpp-python-$VERSION-$tag-cpu$cpu"
if ! ls "$dir"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $VERSION (compiles llama.cpp: 5 to 10 minutes on 2 cores, once per machine)" >&2
  mkdir -p "$ROOT"
  tmp=$(mktemp -d "$ROOT/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "llama-cpp-python==$VERSION --hash=sha256:$SDIST_SHA256" > "$tmp/requirements.txt"
  CMAKE_ARGS="$cmake_args" CFLAGS="$flags" CXXFLAGS="$flags" pip wheel -q --no-deps --no-cache-dir --require-hashes \
    -r "$tmp/requirements.txt" -w "$tmp" >&2
  rm "$tmp/requirements.txt"
  rm -rf "$dir" && mv "$tmp" "$dir"  # the folder appears only with a finished wheel in it
fi
echo "$dir"
