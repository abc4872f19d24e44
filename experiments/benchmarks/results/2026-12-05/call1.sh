#!/usr/bin/env bash
# Ninth round, first device call (one H100: the first H100 lent since the third round), a fresh
# process per row, no JAX compilation cache:
#  (a) the forward at batch 512, float32 and bfloat16, both networks: XLA's defaults, then with
#      cuDNN convolutions recorded into CUDA graphs as well (`+CONVOLUTION`; XLA's default list
#      of command-buffer commands leaves them out, so every convolution is its own host launch
#      and splits the graphs around it);
#  (b) float32 training, 5 steps per call (the configs' n_jitted_steps): NCSN++ with XLA's
#      defaults and with +CONVOLUTION, then DDPM++ with the defaults.
DEADLINE_S=560
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv | tee -a "$OUT/all.log"
nproc | tee -a "$OUT/all.log"
FW="experiments/benchmarks/suite.py --benches forward --dtypes bfloat16,float32 --batches 512 --init numpy --repeats 20 --out $OUT/suite.jsonl"
TR="experiments/benchmarks/suite.py --benches train --dtypes float32 --init numpy --repeats 10 --out $OUT/suite.jsonl"
CONV="--xla_gpu_enable_command_buffer=+CONVOLUTION"
variant fwd_default 75 $FW
export XLA_FLAGS=$CONV
variant fwd_conv 75 $FW
unset XLA_FLAGS
variant train_ncsnpp_f32 110 $TR --models ncsnpp_ve
export XLA_FLAGS=$CONV
variant train_ncsnpp_f32_conv 110 $TR --models ncsnpp_ve
unset XLA_FLAGS
variant train_ddpmpp_f32 100 $TR --models ddpmpp_vp
