#!/usr/bin/env bash
# Ninth round, second device call: bfloat16 training (5 steps per call), where the host's
# dispatch (~140-150 ms a call on an H200, ~350 cuDNN convolution launches a step) is nearly the
# device time, with XLA's defaults and with cuDNN convolutions recorded into CUDA graphs
# (`+CONVOLUTION`), both networks; a fresh process per row, no JAX compilation cache.
DEADLINE_S=560
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
TR="experiments/benchmarks/suite.py --benches train --dtypes bfloat16 --init numpy --repeats 10 --out $OUT/suite.jsonl"
CONV="--xla_gpu_enable_command_buffer=+CONVOLUTION"
variant train_ncsnpp_bf16 125 $TR --models ncsnpp_ve
export XLA_FLAGS=$CONV
variant train_ncsnpp_bf16_conv 125 $TR --models ncsnpp_ve
unset XLA_FLAGS
variant train_ddpmpp_bf16 105 $TR --models ddpmpp_vp
export XLA_FLAGS=$CONV
variant train_ddpmpp_bf16_conv 105 $TR --models ddpmpp_vp
unset XLA_FLAGS
