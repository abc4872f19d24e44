#!/usr/bin/env bash
# Ninth round, second device call (asked for an H200, ran on an H100; the first try was taken
# back mid-call, and with
# the device time left it is cut to the first pair, under 280 s): the same
# host for every row, a fresh process per row, no JAX compilation cache.
# bfloat16 NCSN++ training, 5 steps per call, where the host's dispatch (~140-150 ms a
#      call, ~350 cuDNN convolution launches a step) is nearly the device time: XLA's defaults
#      against cuDNN convolutions recorded into CUDA graphs (`+CONVOLUTION`; call 1 measured
#      the float32 dispatch falling 254 -> 48 ms a call).
DEADLINE_S=280
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
TR="experiments/benchmarks/suite.py --benches train --models ncsnpp_ve --init numpy --repeats 10 --out $OUT/suite.jsonl"
CONV="--xla_gpu_enable_command_buffer=+CONVOLUTION"
variant train5_bf16 125 $TR --dtypes bfloat16
export XLA_FLAGS=$CONV
variant train5_bf16_conv 125 $TR --dtypes bfloat16
unset XLA_FLAGS
