#!/usr/bin/env bash
# Tenth round, second device call (one H100): the bfloat16 batch-512 forward, the one H100
# target still short (call 1: NCSN++ 14,211, DDPM++ 14,737 img*NFE/s against 15,000).
#  (a) where its device time goes, both networks (`profile_step.py --what forward`);
#  (b) GroupNorm XLA / `auto` / the kernel at every size, one process per network, same weights
#      (the fourth round, on an H200: NCSN++ bfloat16 +2.8-3.0% with the kernel at every size
#      against +0.7% for `auto`; DDPM++ -0.3 to -1.4%).
# Convolutions in CUDA graphs, as the `scoresde` commands run.
DEADLINE_S=400
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
export XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION
PR="experiments/benchmarks/profile_step.py --what forward --dtype bfloat16 --batch 512 --top 30"
FW="experiments/benchmarks/suite.py --benches forward --dtypes bfloat16 --batches 512 --init numpy --repeats 20 --group-norm-impls xla,auto,pallas --out $OUT/suite.jsonl"
variant prof_ncsnpp 70 $PR --model ncsnpp_ve --out $OUT/prof_ncsnpp
variant prof_ddpmpp 70 $PR --model ddpmpp_vp --out $OUT/prof_ddpmpp
variant gn_ab_ncsnpp 70 $FW --models ncsnpp_ve
variant gn_ab_ddpmpp 70 $FW --models ddpmpp_vp
