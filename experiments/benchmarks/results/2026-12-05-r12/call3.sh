#!/usr/bin/env bash
# Twelfth round, third device call (one H100), a fresh process per row, no JAX compilation
# cache, convolutions in CUDA graphs. The likelihood (bits/dim through the probability-flow
# ODE, batch 128, Rademacher) of the current code: the tenth and eleventh rounds' inference
# barriers and the first call's shift in the GroupNorm kernel all act inside its jvp, and its
# last H100 figures are from the second round (H200: seventh round). DDPM++ at rtol = atol =
# 1e-5 and NCSN++ at 1e-3 (the seventh round's rows), then the DDPM++ PC sampler.
DEADLINE_S=420
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
export XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION
L="experiments/benchmarks/likelihood_bench.py --init-scale 1"
variant lik_ddpmpp 120 $L --models ddpmpp_vp
variant lik_ncsnpp_1e-3 120 $L --models ncsnpp_ve --rtol 1e-3 --atol 1e-3
variant pc_ddpmpp 60 experiments/benchmarks/suite.py --benches pc --pc-steps 200 --init numpy \
  --models ddpmpp_vp --out $OUT/suite.jsonl
