r"""What the initial weights cost before the first training step: ``model.init`` compiled for
the accelerator, for the host's CPU, or only traced.

Every ``scoresde`` command builds the network's variables first: a fresh run needs their
values, a restore only their shapes. ``model.init`` of a full-size network is a program of
its own: JAX drops the unused forward pass, but each of the ~570 leaves keeps its key
derivation and random draw, ~64,000 optimized instructions for NCSN++ on a CPU. Per network, in one
process, this script times:

- ``abstract``: :func:`scoresde.experiment.abstract_variables` (tracing only: what the
  commands that restore a checkpoint use);
- ``host``: :func:`scoresde.experiment.init_variables` (compiled and run on the host's CPU,
  the variables then moved to the default device);
- ``device``: the same ``model.init`` jitted for the default device (what
  ``init_variables`` did before it moved to the CPU).

Each row splits its wall time into tracing, lowering and XLA compile (JAX's own
``jax.monitoring`` durations) and the rest (running, moving, and for ``device`` counting the
program's instructions: StableHLO ops as lowered, instructions as optimized). The ``host`` row also
compares its values with the ``device`` row's: the random bits do not depend on the
platform, the float arithmetic may differ in the last bit (fused multiply-adds).

GPU run (``.whl`` carried, as for the suite)::

    PYTHONPATH=. python experiments/benchmarks/init_bench.py --out $OUT/init.jsonl

CPU smoke run (the configs' ``smoke`` networks; on a CPU ``host`` and ``device`` are the
same platform)::

    PYTHONPATH=. python experiments/benchmarks/init_bench.py --smoke
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

import scoresde as sd
from scoresde import experiment
from scoresde.config_loading import load_config

CONFIGS = {
    "ncsnpp_ve": "experiments/configs/ve/cifar10_ncsnpp_continuous.py",
    "ddpmpp_vp": "experiments/configs/vp/cifar10_ddpmpp_continuous.py",
}

#: jax.monitoring duration events -> this script's column names.
_PHASES = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "compile_s",
}


@contextlib.contextmanager
def phases():
    """Sums JAX's compile-phase durations while active; yields the running sums."""
    sums: dict[str, float] = collections.defaultdict(float)

    def listener(event: str, duration: float, **kwargs) -> None:
        if event in _PHASES:
            sums[_PHASES[event]] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield sums
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def timed(fn):
    """``(result, row)``: wall time of ``fn()`` (results ready) and its compile phases."""
    with phases() as sums:
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        wall = time.perf_counter() - t0
    row = {"wall_s": round(wall, 3), **{k: round(v, 3) for k, v in sums.items()}}
    row["other_s"] = round(wall - sum(sums.values()), 3)
    return out, row


def compare(a: dict, b: dict) -> dict:
    """Bitwise-equal leaves and the largest difference relative to each leaf's scale."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    equal, worst = 0, 0.0
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        equal += bool(np.array_equal(x, y))
        if x.size and np.issubdtype(x.dtype, np.floating):
            scale = max(float(np.max(np.abs(y))), np.finfo(y.dtype).tiny)
            worst = max(worst, float(np.max(np.abs(x - y))) / scale)
    return {"leaves": len(la), "bitwise_equal": equal, "max_rel_diff": worst}


def bench(name: str, config, out) -> list[dict]:
    model = sd.models.from_config(config)
    shape = experiment.data_shape_from_config(config)
    key = jax.random.key(0)
    rows = []
    common = {"bench": "init", "model": name, "platform": jax.devices()[0].platform}

    abstract, row = timed(lambda: experiment.abstract_variables(model, shape))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
    rows.append({**common, "method": "abstract", "params": n_params, **row})

    host, row = timed(lambda: experiment.init_variables(model, key, shape))
    rows.append({**common, "method": "host", **row})

    x, labels = jnp.zeros((1, *shape)), jnp.zeros((1,), jnp.int32)

    def init(k):  # init_variables' program, before it moved to the CPU
        return model.init({"params": k, "dropout": k}, x, labels, train=False)

    counts = {}

    def staged():
        lowered = jax.jit(init).lower(key)
        compiled = lowered.compile()
        counts["stablehlo_ops"] = len(re.findall(r"= (?:\"?)[a-z_]+\.[a-z_]+", lowered.as_text()))
        counts["hlo_instructions"] = len(
            re.findall(r"^\s+(?:ROOT )?\S+ = ", compiled.as_text(), re.M)
        )
        return dict(compiled(key))

    device, row = timed(staged)
    rows.append({**common, "method": "device", **row, **counts})
    rows[1].update(compare(host, device))
    for r in rows:
        print(json.dumps(r), flush=True)
        if out is not None:
            out.write(json.dumps(r) + "\n")
            out.flush()
    return rows


def table(rows: list[dict]) -> str:
    cols = ["model", "method", "wall_s", "trace_s", "lower_s", "compile_s", "other_s"]
    lines = ["| " + " | ".join(cols) + " | bitwise-equal leaves | max rel diff |"]
    lines.append("|" + "---|" * (len(cols) + 2))
    for r in rows:
        cells = [str(r.get(c, "")) for c in cols]
        if "leaves" in r:
            cells += [f"{r['bitwise_equal']}/{r['leaves']}", f"{r['max_rel_diff']:.1e}"]
        else:
            cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="ncsnpp_ve,ddpmpp_vp")
    p.add_argument("--smoke", action="store_true", help="the configs' smoke networks")
    p.add_argument("--out", default=None, help="JSON lines file (appended)")
    args = p.parse_args(argv)
    names = args.models.split(",")
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from {sorted(CONFIGS)}")
    rows = []
    with open(args.out, "a") if args.out else contextlib.nullcontext() as out:
        for name in names:
            config = load_config(CONFIGS[name] + (":smoke" if args.smoke else ""))
            rows += bench(name, config, out)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
