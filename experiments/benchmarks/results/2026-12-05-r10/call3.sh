#!/usr/bin/env bash
# Tenth round, third device call (one H100), a fresh process per row, no JAX compilation cache,
# convolutions in CUDA graphs (the `scoresde` commands' default): the ResNet blocks'
# time-embedding add behind an optimization barrier, fused into GroupNorm_1
# (`scoresde.models.group_norm.SHIFT_AFTER_BARRIER`, the new default), against XLA's own
# placement, cuDNN's side input with the broadcast written out (`--shift-in-convolution`).
# Call 2's profile: the broadcasts (`wrapped_broadcast*`) take 1.46 ms of the NCSN++ bfloat16
# batch-512 forward's 34.5 ms of kernels, ~0.9 ms of it at 32x32, where GroupNorm is XLA's.
DEADLINE_S=560
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
export XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION
FW="experiments/benchmarks/suite.py --benches forward --dtypes bfloat16,float32 --batches 512 --init numpy --repeats 20 --out $OUT/suite.jsonl"
TR="experiments/benchmarks/suite.py --benches train --models ncsnpp_ve --init numpy --repeats 10 --out $OUT/suite.jsonl"
variant fwd_barrier 70 $FW
variant fwd_side_input 70 $FW --shift-in-convolution
variant train_f32_barrier 110 $TR --dtypes float32
variant train_f32_side_input 110 $TR --dtypes float32 --shift-in-convolution
variant train_bf16_barrier 130 $TR --dtypes bfloat16
