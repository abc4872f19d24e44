r"""Benchmark: bits/dim of a batch of CIFAR-10-sized images through the probability-flow ODE.

For each network (DDPM++ cont. with the VP SDE, NCSN++ cont. with the VE SDE, from the
CIFAR-10 experiment configs, randomly initialized), times one jitted
:func:`scoresde.bits_per_dim` call on a batch of uint8 images at ``rtol = atol = 1e-5`` and
prints one JSON line per run: compile and run wall time, the number of drift evaluations
(NFE; each is one forward pass of the network carrying a Jacobian-vector product), ms per
NFE, images per second and the mean bits/dim.

Run on a GPU (the issue's benchmark)::

    PYTHONPATH=. python experiments/benchmarks/likelihood_bench.py --batch 128

A CPU run of a few seconds per model (the configs' ``smoke`` networks, 16 x 16 images)::

    PYTHONPATH=. python experiments/benchmarks/likelihood_bench.py --smoke

Per-sample adaptive solves (the library's default) against one shared solve of the batch::

    PYTHONPATH=. python experiments/benchmarks/likelihood_bench.py --smoke --compare-solves

Random weights are not a trained model: with the configs' ``init_scale = 0`` the output layers
start near zero, the score is almost zero and the ODE is nearly linear, so NFE is far below a
trained model's (the reference's CIFAR-10 numbers are a few hundred evaluations). Pass
``--init-scale 1`` for rough, nonlinear dynamics. ms per NFE is the hardware number.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import scoresde as sd

MODELS = {
    # name: (config module, SDE family)
    "ddpmpp_vp": ("experiments.configs.vp.cifar10_ddpmpp_continuous", "vp"),
    "ncsnpp_ve": ("experiments.configs.ve.cifar10_ncsnpp_continuous", "ve"),
}


def _sde(config, family: str) -> sd.SDE:
    m = config.model
    if family == "vp":
        return sd.VPSDE(float(m.beta_min), float(m.beta_max), int(m.num_scales))
    return sd.VESDE(float(m.sigma_min), float(m.sigma_max), int(m.num_scales))


def _config(module_name: str, smoke: bool, init_scale: float | None):
    import importlib

    config = importlib.import_module(module_name).get_config("smoke" if smoke else None)
    if init_scale is not None:
        config.model.init_scale = float(init_scale)
    return config


def bench_model(name: str, args) -> list[dict]:
    module_name, family = MODELS[name]
    config = _config(module_name, args.smoke, args.init_scale)
    sde = _sde(config, family)
    size, channels = int(config.data.image_size), int(config.data.num_channels)
    model = sd.models.from_config(config)
    x0 = jnp.zeros((1, size, size, channels))
    variables = model.init(jax.random.key(0), x0, jnp.zeros((1,)), train=False)
    score_fn = sd.get_score_fn(sde, model, variables, continuous=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, size, size, channels), dtype=np.uint8)
    centered = bool(config.data.centered)

    rows = []
    for per_sample in (True, False) if args.compare_solves else (not args.shared,):
        run = jax.jit(
            lambda key, im, per_sample=per_sample: sd.bits_per_dim(
                key,
                sde,
                score_fn,
                im,
                centered=centered,
                divergence=args.divergence,
                rtol=args.rtol,
                atol=args.atol,
                per_sample=per_sample,
            )
        )
        key = jax.random.key(1)
        start = time.perf_counter()
        compiled = run.lower(key, images).compile()
        compile_s = time.perf_counter() - start
        walls = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            bpd, _, nfe = compiled(key, images)
            bpd = np.asarray(jax.block_until_ready(bpd))
            walls.append(time.perf_counter() - start)
        wall = min(walls)
        nfe = int(nfe)
        rows.append(
            {
                "model": name,
                "sde": family,
                "smoke": args.smoke,
                "batch": args.batch,
                "image_size": size,
                "nf": int(config.model.nf),
                "init_scale": float(config.model.init_scale),
                "rtol": args.rtol,
                "atol": args.atol,
                "divergence": args.divergence,
                "per_sample": per_sample,
                "nfe": nfe,
                "compile_s": round(compile_s, 3),
                "wall_s": round(wall, 4),
                "ms_per_nfe": round(1e3 * wall / max(nfe, 1), 3),
                "img_per_s": round(args.batch / wall, 3),
                "bpd_mean": float(bpd.mean()),
                "device": jax.devices()[0].device_kind,
                "num_devices": jax.device_count(),
            }
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny networks, 16x16, for CPU")
    parser.add_argument("--batch", type=int, default=None, help="images (default 128; smoke 4)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--divergence", default="rademacher", choices=sd.likelihood.DIVERGENCES)
    parser.add_argument("--init-scale", type=float, default=None, help="override model.init_scale")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs (the minimum is kept)")
    parser.add_argument("--shared", action="store_true", help="one shared solve of the batch")
    parser.add_argument("--compare-solves", action="store_true", help="per-sample and shared")
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = 4 if args.smoke else 128
    for name in args.models.split(","):
        if name not in MODELS:
            parser.error(f"--models: unknown {name!r}; choose from {sorted(MODELS)}")
        for row in bench_model(name, args):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
