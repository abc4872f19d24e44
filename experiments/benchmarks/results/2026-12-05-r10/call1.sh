#!/usr/bin/env bash
# Tenth round, first device call (one H100), a fresh process per row, no JAX compilation cache,
# every row with the `scoresde` commands' XLA default (cuDNN convolutions in CUDA graphs,
# `+CONVOLUTION`, ninth round):
#  (a) the forward at batch 512, bfloat16 and float32, both networks: the H100 figures of the
#      current code (the last H100 forward figures predate the GroupNorm kernel);
#  (b) float32 NCSN++ training at the configs' 5 steps per call, and at 1 step per call on the
#      same host (with convolutions in CUDA graphs, a call's dispatch is ~8-10 ms per step
#      against a ~55 ms step, so 1 step per call should no longer lose throughput);
#  (c) float32 DDPM++ training, 5 steps per call.
DEADLINE_S=560
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv | tee -a "$OUT/all.log"
nproc | tee -a "$OUT/all.log"
export XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION
FW="experiments/benchmarks/suite.py --benches forward --dtypes bfloat16,float32 --batches 512 --init numpy --repeats 20 --out $OUT/suite.jsonl"
TR="experiments/benchmarks/suite.py --benches train --dtypes float32 --init numpy --repeats 10 --out $OUT/suite.jsonl"
variant fwd 75 $FW
variant train_ncsnpp_f32_5 140 $TR --models ncsnpp_ve
variant train_ncsnpp_f32_1 120 $TR --models ncsnpp_ve --n-jitted-steps 1
variant train_ddpmpp_f32_5 120 $TR --models ddpmpp_vp
