#!/usr/bin/env bash
# Seventh round, fourth device call (one H200, the host of calls 2 and 3): why DDPM++'s step
# compile barely moved with Triton GEMMs off (call 1) while NCSN++'s fell by 16 s: the traced
# compile of the DDPM++ float32 step (one step per call), XLA's default against
# --xla_gpu_enable_triton_gemm=false, a fresh process each, no JAX compilation cache.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
unset JAX_COMPILATION_CACHE_DIR
for f in "" "--xla_gpu_enable_triton_gemm=false"; do
  XLA_FLAGS="$f" timeout 110 python3 experiments/benchmarks/compile_bench.py --model ddpmpp_vp \
    --programs step --profile-dir /tmp/profd --out $OUT/compile_ddpmpp.jsonl 2>&1 \
    | grep -v cuda_timer | cut -c1-400
done
