#!/usr/bin/env bash
# Sixth round, third device call (one H200). Call 2's trace: of the 52 s cold compile of the
# NCSN++ float32 step, the compile pool (16 threads) spent ~270 thread-seconds on ~4,000
# autotuning candidate modules (scheduling, LLVM, PTX->CUBIN). Here XLA's fusion autotuner
# (--xla_gpu_experimental_enable_fusion_autotuner, on by default) is turned off: compile time
# (compile_bench.py, traced) and training throughput (suite.py), each in a fresh process, no
# JAX compilation cache; then the default's trace. Variants are skipped near the 560 s mark.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
unset JAX_COMPILATION_CACHE_DIR
T0=$(date +%s)
NOFA="--xla_gpu_experimental_enable_fusion_autotuner=false"
variant() {  # name, needed seconds, XLA_FLAGS, command...
  local name=$1 need=$2 flags=$3; shift 3
  local left=$((560 - $(date +%s) + T0))
  if [ "$left" -lt "$need" ]; then echo "### skip $name (only ${left} s left)" | tee -a "$OUT/all.log"; return; fi
  echo "### $name XLA_FLAGS='$flags' start $(date +%s)" | tee -a "$OUT/all.log"
  XLA_FLAGS="$flags" timeout "$((left < 200 ? left : 200))" python3 "$@" 2>&1 | grep -v "cuda_timer" \
    | cut -c1-600 | tee -a "$OUT/all.log"
  echo "### end $name $(date +%s)" | tee -a "$OUT/all.log"
}
CB="experiments/benchmarks/compile_bench.py --programs step --profile-dir /tmp/prof --out $OUT/compile.jsonl"
ST="experiments/benchmarks/suite.py --benches train --dtypes float32 --n-jitted-steps 1 --init numpy --repeats 10 --out $OUT/suite.jsonl"
variant cb_nofa 70 "$NOFA" $CB
variant train_ncsnpp_nofa 80 "$NOFA" $ST --models ncsnpp_ve
variant train_ddpmpp_nofa 80 "$NOFA" $ST --models ddpmpp_vp
variant train_ncsnpp_bf16_nofa 110 "$NOFA" ${ST/float32/bfloat16} --models ncsnpp_ve
variant cb_default 75 "" $CB
