#!/usr/bin/env bash
# Builds ftlab with CUDA (`--features cuda`) on a machine with no GPU and no CUDA install:
# the toolkit comes from PyPI wheels (scripts/cuda/toolkit.sh), the driver library is a
# link-time stand-in. The binary needs, where it runs, the NVIDIA driver (libcuda.so.1) and
# the CUDA 13 runtime libraries (cuBLAS, cuBLASLt, cuRAND, NVRTC: a CUDA 13 install, or
# PyTorch's nvidia pip packages on LD_LIBRARY_PATH): candle links them, so without them it
# does not start at all (a CPU-only machine runs the default build).
#
#   scripts/cuda/build.sh            # → $FTLAB_CUDA_TARGET_DIR/release/ftlab
#
# FTLAB_CUDA_TARGET_DIR (default: ~/.cache/ftlab-cuda/target) is kept between builds: a
# build from nothing spends ~25 minutes on 2 cores in nvcc (candle's kernels), a rebuild
# after a change to ftlab a few minutes. CUDA_COMPUTE_CAP (default 80: Ampere and newer,
# PTX JIT-compiled on Hopper) is the GPU generation the kernels are built for.
set -euo pipefail
cd "$(dirname "$0")/../.."

cache="${FTLAB_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ftlab-cuda}"
target="${FTLAB_CUDA_TARGET_DIR:-$cache/target}"

cargo fetch --quiet
CUDA_HOME=$(FTLAB_CUDA_CACHE="$cache" bash scripts/cuda/toolkit.sh)
export CUDA_HOME CUDA_PATH="$CUDA_HOME" CUDA_ROOT="$CUDA_HOME"
export PATH="$CUDA_HOME/bin:$PATH"
export LIBRARY_PATH="$CUDA_HOME/lib:$CUDA_HOME/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$CUDA_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
nvcc --version | tail -n 2 >&2

start=$(date +%s)
cargo build --release --features cuda --bin ftlab --target-dir "$target" "$@"
echo "cuda build: $target/release/ftlab ($(( $(date +%s) - start )) s)" >&2
