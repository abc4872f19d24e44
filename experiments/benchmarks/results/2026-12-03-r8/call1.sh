#!/usr/bin/env bash
# Eighth round, first device call (one H200), one host, a fresh process per row, no JAX
# compilation cache:
#  (a) init_bench.py: model.init of NCSN++ and DDPM++ compiled for the GPU (the old
#      init_variables) against the host's CPU (the new one) and tracing only (restores);
#  (b) NCSN++ float32 training, 1 step per call: XLA's default (this host's baseline), Triton
#      GEMMs off, and Triton GEMMs off + the fusion autotuner off (never measured together);
#  (c) DDPM++ float32, both off, if time is left.
DEADLINE_S=565
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
ST="experiments/benchmarks/suite.py --benches train --dtypes float32 --n-jitted-steps 1 --init numpy --repeats 10 --out $OUT/suite.jsonl"
NOTRITON='{"xla_gpu_enable_triton_gemm": false}'
BOTH='{"xla_gpu_enable_triton_gemm": false, "xla_gpu_experimental_enable_fusion_autotuner": false}'
variant init 150 experiments/benchmarks/init_bench.py --out "$OUT/init.jsonl"
variant train_ncsnpp 80 $ST --models ncsnpp_ve
variant train_ncsnpp_both 75 $ST --models ncsnpp_ve --train-compiler-options "$BOTH"
variant train_ncsnpp_notriton 75 $ST --models ncsnpp_ve --train-compiler-options "$NOTRITON"
variant train_ddpmpp_both 75 $ST --models ddpmpp_vp --train-compiler-options "$BOTH"
