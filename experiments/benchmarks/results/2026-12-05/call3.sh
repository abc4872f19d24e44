#!/usr/bin/env bash
# Ninth round, third device call: call 2's skipped row, typed as one command on call 2's warm
# H100 (the same host) with the device time left: bfloat16 NCSN++ training, 5 steps per call,
# with cuDNN convolutions recorded into CUDA graphs.
export XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 timeout 205 python3 experiments/benchmarks/suite.py \
  --benches train --models ncsnpp_ve --dtypes bfloat16 --init numpy --repeats 10 \
  --out $OUT/suite.jsonl 2>&1 | grep -v "cuda_timer" | tail -c 3000
