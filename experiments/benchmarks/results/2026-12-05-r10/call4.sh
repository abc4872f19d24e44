#!/usr/bin/env bash
# Tenth round, fourth device call (one H100), fresh processes, no JAX compilation cache,
# convolutions in CUDA graphs. Call 3 compiled the float32 NCSN++ train step in 87.6 s with
# the barrier against 71.9 s without (the barrier's row first). The barrier now acts on the
# forward value only (a custom JVP: the tangents and cotangents pass without one, so the
# gradient is XLA's as before). Here the side-input row runs first, then the barrier's, so an
# order effect would show reversed; then the bfloat16 forward with the final code.
DEADLINE_S=380
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
export XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION
TR="experiments/benchmarks/suite.py --benches train --models ncsnpp_ve --dtypes float32 --init numpy --repeats 10 --out $OUT/suite.jsonl"
FW="experiments/benchmarks/suite.py --benches forward --dtypes bfloat16 --batches 512 --init numpy --repeats 20 --out $OUT/suite.jsonl"
variant train_f32_side_input 110 $TR --shift-in-convolution
variant train_f32_barrier 110 $TR
variant fwd_bf16_barrier 50 $FW
