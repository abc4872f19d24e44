#!/usr/bin/env bash
# Fifth round, sixth device call (one H200): compile_bench.py, NCSN++ float32, batch 128, one
# step per call: the gradient program against the whole train step, after a warm-up compile
# that fills XLA's autotune results (so none of the measured compiles autotunes), fresh process,
# no JAX compilation cache. Capped at 170 s (the session's device time left), without sgd_step; rows are written as they finish.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
unset JAX_COMPILATION_CACHE_DIR
echo "### start $(date +%s)" | tee -a "$OUT/all.log"
timeout 170 python3 experiments/benchmarks/compile_bench.py --programs warmup,grad,step --out "$OUT/compile.jsonl" 2>&1 \
  | grep -v "cuda_timer" | tee -a "$OUT/all.log"
echo "### end $(date +%s)" | tee -a "$OUT/all.log"
