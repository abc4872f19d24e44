#!/usr/bin/env bash
# Eleventh round, second device call (one H100), a fresh process per row, no JAX compilation
# cache, convolutions in CUDA graphs. The library now (1) hands the decoder's skip connections
# to the ResNet blocks apart, so the shortcut convolution reads them in place and XLA need not
# write the concatenation out (scoresde.models.ncsnpp.SKIPS_APART; --concatenate-skips is the
# code before), and (2) writes the normalized input of the FIR downsampling blocks out at
# inference (scoresde.models.layers.MATERIALIZE_BEFORE_DOWNSAMPLING; --fir-fused-down is the
# code before). Forward rows alternate new / old / materialize-only / new / old.
DEADLINE_S=545
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
export XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION
FW="experiments/benchmarks/suite.py --benches forward --dtypes bfloat16,float32 --batches 512 --init numpy --repeats 20 --out $OUT/suite.jsonl"
TR="experiments/benchmarks/suite.py --benches train --models ncsnpp_ve --dtypes float32 --init numpy --repeats 10 --out $OUT/suite.jsonl"
variant fwd_new 60 $FW
variant fwd_old 60 $FW --concatenate-skips --fir-fused-down
variant fwd_materialize_only 60 $FW --concatenate-skips
variant fwd_new_again 60 $FW
variant fwd_old_again 60 $FW --concatenate-skips --fir-fused-down
variant train_f32_new 105 $TR
variant train_f32_concatenated 105 $TR --concatenate-skips
