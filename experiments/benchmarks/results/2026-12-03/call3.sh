#!/usr/bin/env bash
# Fifth round, third device call (one H200), fresh processes, no compilation cache, NCSN++,
# batch 128, 5 steps per call, each process capped at 270 s: (1) float32 training with XLA's
# GroupNorm in a process of its own (the kernel's compile-time effect without the in-process
# autotune cache of the 2026-12-02 A/B; call 1 measured 'auto' fresh: 80.3 s); (2) bfloat16
# training with the kernel ('auto'), not measured before.
# Run from the repository root with .whl (ml_collections) carried.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
unset JAX_COMPILATION_CACHE_DIR
log="$OUT/all.log"
B=experiments/benchmarks
train() {  # $1: GroupNorm impl, $2: dtype
  echo "### impl=$1 dtype=$2 start $(date +%s)" | tee -a "$log"
  timeout 270 python3 $B/suite.py --benches train --models ncsnpp_ve --dtypes "$2" \
    --group-norm-impls "$1" --init numpy --repeats 10 --out "$OUT/suite.jsonl" 2>&1 \
    | grep -v "cuda_timer" | tee -a "$log"
  echo "### end $(date +%s)" | tee -a "$log"
}
train xla float32
train auto bfloat16
