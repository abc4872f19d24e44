#!/usr/bin/env bash
# Twelfth round, second device call (one H100), a fresh process per row, no JAX compilation
# cache, convolutions in CUDA graphs, the first call's change in place. The forward with the
# parameters converted beforehand where the network only converts them to its compute dtype
# (--forward-params cast: the eleventh round's profile has ~160 conversion kernels per
# bfloat16 call), and also in the layouts XLA picks (cast_auto_layout: ~120 transposes of
# convolution weights per call), against the parameters as trained. Then a profile of the
# NCSN++ bfloat16 forward with the better variant.
DEADLINE_S=540
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
export XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION
FW="experiments/benchmarks/suite.py --benches forward --dtypes bfloat16,float32 --batches 512 --init numpy --repeats 20 --out $OUT/suite.jsonl"
variant fwd_ncsnpp_float32 45 $FW --models ncsnpp_ve
variant fwd_ncsnpp_cast 45 $FW --models ncsnpp_ve --forward-params cast
variant fwd_ncsnpp_auto 45 $FW --models ncsnpp_ve --forward-params cast_auto_layout
variant fwd_ncsnpp_float32_again 45 $FW --models ncsnpp_ve
variant fwd_ncsnpp_cast_again 45 $FW --models ncsnpp_ve --forward-params cast
variant fwd_ncsnpp_auto_again 45 $FW --models ncsnpp_ve --forward-params cast_auto_layout
variant fwd_ddpmpp_float32 40 $FW --models ddpmpp_vp
variant fwd_ddpmpp_auto 40 $FW --models ddpmpp_vp --forward-params cast_auto_layout
variant prof_auto 50 experiments/benchmarks/profile_step.py --model ncsnpp_ve --what forward \
  --dtype bfloat16 --batch 512 --forward-params cast_auto_layout --top 30 --out "$OUT/prof_ncsnpp_auto"
