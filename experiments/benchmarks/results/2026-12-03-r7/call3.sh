#!/usr/bin/env bash
# Seventh round, third device call (one H200), one host, fresh process each, no JAX
# compilation cache, today's code (GroupNorm "auto": the kernel at <= 16x16 on CUDA):
#  (a) PC sampler (reverse diffusion + 1 Langevin step), 200 steps scaled to 1000, batch 128,
#      DDPM++ and NCSN++: not measured with the kernel before;
#  (b) likelihood, DDPM++, rtol = atol = 1e-5, batch 128: ms per NFE with the kernel, which the
#      divergence runs under jax.jvp (the kernel's custom_jvp);
#  (c) bfloat16 NCSN++ training, 5 steps per call, XLA's default against the fusion autotuner
#      off for the step alone: the same-host A/B the sixth round could not get;
#  (d) likelihood, NCSN++, rtol = atol = 1e-3 (fewer NFE, the same per-NFE work), if time is left.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
unset JAX_COMPILATION_CACHE_DIR XLA_FLAGS
T0=$(date +%s)
variant() {  # name, needed seconds, command...
  local name=$1 need=$2; shift 2
  local left=$((420 - $(date +%s) + T0))
  if [ "$left" -lt "$need" ]; then echo "### skip $name (only ${left} s left)" | tee -a "$OUT/all.log"; return; fi
  echo "### $name start $(date +%s)" | tee -a "$OUT/all.log"
  timeout "$((left < 200 ? left : 200))" python3 "$@" 2>&1 | grep -v "cuda_timer" \
    | cut -c1-2500 | tee -a "$OUT/all.log"
  echo "### end $name $(date +%s)" | tee -a "$OUT/all.log"
}
S="experiments/benchmarks/suite.py --out $OUT/suite.jsonl --init numpy"
L="experiments/benchmarks/likelihood_bench.py --init-scale 1"
NOFA='{"xla_gpu_experimental_enable_fusion_autotuner": false}'
NOTRITON='{"xla_gpu_enable_triton_gemm": false}'
# (call 3: the same host as call 2, which measured NCSN++ bfloat16 with XLA's default)
variant train_ncsnpp_bf16_notriton 110 $S --benches train --models ncsnpp_ve --dtypes bfloat16 \
  --repeats 10 --train-compiler-options "$NOTRITON"
variant train_ddpmpp_bf16 110 $S --benches train --models ddpmpp_vp --dtypes bfloat16 --repeats 10
variant train_ddpmpp_bf16_notriton 110 $S --benches train --models ddpmpp_vp --dtypes bfloat16 \
  --repeats 10 --train-compiler-options "$NOTRITON"
