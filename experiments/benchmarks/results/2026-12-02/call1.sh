#!/usr/bin/env bash
# Fourth round, first device call (one H200): the fused GroupNorm kernel on the GPU, checked
# against flax and timed alone, then the suite's forward and train benches with XLA's
# GroupNorm and the kernel side by side (same process, same weights).
# Run from the repository root with .whl (ml_collections) carried.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
log="$OUT/all.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$log"
python3 -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee -a "$log"
B=experiments/benchmarks
python3 $B/groupnorm_bench.py --variants flax,kernel,kernel_jvp --dtypes float32,bfloat16 \
  --repeats 20 --bandwidth 4300 2>&1 | tee -a "$log"
python3 $B/groupnorm_bench.py --variants flax,kernel --dtypes bfloat16 --batch 512 \
  --repeats 20 --bandwidth 4300 2>&1 | tee -a "$log"
python3 $B/suite.py --benches forward --batches 512 --dtypes bfloat16,float32 \
  --group-norm-impls xla,auto --init numpy --out "$OUT/suite.jsonl" 2>&1 | tee -a "$log"
python3 $B/suite.py --benches train --models ncsnpp_ve --dtypes float32 \
  --group-norm-impls xla,auto --init numpy --out "$OUT/suite.jsonl" 2>&1 | tee -a "$log"
python3 $B/groupnorm_bench.py --sweep --dtypes bfloat16,float32 --repeats 10 \
  --bandwidth 4300 2>&1 | tee "$OUT/sweep.log"
