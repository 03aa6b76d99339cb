#!/usr/bin/env bash
# Prepares what scripts/gpu-check.sh needs on a GPU machine that has no Rust toolchain and
# no network, in ./gpu-carry (ignored by git, under the 64 MiB a device run may carry):
#   gpu-carry/ftlab.xz          the CUDA build of ftlab (scripts/cuda/build.sh), stripped
#   gpu-carry/smollm2-shape/    SmolLM2-135M's config.json and tokenizer without weights:
#                               the check fills it with random weights there (the real
#                               GGUF, 92 MB, does not fit in what travels)
# Then, on the GPU machine, from the repository root: scripts/gpu-check.sh gpu-carry
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${FTLAB_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ftlab-cuda}"
target="${FTLAB_CUDA_TARGET_DIR:-$cache/target}"
bash scripts/cuda/build.sh
mkdir -p gpu-carry
strip -o gpu-carry/ftlab "$target/release/ftlab"
xz -T0 -6 -f gpu-carry/ftlab
rm -rf gpu-carry/smollm2-shape
cargo run --release --quiet -- models random gpu-carry/smollm2-shape --like smollm2 --no-weights >/dev/null
du -sh gpu-carry/* >&2
