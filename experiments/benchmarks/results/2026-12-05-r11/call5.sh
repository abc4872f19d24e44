#!/usr/bin/env bash
# Eleventh round, fifth device call (one H100): the forward rows of the shipped code with the
# suite's new pipelined figure (calls dispatched back to back, one wait at the end) next to the
# synchronized one, and NCSN++ without the downsampling barrier (--fir-fused-down).
# Call 4's profile: 32.85 ms of kernels per bfloat16 NCSN++ call, against ~34.6 ms per
# synchronized call (the host's dispatch and the CUDA graph's launch between calls).
DEADLINE_S=150
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
export XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION
FW="experiments/benchmarks/suite.py --benches forward --dtypes bfloat16,float32 --batches 512 --init numpy --repeats 20 --out $OUT/suite.jsonl"
variant fwd_final 60 $FW
variant fwd_fused_down 40 $FW --models ncsnpp_ve --fir-fused-down
