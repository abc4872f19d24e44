#!/usr/bin/env bash
# Fifth round, second device call (one H200), fresh processes, NCSN++ float32 train, batch 128,
# 5 steps per call, no compilation cache: (1) XLA's autotuner off (--xla_gpu_autotune_level=0),
# how much of the cold compile is autotuning; (2) XLA's GroupNorm instead of the kernel in a
# process of its own, the kernel's compile-time effect without the in-process autotune cache
# that confounded the 2026-12-02 A/B. Wall-clock stamps per process.
# Run from the repository root with .whl (ml_collections) carried.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
unset JAX_COMPILATION_CACHE_DIR
log="$OUT/all.log"
B=experiments/benchmarks
train() {  # $1: GroupNorm impl, $2: XLA_FLAGS
  echo "### impl=$1 XLA_FLAGS='$2' start $(date +%s)" | tee -a "$log"
  XLA_FLAGS="$2" python3 $B/suite.py --benches train --models ncsnpp_ve --dtypes float32 \
    --group-norm-impls "$1" --init numpy --repeats 10 --out "$OUT/suite.jsonl" 2>&1 \
    | grep -v "cuda_timer" | tee -a "$log"
  echo "### end $(date +%s)" | tee -a "$log"
}
train auto "--xla_gpu_autotune_level=0"
train xla ""
