#!/usr/bin/env bash
# Fifth round, fourth device call (one H200), fresh processes, no JAX compilation cache,
# NCSN++ float32 train, batch 128, GroupNorm 'auto', each process capped at 180 s:
# (1) --xla_gpu_enable_triton_gemm=false (cuBLAS GEMMs: fewer fusions to autotune);
# (2) XLA's per-fusion autotune cache in an empty directory, 5 steps per call (fills it);
# (3) the same cache directory, 1 step per call: a different program with the same fusions,
#     so its compile is the cold compile less the autotuning.
# Run from the repository root with .whl (ml_collections) carried.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
unset JAX_COMPILATION_CACHE_DIR
log="$OUT/all.log"
B=experiments/benchmarks
train() {  # $1: steps per call, $2: XLA_FLAGS
  echo "### n_jitted_steps=$1 XLA_FLAGS='$2' start $(date +%s)" | tee -a "$log"
  XLA_FLAGS="$2" timeout 180 python3 $B/suite.py --benches train --models ncsnpp_ve \
    --dtypes float32 --n-jitted-steps "$1" --init numpy --repeats 10 \
    --out "$OUT/suite.jsonl" 2>&1 | grep -v "cuda_timer" | tee -a "$log"
  echo "### end $(date +%s)" | tee -a "$log"
}
train 5 "--xla_gpu_enable_triton_gemm=false"
atc="--xla_gpu_per_fusion_autotune_cache_dir=/tmp/autotune_cache"
train 5 "$atc"
ls /tmp/autotune_cache | wc -l | tee -a "$log"
train 1 "$atc"
