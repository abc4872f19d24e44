#!/usr/bin/env bash
# Thirteenth round, first device call: PREPARED ON 2026-12-05 AND NOT RUN (no device machine
# was lent that session; docs/benchmarks.md, "Thirteenth round"). Run from the repository root
# with .whl carried: bash experiments/benchmarks/results/2026-12-05-r13/call1.sh
#
# 1. The new parameter update (per-leaf arithmetic jitted once per leaf shape): tracing and
#    lowering on this host, and the update alone against optax's chain (optimizer_bench: the
#    same optimized program and speed are expected, as on the CPU).
# 2. Where the autotuning of the cold compile goes: XLA's autotuning log of the NCSN++ float32
#    step (one step per call, XLA's defaults), to count the instructions it tunes and the
#    candidates of each (the sixth and seventh rounds' traces counted ~3,300-4,000 candidate
#    modules compiled in the pool even with Triton GEMMs off; cuDNN's convolution algorithms,
#    each compiled as a module of its own, are the suspect).
# 3. One option predicted to cut those candidates: xla_gpu_exclude_nondeterministic_ops (no
#    nondeterministic cuDNN algorithms for the backward convolutions), and the two options of
#    the seventh and eighth rounds together, on the same host as the default.
DEADLINE_S=560
source experiments/benchmarks/results/2026-12-03-r8/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$OUT/all.log"
CB="experiments/benchmarks/compile_bench.py --model ncsnpp_ve --programs step --out $OUT/compile.jsonl"
variant lower_cuda 30 $CB --lower-for cuda
export XLA_FLAGS="--xla_gpu_dump_autotune_logs_to=/tmp/autotune_default.txt"
variant compile_default 150 $CB --profile-dir /tmp/prof_default
unset XLA_FLAGS
gzip -c /tmp/autotune_default.txt > "$OUT/autotune_default.txt.gz" 2>/dev/null
variant compile_nondeterministic_off 150 $CB \
  --train-compiler-options '{"xla_gpu_exclude_nondeterministic_ops": true}'
variant compile_both_off 150 $CB \
  --train-compiler-options '{"xla_gpu_enable_triton_gemm": false, "xla_gpu_experimental_enable_fusion_autotuner": false}'
variant optimizer_update 90 experiments/benchmarks/optimizer_bench.py --models ncsnpp_ve
