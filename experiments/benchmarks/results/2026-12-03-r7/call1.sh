#!/usr/bin/env bash
# Seventh round, first device call (one H200), all rows on one host (fresh process each, no
# JAX compilation cache, NCSN++ float32, batch 128, one step per call):
#  (a) compile_bench.py --programs step, traced: today's GroupNorm (trace-time "auto", jitted
#      kernel wrappers) against 9b26938's (old_tree.sh): lowering should drop ~60%, the compile
#      (and the optimized program's size) should not move;
#  (b) the same with Triton GEMMs off (cuBLAS): how many of the ~3,700 autotuning modules are
#      GEMM tilings;
#  (c) suite.py train, today's code: kernel eligible on CUDA, throughput, compile with lowering;
#      then with {"xla_gpu_enable_triton_gemm": false} for the step alone (same host A/B);
#  (d) DDPM++ the same pair, if time is left.
# Variants are skipped when fewer seconds are left than they need (the call has 600).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
unset JAX_COMPILATION_CACHE_DIR XLA_FLAGS
bash experiments/benchmarks/results/2026-12-03-r7/old_tree.sh || exit 1
T0=$(date +%s)
variant() {  # name, needed seconds, directory, XLA_FLAGS, command...
  local name=$1 need=$2 dir=$3 flags=$4; shift 4
  local left=$((575 - $(date +%s) + T0))
  if [ "$left" -lt "$need" ]; then echo "### skip $name (only ${left} s left)" | tee -a "$OUT/all.log"; return; fi
  echo "### $name dir=$dir XLA_FLAGS='$flags' start $(date +%s)" | tee -a "$OUT/all.log"
  (cd "$dir" && PYTHONPATH="/tmp/site:$dir" XLA_FLAGS="$flags" timeout "$((left < 200 ? left : 200))" \
    python3 "$@" 2>&1) | grep -v "cuda_timer" | cut -c1-2500 | tee -a "$OUT/all.log"
  echo "### end $name $(date +%s)" | tee -a "$OUT/all.log"
}
NEW=$PWD
CB="experiments/benchmarks/compile_bench.py --programs step --profile-dir /tmp/prof"
ST="experiments/benchmarks/suite.py --benches train --dtypes float32 --n-jitted-steps 1 --init numpy --repeats 10 --out $OUT/suite.jsonl"
NOTRITON='{"xla_gpu_enable_triton_gemm": false}'
variant cb_new 80 "$NEW" "" $CB --out "$OUT/compile.jsonl"
variant cb_old 80 /tmp/old "" $CB --out "$OUT/compile_old.jsonl"
variant cb_new_notriton 70 "$NEW" "--xla_gpu_enable_triton_gemm=false" $CB --out "$OUT/compile.jsonl"
variant train_ncsnpp 90 "$NEW" "" $ST --models ncsnpp_ve
variant train_ncsnpp_notriton 90 "$NEW" "" $ST --models ncsnpp_ve --train-compiler-options "$NOTRITON"
variant train_ddpmpp 90 "$NEW" "" $ST --models ddpmpp_vp
variant train_ddpmpp_notriton 90 "$NEW" "" $ST --models ddpmpp_vp --train-compiler-options "$NOTRITON"
