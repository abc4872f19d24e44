#!/usr/bin/env bash
# Twelfth round, seventh device call (one H100): attention at inference in bfloat16 as cuDNN's
# fused kernel (scoresde.models.attention, the default now) against XLA's two matmuls around a
# softmax pass (--xla-attention; the eleventh round's profile: ~2.5 ms per NCSN++ call in the
# 16x16 attention blocks). Parameters as trained, rows alternating on one host, the order of call 6 reversed.
DEADLINE_S=200
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
export XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION
FW="experiments/benchmarks/suite.py --benches forward --dtypes bfloat16 --batches 512 --init numpy --repeats 20 --out $OUT/suite.jsonl"
variant fwd_ncsnpp_xla 30 $FW --models ncsnpp_ve --xla-attention
variant fwd_ncsnpp_fused 30 $FW --models ncsnpp_ve
variant fwd_ddpmpp_xla 30 $FW --models ddpmpp_vp --xla-attention
variant fwd_ddpmpp_fused 30 $FW --models ddpmpp_vp
