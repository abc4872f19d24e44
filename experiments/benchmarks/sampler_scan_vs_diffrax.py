r"""Benchmark: reverse-SDE Euler-Maruyama through diffrax against a hand-written ``lax.scan``.

The network is NCSN++ of the CIFAR-10 continuous VE config
(``experiments/configs/ve/cifar10_ncsnpp_continuous.py``, randomly initialized), or with
``--stand-in`` a small convolutional network. At equal NFE (``num_steps - 1`` score
evaluations, no denoising step) it times

- ``diffrax_sde``: :func:`scoresde.sample_sde` (``diffrax.Euler`` on the reverse-SDE terms,
  noise from ``diffrax.UnsafeBrownianPath``);
- ``diffrax_pc``: :func:`scoresde.sample_pc` with the Euler-Maruyama predictor and no
  corrector (the predictor-corrector solver, noise keyed by the grid time);
- ``scan``: the same Euler-Maruyama loop written with ``jax.lax.scan`` and
  ``jax.random.fold_in(key, step)`` normals;

each jitted once (compile time reported), then run ``--repeats`` times with
``block_until_ready``; the median wall time gives seconds per step and images per second.
One JSON line per implementation is printed (and appended to ``--out`` when given), then the
ratios to the scan loop. The issue's target: diffrax within 1.1x of the scan loop.

GPU run (the issue's benchmark, batch 128)::

    PYTHONPATH=. python experiments/benchmarks/sampler_scan_vs_diffrax.py --batch 128 \
        --num-steps 200 --repeats 5 --out /tmp/sampler_bench.jsonl

CPU smoke run (seconds; the config's ``smoke`` network, 16 x 16 images)::

    PYTHONPATH=. python experiments/benchmarks/sampler_scan_vs_diffrax.py --smoke
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

import scoresde as sd

CONFIG_MODULE = "experiments.configs.ve.cifar10_ncsnpp_continuous"
EPS = 1e-3


class StandInNet(nn.Module):
    """A small time-conditioned conv net with the score-network signature."""

    features: int = 64

    @nn.compact
    def __call__(self, x, labels, train: bool = False):
        emb = nn.Dense(self.features)(jnp.log(labels)[:, None])
        h = nn.Conv(self.features, (3, 3))(x)
        h = nn.swish(h + emb[:, None, None, :])
        h = nn.swish(nn.Conv(self.features, (3, 3))(h))
        return nn.Conv(x.shape[-1], (3, 3))(h) / labels[:, None, None, None]


def build(args):
    """The SDE, the network and its variables, and the image shape."""
    config = importlib.import_module(CONFIG_MODULE).get_config("smoke" if args.smoke else None)
    m = config.model
    sde = sd.VESDE(float(m.sigma_min), float(m.sigma_max), int(m.num_scales))
    size, channels = int(config.data.image_size), int(config.data.num_channels)
    shape = (args.batch, size, size, channels)
    model = StandInNet() if args.stand_in else sd.models.from_config(config)
    x0 = jnp.zeros((1, size, size, channels))
    variables = model.init(jax.random.key(0), x0, jnp.ones((1,)), train=False)
    return sde, model, variables, shape


def make_runners(sde, model, variables, shape, num_steps):
    """Jitted ``run(key, variables) -> x`` per implementation; weights are traced arguments."""

    def score_with(variables, x, t):
        return sd.get_score_fn(sde, model, variables, continuous=True)(x, t)

    def diffrax_sde(key, variables):
        score_fn = jax.tree_util.Partial(score_with, variables)
        x, _ = sd.sample_sde(key, sde, score_fn, shape, num_steps=num_steps, denoise=False)
        return x

    def diffrax_pc(key, variables):
        score_fn = jax.tree_util.Partial(score_with, variables)
        x, _ = sd.sample_pc(
            key,
            sde,
            score_fn,
            shape,
            predictor="euler_maruyama",
            corrector="none",
            num_steps=num_steps,
            denoise=False,
        )
        return x

    def scan(key, variables):
        key_prior, key_noise = jax.random.split(key)
        x = sde.prior_sampling(key_prior, shape)
        ts = jnp.linspace(sde.T, EPS, num_steps)
        rsde = sde.reverse(lambda x, t: score_with(variables, x, t))

        def body(x, i):
            t, t_next = ts[i], ts[i + 1]
            drift, g = rsde.sde(x, jnp.full((shape[0],), t))
            dt = t_next - t
            z = jax.random.normal(jax.random.fold_in(key_noise, i), shape, x.dtype)
            return x + drift * dt + g[:, None, None, None] * jnp.sqrt(-dt) * z, None

        x, _ = jax.lax.scan(body, x, jnp.arange(num_steps - 1))
        return x

    return {
        "diffrax_sde": jax.jit(diffrax_sde),
        "diffrax_pc": jax.jit(diffrax_pc),
        "scan": jax.jit(scan),
    }


def time_runner(run, variables, repeats: int):
    """Compile time (first call) and the median of ``repeats`` timed calls."""
    key = jax.random.key(1)
    start = time.perf_counter()
    jax.block_until_ready(run(key, variables))
    compile_s = time.perf_counter() - start
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(jax.random.fold_in(key, i), variables))
        times.append(time.perf_counter() - start)
    return compile_s, statistics.median(times), times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--num-steps", type=int, default=200, help="grid points (NFE + 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny config network, CPU")
    parser.add_argument("--stand-in", action="store_true", help="small conv net, not NCSN++")
    parser.add_argument("--impls", default="scan,diffrax_sde,diffrax_pc")
    parser.add_argument("--out", default=None, help="append JSON lines here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch = min(args.batch, 4)
        args.num_steps = min(args.num_steps, 6)
        args.repeats = min(args.repeats, 2)

    sde, model, variables, shape = build(args)
    runners = make_runners(sde, model, variables, shape, args.num_steps)
    device = jax.devices()[0]
    nfe = args.num_steps - 1
    results = {}
    for name in args.impls.split(","):
        compile_s, median_s, times = time_runner(runners[name], variables, args.repeats)
        record = {
            "impl": name,
            "date": datetime.date.today().isoformat(),
            "device": f"{device.platform}:{device.device_kind}",
            "network": "stand-in" if args.stand_in else type(model).__name__,
            "batch": shape[0],
            "image_shape": list(shape[1:]),
            "nfe": nfe,
            "compile_s": round(compile_s, 3),
            "median_s": median_s,
            "time_per_step_ms": 1e3 * median_s / nfe,
            "img_per_s": shape[0] / median_s,
            "times_s": times,
            "command": " ".join(sys.argv),
        }
        results[name] = record
        line = json.dumps(record)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    if "scan" in results:
        for name, record in results.items():
            if name != "scan":
                ratio = record["median_s"] / results["scan"]["median_s"]
                print(f"{name} / scan = {ratio:.3f}x (target <= 1.1x)")


if __name__ == "__main__":
    main()
