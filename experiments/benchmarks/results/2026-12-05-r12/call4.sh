#!/usr/bin/env bash
# Twelfth round, fourth device call (one H100, another host than calls 1-3): the NCSN++
# bfloat16 batch-512 forward of the final code, parameters as trained against parameters
# prepared for inference (--forward-params cast_auto_layout), alternating, to see the spread
# of the target's figure on a third host.
DEADLINE_S=300
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
export XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION
FW="experiments/benchmarks/suite.py --benches forward --models ncsnpp_ve --dtypes bfloat16 --batches 512 --init numpy --repeats 20 --out $OUT/suite.jsonl"
variant fwd_float32 35 $FW
variant fwd_auto 35 $FW --forward-params cast_auto_layout
variant fwd_float32_again 35 $FW
variant fwd_auto_again 35 $FW --forward-params cast_auto_layout
