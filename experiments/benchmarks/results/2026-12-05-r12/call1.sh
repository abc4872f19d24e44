#!/usr/bin/env bash
# Twelfth round, first device call (one H100), a fresh process per row, no JAX compilation
# cache, convolutions in CUDA graphs. The change: at inference the GroupNorm kernel (16x16 and
# below) reads the time-embedding shift itself and adds it as it loads x
# (scoresde.models.group_norm.SHIFT_IN_KERNEL); --shift-outside-kernel is the code before,
# where XLA folds x + shift into the convolution as its side input (a broadcast written out and
# read back: 0.58 ms per bfloat16 batch-512 NCSN++ call in the eleventh round's profile).
# Forward rows alternate on one host; then the PC sampler (200 steps, scaled to 1000).
DEADLINE_S=540
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
export XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION
FW="experiments/benchmarks/suite.py --benches forward --dtypes bfloat16,float32 --batches 512 --init numpy --repeats 20 --out $OUT/suite.jsonl"
PC="experiments/benchmarks/suite.py --benches pc --pc-steps 200 --init numpy --out $OUT/suite.jsonl"
variant fwd_ncsnpp_in_kernel 45 $FW --models ncsnpp_ve
variant fwd_ncsnpp_outside 45 $FW --models ncsnpp_ve --shift-outside-kernel
variant fwd_ncsnpp_in_kernel_again 45 $FW --models ncsnpp_ve
variant fwd_ncsnpp_outside_again 45 $FW --models ncsnpp_ve --shift-outside-kernel
variant fwd_ddpmpp_in_kernel 40 $FW --models ddpmpp_vp
variant fwd_ddpmpp_outside 40 $FW --models ddpmpp_vp --shift-outside-kernel
variant pc_ncsnpp_in_kernel 60 $PC --models ncsnpp_ve
variant pc_ncsnpp_outside 60 $PC --models ncsnpp_ve --shift-outside-kernel
