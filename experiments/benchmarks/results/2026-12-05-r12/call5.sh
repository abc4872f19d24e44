#!/usr/bin/env bash
# Twelfth round, fifth device call (one H100): the PC sampler with NCSN++ computing in
# bfloat16 (200 steps, scaled to 1000), parameters as trained against converted beforehand
# (--forward-params cast). Does XLA already hoist the weight conversions out of the sampler's
# loop (then no difference), or does every NFE pay them (then the cast rows are faster)?
DEADLINE_S=200
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
export XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION
PC="experiments/benchmarks/suite.py --benches pc --pc-steps 200 --init numpy --models ncsnpp_ve --pc-dtype bfloat16 --out $OUT/suite.jsonl"
variant pc_bf16_float32_params 80 $PC
variant pc_bf16_cast 80 $PC --forward-params cast
