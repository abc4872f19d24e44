#!/usr/bin/env bash
# Ninth round, second device call (one H200; the first try was taken back mid-call, and with
# the device time left it is cut to three rows under 400 s): the same
# host for every row, a fresh process per row, no JAX compilation cache.
#  (a) bfloat16 NCSN++ training, 5 steps per call, where the host's dispatch (~140-150 ms a
#      call, ~350 cuDNN convolution launches a step) is nearly the device time: XLA's defaults
#      against cuDNN convolutions recorded into CUDA graphs (`+CONVOLUTION`; call 1 measured
#      the float32 dispatch falling 254 -> 48 ms a call);
#  (b) the same with the two compile-time options of the seventh and eighth rounds (Triton
#      GEMMs and the fusion autotuner off), which were left out of the defaults for the
#      dispatch time they add: with convolutions in graphs that cost may be gone;
DEADLINE_S=400
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
TR="experiments/benchmarks/suite.py --benches train --models ncsnpp_ve --init numpy --repeats 10 --out $OUT/suite.jsonl"
CONV="--xla_gpu_enable_command_buffer=+CONVOLUTION"
ALL="$CONV --xla_gpu_enable_triton_gemm=false --xla_gpu_experimental_enable_fusion_autotuner=false"
variant train5_bf16 125 $TR --dtypes bfloat16
export XLA_FLAGS=$CONV
variant train5_bf16_conv 125 $TR --dtypes bfloat16
export XLA_FLAGS=$ALL
variant train5_bf16_all 115 $TR --dtypes bfloat16
unset XLA_FLAGS
