#!/usr/bin/env bash
# Fifth round, fifth device call (one H200): the baseline that call 4's third process needs,
# NCSN++ float32 train, 1 step per call, fresh process, no caches of any kind (capped at 200 s).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
unset JAX_COMPILATION_CACHE_DIR
echo "### n_jitted_steps=1 XLA_FLAGS='' start $(date +%s)" | tee -a "$OUT/all.log"
timeout 200 python3 experiments/benchmarks/suite.py --benches train --models ncsnpp_ve \
  --dtypes float32 --n-jitted-steps 1 --init numpy --repeats 10 --out "$OUT/suite.jsonl" 2>&1 \
  | grep -v "cuda_timer" | tee -a "$OUT/all.log"
echo "### end $(date +%s)" | tee -a "$OUT/all.log"
