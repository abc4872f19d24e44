#!/usr/bin/env bash
# Sixth round, second device call (one H200). Call 1 found that this XLA no longer knows
# --xla_gpu_enable_llvm_module_compilation_parallelism. So: which compile flags does this
# XLA have, and where does the cold compile's time go? compile_bench.py --profile-dir traces the
# compile of the NCSN++ float32 train step (one step per call, batch 128) and sums XLA's trace
# annotations by name and by compiler thread; then the gradient alone, each in a fresh process.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
unset JAX_COMPILATION_CACHE_DIR
for so in $(find $(python3 -c "import site; print(' '.join(site.getsitepackages()))") \
    -name "*.so" \( -path "*jax_plugins*" -o -path "*jaxlib*" \) 2>/dev/null); do
  hits=$(strings "$so" | grep -E "^xla_gpu_[a-z0-9_]*(parallel|thread|split|llvm|ptx|autotun|compil)[a-z0-9_]*$" | sort -u)
  [ -n "$hits" ] && printf '## %s\n%s\n' "$so" "$hits" >> "$OUT/flags.txt"
done
wc -l "$OUT/flags.txt"
for prog in step grad; do
  echo "### $prog start $(date +%s)" | tee -a "$OUT/all.log"
  timeout 200 python3 experiments/benchmarks/compile_bench.py --programs "$prog" \
    --profile-dir "/tmp/prof" --out "$OUT/compile.jsonl" 2>&1 | grep -v "cuda_timer" \
    | cut -c1-3000 | tee -a "$OUT/all.log"
  echo "### end $prog $(date +%s)" | tee -a "$OUT/all.log"
done
