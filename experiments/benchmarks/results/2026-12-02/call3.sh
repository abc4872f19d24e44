#!/usr/bin/env bash
# Fourth round, third device call (one H200): impl="auto" now takes the kernel only where
# H*W <= 256; forward and NCSN++ float32 train A/B against XLA's GroupNorm.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
log="$OUT/all.log"
B=experiments/benchmarks
python3 $B/suite.py --benches forward --batches 512 --dtypes bfloat16,float32 \
  --group-norm-impls xla,auto --init numpy --out "$OUT/suite.jsonl" 2>&1 | tee -a "$log"
python3 $B/suite.py --benches train --models ncsnpp_ve --dtypes float32 \
  --group-norm-impls xla,auto --init numpy --out "$OUT/suite.jsonl" 2>&1 | tee -a "$log"
