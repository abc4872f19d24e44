#!/usr/bin/env bash
# Sixth round, first device call (one H200): does compiling XLA's per-kernel LLVM modules on
# several threads (--xla_gpu_enable_llvm_module_compilation_parallelism, off by default) cut the
# cold train-step compile? Fresh process per variant, no JAX compilation cache, float32, batch
# 128, one step per call. Variants are skipped once the call's 560 s are nearly used up.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
unset JAX_COMPILATION_CACHE_DIR
nproc | tee -a "$OUT/all.log"
T0=$(date +%s)
PAR="--xla_gpu_enable_llvm_module_compilation_parallelism=true"
variant() {  # name, model, dtype, needed seconds, XLA_FLAGS
  local left=$((560 - $(date +%s) + T0))
  if [ "$left" -lt "$4" ]; then echo "### skip $1 (only ${left} s left)" | tee -a "$OUT/all.log"; return; fi
  echo "### $1 XLA_FLAGS='$5' start $(date +%s)" | tee -a "$OUT/all.log"
  XLA_FLAGS="$5" timeout "$((left < 170 ? left : 170))" python3 experiments/benchmarks/suite.py \
    --benches train --models "$2" --dtypes "$3" --n-jitted-steps 1 --init numpy --repeats 10 \
    --out "$OUT/suite.jsonl" 2>&1 | grep -v "cuda_timer" | tee -a "$OUT/all.log"
  echo "### end $1 $(date +%s)" | tee -a "$OUT/all.log"
}
variant ncsnpp_par ncsnpp_ve float32 60 "$PAR"
variant ncsnpp_base ncsnpp_ve float32 90 ""
variant ncsnpp_par16 ncsnpp_ve float32 60 "$PAR --xla_gpu_force_compilation_parallelism=16"
variant ddpmpp_par ddpmpp_vp float32 60 "$PAR"
variant ddpmpp_base ddpmpp_vp float32 90 ""
variant ncsnpp_bf16_par ncsnpp_ve bfloat16 100 "$PAR"
