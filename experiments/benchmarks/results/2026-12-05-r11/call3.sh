#!/usr/bin/env bash
# Eleventh round, third device call (one H100), a fresh process per row, no JAX compilation
# cache, convolutions in CUDA graphs. The shipped code: the FIR downsampling block's normalized
# input written out at inference (--fir-fused-down is the code before), the skip connections
# concatenated as before (handing them apart measured slower in call 2, reverted). Forward rows
# alternate; then the PC sampler (200 steps, scaled to 1000) with the shipped code, and for
# NCSN++ also without this round's and the tenth round's inference barriers.
DEADLINE_S=480
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
export XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION
FW="experiments/benchmarks/suite.py --benches forward --dtypes bfloat16,float32 --batches 512 --init numpy --repeats 20 --out $OUT/suite.jsonl"
PC="experiments/benchmarks/suite.py --benches pc --pc-steps 200 --init numpy --out $OUT/suite.jsonl"
variant fwd_final 60 $FW
variant fwd_fused_down 40 $FW --models ncsnpp_ve --fir-fused-down
variant fwd_final_ncsnpp 40 $FW --models ncsnpp_ve
variant fwd_fused_down_again 40 $FW --models ncsnpp_ve --fir-fused-down
variant pc_ncsnpp_final 60 $PC --models ncsnpp_ve
variant pc_ncsnpp_no_barriers 60 $PC --models ncsnpp_ve --fir-fused-down --shift-in-convolution
variant pc_ddpmpp_final 60 $PC --models ddpmpp_vp
