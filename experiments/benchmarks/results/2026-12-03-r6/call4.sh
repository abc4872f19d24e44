#!/usr/bin/env bash
# Sixth round, fourth device call (one H200). make_train_step now compiles with
# TRAIN_STEP_COMPILER_OPTIONS (the fusion autotuner off) by default. (a) the product path with
# no XLA_FLAGS: NCSN++ float32; (b) bfloat16 NCSN++ with XLA's own options against (c) the
# default, for the throughput the autotuner buys in bfloat16; (d) the same for DDPM++.
# Fresh process each, no JAX compilation cache; variants are skipped near the 500 s mark.
# Ran at commit ea5cf5c. That default was reverted after call 5; with today's suite.py the two
# settings are --train-compiler-options '{}' (for 'xla') and
# --train-compiler-options '{"xla_gpu_experimental_enable_fusion_autotuner": false}'.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
unset JAX_COMPILATION_CACHE_DIR XLA_FLAGS
T0=$(date +%s)
variant() {  # name, needed seconds, suite arguments...
  local name=$1 need=$2; shift 2
  local left=$((500 - $(date +%s) + T0))
  if [ "$left" -lt "$need" ]; then echo "### skip $name (only ${left} s left)" | tee -a "$OUT/all.log"; return; fi
  echo "### $name start $(date +%s)" | tee -a "$OUT/all.log"
  timeout "$((left < 200 ? left : 200))" python3 experiments/benchmarks/suite.py --benches train \
    --n-jitted-steps 1 --init numpy --repeats 10 --out "$OUT/suite.jsonl" "$@" 2>&1 \
    | grep -v "cuda_timer" | cut -c1-900 | tee -a "$OUT/all.log"
  echo "### end $name $(date +%s)" | tee -a "$OUT/all.log"
}
variant ncsnpp_f32_default 60 --models ncsnpp_ve --dtypes float32
variant ncsnpp_bf16_xla 140 --models ncsnpp_ve --dtypes bfloat16 --train-compiler-options xla
variant ncsnpp_bf16_default 70 --models ncsnpp_ve --dtypes bfloat16
variant ddpmpp_bf16_xla 140 --models ddpmpp_vp --dtypes bfloat16 --train-compiler-options xla
variant ddpmpp_bf16_default 70 --models ddpmpp_vp --dtypes bfloat16
