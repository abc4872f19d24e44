# Sourced by this round's call scripts (run from the repository root on the GPU machine, with
# .whl carried): installs the carried wheels, clears the caches and flags that would make a
# fresh process not cold, and defines `variant NAME NEEDED_S COMMAND...`, which runs one fresh
# python3 process unless fewer than NEEDED_S seconds are left before DEADLINE_S (counted from
# sourcing), and logs its start and end to $OUT/all.log.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
unset JAX_COMPILATION_CACHE_DIR XLA_FLAGS
T0=$(date +%s)
variant() {
  local name=$1 need=$2; shift 2
  local left=$((DEADLINE_S - $(date +%s) + T0))
  if [ "$left" -lt "$need" ]; then
    echo "### skip $name (only ${left} s left)" | tee -a "$OUT/all.log"
    return
  fi
  echo "### $name start $(date +%s)" | tee -a "$OUT/all.log"
  timeout "$((left < 240 ? left : 240))" python3 "$@" 2>&1 | grep -v "cuda_timer" \
    | cut -c1-2500 | tee -a "$OUT/all.log"
  echo "### end $name $(date +%s)" | tee -a "$OUT/all.log"
}
