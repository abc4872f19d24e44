r"""GroupNorm + SiLU: formulations of the statistics, forward and forward+backward.

The train-step profile (``profile_step.py``) puts GroupNorm's reductions far under the copy
bandwidth: XLA turns the group statistics into a column reduction of ``(B, HW, C)`` over
``HW`` with only ``B C`` outputs. The variants compute the same
:math:`y = \mathrm{silu}(\gamma (x - \mu_g) / \sqrt{\sigma_g^2 + \epsilon} + \beta)`:

- ``flax``: ``flax.linen.GroupNorm`` then ``jax.nn.silu`` (what NCSN++ used);
- ``channel_sums``: per-channel sums of ``x`` and ``x^2`` over ``(H, W)``, summed per group on
  the small ``(B, C)`` arrays, then one fused scale-and-shift;
- ``two_stage``: the same, reducing ``H`` first and ``W`` second (more parallel first pass);
- ``dot``: the per-channel sums as a matrix-vector product with a vector of ones.

Each row: median ms, the bytes floor (read ``x`` once, write ``y`` once) at ``--bandwidth``,
and the max difference from ``flax``.

GPU run::

    PYTHONPATH=. python experiments/benchmarks/groupnorm_bench.py
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from fir_bench import median_ms
from flax import linen as nn

EPS = 1e-6


def _finish(x, s1, s2, gamma, beta, groups):
    b, h, w, c = x.shape
    n = h * w * (c // groups)
    g1 = s1.reshape(b, groups, -1).sum(-1) / n
    g2 = s2.reshape(b, groups, -1).sum(-1) / n
    var = jnp.maximum(g2 - g1 * g1, 0.0)
    inv = jax.lax.rsqrt(var + EPS)
    inv_c = jnp.repeat(inv, c // groups, axis=1)
    mean_c = jnp.repeat(g1, c // groups, axis=1)
    scale = gamma * inv_c
    shift = beta - mean_c * scale
    y = x.astype(jnp.float32) * scale[:, None, None, :] + shift[:, None, None, :]
    return jax.nn.silu(y).astype(x.dtype)


def channel_sums(x, gamma, beta, groups):
    xf = x.astype(jnp.float32)
    return _finish(x, xf.sum((1, 2)), (xf * xf).sum((1, 2)), gamma, beta, groups)


def two_stage(x, gamma, beta, groups):
    xf = x.astype(jnp.float32)
    s1 = xf.sum(1).sum(1)
    s2 = (xf * xf).sum(1).sum(1)
    return _finish(x, s1, s2, gamma, beta, groups)


def dot(x, gamma, beta, groups):
    b, h, w, c = x.shape
    xf = x.astype(jnp.float32).reshape(b, h * w, c)
    ones = jnp.ones((h * w,), jnp.float32)
    s1 = jnp.einsum("bpc,p->bc", xf, ones, precision="highest")
    s2 = jnp.einsum("bpc,p->bc", xf * xf, ones, precision="highest")
    return _finish(x, s1, s2, gamma, beta, groups)


def flax_gn(x, gamma, beta, groups):
    gn = nn.GroupNorm(num_groups=groups, epsilon=EPS, dtype=x.dtype)
    y = gn.apply({"params": {"scale": gamma, "bias": beta}}, x)
    return jax.nn.silu(y)


VARIANTS = {"flax": flax_gn, "channel_sums": channel_sums, "two_stage": two_stage, "dot": dot}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--bandwidth", type=float, default=3000.0)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    shapes = [(32, 128), (32, 256), (16, 256), (8, 256)]
    if args.smoke:
        shapes, args.batch, args.repeats = [(8, 16)], 2, 3
    print("| dtype | input | variant | fwd ms | fwd+bwd ms | floor fwd ms | max diff |")
    print("|---|---|---|---|---|---|---|")
    for dtype_name in args.dtypes.split(","):
        dtype = jnp.dtype(dtype_name)
        for size, ch in shapes:
            groups = min(ch // 4, 32)
            key = jax.random.key(size * ch)
            x = (2.0 + jax.random.normal(key, (args.batch, size, size, ch))).astype(dtype)
            gamma = 1.0 + 0.1 * jax.random.normal(jax.random.key(1), (ch,))
            beta = 0.1 * jax.random.normal(jax.random.key(2), (ch,))
            g = jax.random.normal(jax.random.key(3), x.shape, dtype)
            ref = None
            for name in args.variants.split(","):
                f = VARIANTS[name]
                fwd = jax.jit(lambda x, ga, be, f=f, groups=groups: f(x, ga, be, groups))
                loss = lambda x, ga, be, g, f=f, groups=groups: jnp.sum(  # noqa: E731
                    f(x, ga, be, groups).astype(jnp.float32) * g
                )
                bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
                y = np.asarray(fwd(x, gamma, beta), np.float32)
                ref = y if ref is None else ref
                t_f = median_ms(fwd, x, gamma, beta, repeats=args.repeats)
                t_b = median_ms(bwd, x, gamma, beta, g, repeats=args.repeats)
                floor = 2 * x.size * dtype.itemsize / (args.bandwidth * 1e9) * 1e3
                print(
                    f"| {dtype_name} | {tuple(x.shape)} | {name} | {t_f:.3f} | {t_b:.3f} | "
                    f"{floor:.3f} | {np.max(np.abs(y - ref)):.1e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
