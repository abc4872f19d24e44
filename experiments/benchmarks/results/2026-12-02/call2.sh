#!/usr/bin/env bash
# Fourth round, second device call (one H200): the kernel with elementwise accumulators and
# tiling 8192 elements / 8 warps, timed per layer in chains of 10 (dispatch amortized);
# forward and train A/B with XLA's GroupNorm; HLO layout counts; a chained tiling sweep.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
log="$OUT/all.log"
B=experiments/benchmarks
python3 $B/groupnorm_bench.py --variants flax,kernel,kernel_jvp --dtypes float32,bfloat16 \
  --chain 10 --repeats 10 --bandwidth 4300 2>&1 | tee -a "$log"
python3 $B/groupnorm_bench.py --variants flax,kernel --dtypes bfloat16 --batch 512 \
  --chain 10 --repeats 10 --bandwidth 4300 2>&1 | tee -a "$log"
python3 $B/suite.py --benches forward --batches 512 --dtypes bfloat16,float32 \
  --group-norm-impls xla,auto --init numpy --out "$OUT/suite.jsonl" 2>&1 | tee -a "$log"
python3 $B/suite.py --benches train --models ddpmpp_vp --dtypes float32 \
  --group-norm-impls xla,auto --init numpy --out "$OUT/suite.jsonl" 2>&1 | tee -a "$log"
python3 $B/groupnorm_bench.py --sweep --dtypes bfloat16 --batch 512 --shapes 32x256,16x256 \
  --chain 10 --repeats 5 --bandwidth 4300 2>&1 | tee "$OUT/sweep.log"
python3 $B/groupnorm_bench.py --sweep --dtypes float32 --batch 128 --shapes 32x128,32x256 \
  --chain 10 --repeats 5 --bandwidth 4300 2>&1 | tee -a "$OUT/sweep.log"
