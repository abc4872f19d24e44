r"""The parameter update of a train step (clip + Adam + apply + EMA) alone, on a real network's leaves.

The train-step profile puts the optimizer and EMA update at ~4 ms of DDPM++'s 62 ms, in
~1,100 kernels, against a memory floor of ~0.75 ms (one pass that reads gradients, parameters,
both Adam moments and the EMA and writes all but the gradients: 9 x 4 bytes per parameter,
62M parameters, at the measured 3.0 TB/s). This script measures the update alone on the
parameter tree of a full-size config (shapes from ``jax.eval_shape``, random values), so the
variants can be compared without compiling the network:

- ``tree``: what :func:`scoresde.make_train_step` does: ``make_optimizer()`` (global-norm clip,
  Adam, learning rate), then each leaf's ``param + update`` and :func:`scoresde.ema_update`,
  every per-leaf function jitted, so that it is traced and lowered once per distinct leaf shape
  (~26 for ~560 leaves; XLA inlines the calls);
- ``optax_chain``: the same arithmetic as optax's chain, ``optax.apply_updates`` and the EMA
  written inline, the update before the thirteenth round: bit-identical results, the same
  optimized program, but every leaf traced and lowered on its own;
- ``flat``: the same arithmetic with every tree raveled into one vector beforehand: the
  lower bound of any per-leaf scheme (one kernel for the whole update);
- ``packed``: leaves of fewer than ``2**16`` entries concatenated into one vector per tree
  for the update (and split back), large leaves one by one: the per-leaf arithmetic of
  ``tree`` with ~150 instead of ~550 leaves.

The eighth round compared a hand-fused update with the chain (the same 23,080 StableHLO ops
and 50,390 optimized instructions for NCSN++ on the CPU: JAX's tracing already reduces optax's
chain to the bare arithmetic); the library's update is that fused form, jitted per leaf.

Every row also has the update program's lowering and compile time and its instruction
counts, lowered (StableHLO) and optimized (one program, one update, compiled for the device).

Each update runs ``--inner`` times inside one jitted ``lax.fori_loop`` (so the ~2,000 buffer
arguments are handled once, not per update); the row is the median per update.

What it showed (``docs/benchmarks.md``): ``flat`` is 4x faster than ``tree`` in isolation, but
a train step that carried the state as vectors (slicing the parameter vector for the network
and concatenating the gradients every step) was slower end to end, so the step stays per
leaf; ``packed`` loses to ``tree`` outright (its concatenations and slices cost more kernels
than they save).

GPU run::

    PYTHONPATH=. python experiments/benchmarks/optimizer_bench.py
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import scoresde as sd
from scoresde.config_loading import load_config

CONFIGS = {
    "ncsnpp_ve": "experiments/configs/ve/cifar10_ncsnpp_continuous.py",
    "ddpmpp_vp": "experiments/configs/vp/cifar10_ddpmpp_continuous.py",
}
SMALL = 2**16
EMA_RATE = 0.9999
#: make_optimizer's arguments here (and its defaults for the betas and eps).
LR, WARMUP, GRAD_CLIP, BETA1, BETA2, EPS = 2e-4, 5000, 1.0, 0.9, 0.999, 1e-8


def param_shapes(config) -> dict:
    size, ch = int(config.data.image_size), int(config.data.num_channels)
    model = sd.models.from_config(config)
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0), jnp.zeros((1, size, size, ch)), jnp.ones((1,)), train=False
        )
    )
    return shapes["params"]


def random_tree(shapes, key, scale: float):
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten(
        [scale * jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, leaves, strict=True)]
    )


def update_tree(opt, params, opt_state, ema, grads):
    """The update as :func:`scoresde.make_train_step` applies it."""
    updates, opt_state = opt.update(grads, opt_state, params)
    params = jax.tree.map(sd.train._apply_leaf, params, updates)
    return params, opt_state, sd.ema_update(ema, params, EMA_RATE)


def pack(tree, treedef):
    """(large leaves..., concatenation of the small ones) of a tree with ``treedef``."""
    leaves = treedef.flatten_up_to(tree)
    big = [x for x in leaves if x.size >= SMALL]
    small = [x.ravel() for x in leaves if x.size < SMALL]
    return big + ([jnp.concatenate(small)] if small else [])


def unpack(packed, treedef, like):
    leaves = treedef.flatten_up_to(like)
    out, n_big, offset = [], sum(x.size >= SMALL for x in leaves), 0
    it = iter(packed[:n_big])
    for x in leaves:
        if x.size >= SMALL:
            out.append(next(it))
        else:
            out.append(packed[n_big][offset : offset + x.size].reshape(x.shape))
            offset += x.size
    return treedef.unflatten(out)


def map_param_subtrees(fn, state, treedef):
    """Applies ``fn`` to every subtree of ``state`` that has the parameters' structure."""
    match = lambda x: jax.tree.structure(x) == treedef  # noqa: E731
    return jax.tree.map(lambda x: fn(x) if match(x) else x, state, is_leaf=match)


def make_variants(opt, params):
    treedef = jax.tree.structure(params)

    def tree(params, opt_state, ema, grads):
        return update_tree(opt, params, opt_state, ema, grads)

    def packed(params, opt_state, ema, grads):
        p = lambda t: pack(t, treedef)  # noqa: E731
        pstate = map_param_subtrees(p, opt_state, treedef)
        new_p, new_state, new_e = update_tree(opt, p(params), pstate, p(ema), p(grads))
        packed_def = jax.tree.structure(p(params))
        u = lambda t: unpack(t, treedef, params)  # noqa: E731
        new_state = map_param_subtrees(u, new_state, packed_def)
        return u(new_p), new_state, u(new_e)

    chain = sd.train._optax_chain(LR, BETA1, BETA2, EPS, WARMUP, GRAD_CLIP, 0.0)

    def optax_chain(params, opt_state, ema, grads):
        updates, opt_state = chain.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: EMA_RATE * e + (1.0 - EMA_RATE) * p, ema, params)
        return params, opt_state, ema

    return {"tree": tree, "optax_chain": optax_chain, "packed": packed}


def compile_costs(fn, args) -> dict:
    """Lowering and compile time and instruction counts of one update as its own program."""
    t0 = time.perf_counter()
    # a new function object: not the jit cache entry of an earlier call of ``fn``
    lowered = jax.jit(lambda *a: fn(*a)).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return {
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "stablehlo_ops": len(re.findall(r"= (?:\"?)[a-z_]+\.[a-z_]+", lowered.as_text())),
        "hlo_instructions": len(re.findall(r"^\s+(?:ROOT )?\S+ = ", compiled.as_text(), re.M)),
    }


def time_update(fn, args, inner: int, repeats: int) -> float:
    """Median ms per update over ``repeats`` calls of ``inner`` updates each."""

    @jax.jit
    def many(params, opt_state, ema, grads):
        body = lambda i, c: fn(*c, grads)  # noqa: E731
        return jax.lax.fori_loop(0, inner, body, (params, opt_state, ema))

    jax.block_until_ready(many(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(many(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times) / inner


def bench(name: str, config, args) -> list[dict]:
    shapes = param_shapes(config)
    opt = sd.make_optimizer(
        lr=LR, beta1=BETA1, beta2=BETA2, eps=EPS, warmup=WARMUP, grad_clip=GRAD_CLIP
    )
    params = random_tree(shapes, jax.random.key(0), 0.05)
    grads = random_tree(shapes, jax.random.key(1), 1e-4)
    ema = jax.tree.map(jnp.copy, params)
    opt_state = opt.init(params)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    floor_ms = 9 * 4 * n_params / (args.bandwidth * 1e9) * 1e3
    rows = []
    variants = make_variants(opt, params)
    # the lower bound: every tree one vector
    flat = lambda t: {"all": jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)])}  # noqa: E731
    fparams, fgrads, fema = flat(params), flat(grads), flat(ema)
    reference = jax.jit(variants["tree"])(params, opt_state, ema, grads)
    for vname, fn in [*variants.items(), ("flat", None)]:
        if fn is None:
            fopt = opt.init(fparams)
            costs = compile_costs(lambda *a: update_tree(opt, *a), (fparams, fopt, fema, fgrads))
            ms = time_update(
                lambda *a: update_tree(opt, *a),
                (fparams, fopt, fema, fgrads),
                args.inner,
                args.repeats,
            )
            err = None
        else:
            costs = compile_costs(fn, (params, opt_state, ema, grads))
            ms = time_update(fn, (params, opt_state, ema, grads), args.inner, args.repeats)
            got = jax.jit(fn)(params, opt_state, ema, grads)
            err = max(
                float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(reference), strict=True)
            )
        row = {
            "bench": "optimizer_update",
            "model": name,
            "variant": vname,
            "leaves": len(jax.tree.leaves(params)),
            "params": n_params,
            "ms_per_update": ms,
            "floor_ms": floor_ms,
            "max_abs_diff_vs_tree": err,
            **costs,
            "device": jax.devices()[0].device_kind,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(CONFIGS))
    p.add_argument("--inner", type=int, default=20)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--bandwidth", type=float, default=3000.0, help="GB/s, measured copy rate")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.inner, args.repeats = 2, 2
    rows = []
    for name in args.models.split(","):
        config = load_config(CONFIGS[name] + (":smoke" if args.smoke else ""))
        rows += bench(name, config, args)
    print(
        "\n| model | variant | leaves | ms per update | floor ms | lower s | compile s "
        "| StableHLO ops | HLO instructions |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['variant']} | {r['leaves']} | {r['ms_per_update']:.3f} | "
            f"{r['floor_ms']:.3f} | {r['lower_s']:.2f} | {r['compile_s']:.2f} | "
            f"{r['stablehlo_ops']} | {r['hlo_instructions']} |"
        )
    return rows


if __name__ == "__main__":
    main()
