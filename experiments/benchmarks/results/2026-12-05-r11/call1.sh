#!/usr/bin/env bash
# Eleventh round, first device call (one H100), a fresh process per row, no JAX compilation
# cache, convolutions in CUDA graphs (the `scoresde` commands' default). NCSN++'s FIR layers
# (tenth round's profile): the 16->32 upsampling's nested-concatenate interleave writes at
# ~1 TB/s, and XLA computes the 32->16 downsampling block's GroupNorm+SiLU once per tap.
# Variants (suite.py flags, fir_bench.py forms): --fir-upsample pad (interior pads summed, the
# new library form) / stack (the form before) / select (parity select), and
# --fir-materialize-down (a barrier before each downsampling). Both stack rows bracket the call
# to show the host's drift.
DEADLINE_S=560
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
export XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION
FW="experiments/benchmarks/suite.py --benches forward --models ncsnpp_ve --dtypes bfloat16,float32 --batches 512 --init numpy --repeats 20 --out $OUT/suite.jsonl"
TR="experiments/benchmarks/suite.py --benches train --models ncsnpp_ve --dtypes float32 --init numpy --repeats 10 --out $OUT/suite.jsonl"
variant fwd_stack 50 $FW --fir-upsample stack
variant fir_bench 80 experiments/benchmarks/fir_bench.py --batch 512 --dtype bfloat16 --repeats 30
variant fwd_pad 50 $FW
variant fwd_select 50 $FW --fir-upsample select
variant fwd_pad_materialized 50 $FW --fir-materialize-down
variant fwd_stack_materialized 50 $FW --fir-upsample stack --fir-materialize-down
variant fwd_stack_again 50 $FW --fir-upsample stack
variant train_f32_pad 110 $TR
variant train_f32_stack 110 $TR --fir-upsample stack
