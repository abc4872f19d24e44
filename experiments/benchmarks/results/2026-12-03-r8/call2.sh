#!/usr/bin/env bash
# Eighth round, second device call (one H200; the host of call 1 if it is still warm), a fresh
# process per row, no JAX compilation cache: the configs' own 5 steps per call, XLA's default
# against Triton GEMMs + the fusion autotuner off, float32 and bfloat16 NCSN++ (call 1
# measured 1 step per call; the fifth round found the 5-step program ~10 s longer to compile).
DEADLINE_S=565
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
ST="experiments/benchmarks/suite.py --benches train --models ncsnpp_ve --init numpy --repeats 10 --out $OUT/suite.jsonl"
BOTH='{"xla_gpu_enable_triton_gemm": false, "xla_gpu_experimental_enable_fusion_autotuner": false}'
variant train5_ncsnpp_f32 100 $ST --dtypes float32
variant train5_ncsnpp_f32_both 90 $ST --dtypes float32 --train-compiler-options "$BOTH"
variant train5_ncsnpp_bf16 120 $ST --dtypes bfloat16
variant train5_ncsnpp_bf16_both 110 $ST --dtypes bfloat16 --train-compiler-options "$BOTH"
