#!/usr/bin/env bash
# Fifth round, first device call (one H200): train-step compile time, each variant in a fresh
# process (XLA's autotuner keeps its results in memory, so a second compile of the same
# convolutions in one process is faster: the A/B of 2026-12-02 compiled XLA's GroupNorm
# first and the kernel second). NCSN++ float32, batch 128, 5 steps per call.
# Run from the repository root with .whl (ml_collections) carried.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
unset JAX_COMPILATION_CACHE_DIR
log="$OUT/all.log"
B=experiments/benchmarks
train() {  # $1: GroupNorm impl, $2: XLA_FLAGS
  echo "### impl=$1 XLA_FLAGS='$2'" | tee -a "$log"
  XLA_FLAGS="$2" python3 $B/suite.py --benches train --models ncsnpp_ve --dtypes float32 \
    --group-norm-impls "$1" --init numpy --out "$OUT/suite.jsonl" 2>&1 \
    | grep -v "cuda_timer" | tee -a "$log"
}
train auto ""
train auto "--xla_gpu_autotune_level=1"
train auto "--xla_gpu_autotune_level=0"
train xla ""
train auto "--xla_gpu_enable_triton_gemm=false --xla_gpu_autotune_level=1"
