r"""GroupNorm + SiLU: formulations of the statistics, forward and forward+backward.

The train-step profile (``profile_step.py``) puts GroupNorm's reductions far under the copy
bandwidth: XLA turns the group statistics into a column reduction of ``(B, HW, C)`` over
``HW`` with only ``B C`` outputs. The variants compute the same
:math:`y = \mathrm{silu}(\gamma (x - \mu_g) / \sqrt{\sigma_g^2 + \epsilon} + \beta)`:

- ``flax``: ``flax.linen.GroupNorm`` then ``jax.nn.silu`` (what NCSN++ used);
- ``channel_sums``: per-channel sums of ``x`` and ``x^2`` over ``(H, W)``, summed per group on
  the small ``(B, C)`` arrays, then one fused scale-and-shift;
- ``two_stage``: the same, reducing ``H`` first and ``W`` second (more parallel first pass);
- ``dot``: the per-channel sums as a matrix-vector product with a vector of ones;
- ``kernel``: :func:`scoresde.models.group_norm.group_norm`, the fused Pallas kernel (its
  gradient the backward kernel, ``train=True``); in ``--smoke`` runs on a CPU, the kernel in
  Pallas' interpreter;
- ``kernel_jvp``: the same forward kernel with ``train=False`` (its gradient XLA's transpose
  of the ``jax.numpy`` tangent).

Each row: median ms of the forward and of forward+backward, the bytes floors (forward: read
``x``, write ``y``; forward+backward adds reading ``x`` and the cotangent and writing
``dx``) at ``--bandwidth``, and the max differences from ``flax`` of ``y`` and of ``dx``
(relative to the largest ``|dx|``).

``--sweep`` times the kernel's tilings instead (channel block x rows per chunk x warps) at
each shape, checking each against ``flax``.

GPU run::

    PYTHONPATH=. python experiments/benchmarks/groupnorm_bench.py
    PYTHONPATH=. python experiments/benchmarks/groupnorm_bench.py --sweep --dtypes bfloat16
"""

from __future__ import annotations

import argparse
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from fir_bench import median_ms
from flax import linen as nn

from scoresde.models.group_norm import group_norm, kernel_blocks

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


def kernel(x, gamma, beta, groups, train=True, interpret=False, **tiling):
    return group_norm(
        x,
        gamma,
        beta,
        num_groups=groups,
        epsilon=EPS,
        silu=True,
        dtype=x.dtype,
        train=train,
        impl="pallas",
        interpret=interpret,
        **tiling,
    )


VARIANTS = {
    "flax": flax_gn,
    "channel_sums": channel_sums,
    "two_stage": two_stage,
    "dot": dot,
    "kernel": kernel,
    "kernel_jvp": functools.partial(kernel, train=False),
}


def _inputs(batch, size, ch, dtype):
    key = jax.random.split(jax.random.key(size * ch), 4)
    x = (2.0 + jax.random.normal(key[0], (batch, size, size, ch))).astype(dtype)
    gamma = 1.0 + 0.1 * jax.random.normal(key[1], (ch,))
    beta = 0.1 * jax.random.normal(key[2], (ch,))
    g = jax.random.normal(key[3], x.shape, dtype)
    return x, gamma, beta, g


def _compiled(f, groups, chain: int = 1):
    """Jitted forward and gradient of ``chain`` GroupNorm + SiLU layers applied in sequence.

    A chain divides the per-call dispatch time (~0.07 ms on the GPU machine, as large as the
    op itself) by ``chain``; ``main`` reports the time per layer.
    """

    def forward(x, ga, be):
        for _ in range(chain):
            x = f(x, ga, be, groups)
        return x

    def loss(x, ga, be, g):
        return jnp.sum(forward(x, ga, be).astype(jnp.float32) * g.astype(jnp.float32))

    return jax.jit(forward), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _errors(fwd, bwd, ref, args):
    """(max |y - y_ref|, max |dx - dx_ref| / max |dx_ref|) against the flax variant."""
    y = np.asarray(fwd(*args[:3]), np.float32)
    dx = np.asarray(bwd(*args)[0], np.float32)
    y_err = float(np.max(np.abs(y - ref[0])))
    dx_err = float(np.max(np.abs(dx - ref[1])) / max(np.max(np.abs(ref[1])), 1e-30))
    return y_err, dx_err


def _measure(f, groups, call, ref, args):
    """(fwd ms, fwd+bwd ms per layer, y diff, dx diff) of one variant; ``ref`` None: itself."""
    fwd, bwd = _compiled(f, groups, args.chain)
    if ref is None:
        ref = (np.asarray(fwd(*call[:3]), np.float32), np.asarray(bwd(*call)[0]))
    y_err, dx_err = _errors(fwd, bwd, ref, call)
    t_f = median_ms(fwd, *call[:3], repeats=args.repeats) / args.chain
    t_b = median_ms(bwd, *call, repeats=args.repeats) / args.chain
    return t_f, t_b, y_err, dx_err, ref


def sweep(args, shapes) -> None:
    """Times the kernel's tilings at each shape (the choice of its defaults)."""
    print(
        "| dtype | input | channel block | rows | warps | fwd ms | fwd+bwd ms | y diff | dx diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype_name in args.dtypes.split(","):
        dtype = jnp.dtype(dtype_name)
        for size, ch in shapes:
            groups = min(ch // 4, 32)
            call = _inputs(args.batch, size, ch, dtype)
            t_f, t_b, _, _, ref = _measure(flax_gn, groups, call, None, args)
            seen = set()
            print(
                f"| {dtype_name} | {tuple(call[0].shape)} | flax | | | {t_f:.3f} | {t_b:.3f} | | |"
            )
            for cb, tile, warps in itertools.product(
                (16, 32, 64, 128), (4096, 8192, 16384), (4, 8)
            ):
                blocks = kernel_blocks(call[0].shape, groups, dtype.itemsize, tile, cb)
                if blocks is None or (blocks, warps) in seen:
                    continue
                seen.add((blocks, warps))
                f = functools.partial(
                    kernel,
                    interpret=args.smoke,
                    tile_elements=tile,
                    channel_block=cb,
                    num_warps=warps,
                )
                t_f, t_b, y_err, dx_err, _ = _measure(f, groups, call, ref, args)
                print(
                    f"| {dtype_name} | {tuple(call[0].shape)} | {blocks[0]} | {blocks[1]} | "
                    f"{warps} | {t_f:.3f} | {t_b:.3f} | {y_err:.1e} | {dx_err:.1e} |",
                    flush=True,
                )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--bandwidth", type=float, default=3000.0)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--sweep", action="store_true", help="time the kernel's tilings")
    p.add_argument(
        "--chain", type=int, default=1, help="layers applied in sequence per call (see _compiled)"
    )
    p.add_argument("--shapes", default=None, help="e.g. 32x128,16x256 (side x channels)")
    args = p.parse_args(argv)
    shapes = [(32, 128), (32, 256), (16, 256), (8, 256), (4, 256)]
    if args.shapes:
        shapes = [tuple(int(v) for v in sc.split("x")) for sc in args.shapes.split(",")]
    if args.smoke:
        shapes, args.batch, args.repeats = [(8, 16)], 2, 3
    if args.sweep:
        sweep(args, shapes)
        return
    print(
        "| dtype | input | variant | fwd ms | fwd+bwd ms | floor fwd ms | floor fwd+bwd ms "
        "| y diff | dx diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype_name in args.dtypes.split(","):
        dtype = jnp.dtype(dtype_name)
        for size, ch in shapes:
            groups = min(ch // 4, 32)
            call = _inputs(args.batch, size, ch, dtype)
            ref = None
            for name in args.variants.split(","):
                f = VARIANTS[name]
                if args.smoke and name.startswith("kernel"):
                    f = functools.partial(f, interpret=True)
                t_f, t_b, y_err, dx_err, ref = _measure(f, groups, call, ref, args)
                tensor_ms = call[0].size * dtype.itemsize / (args.bandwidth * 1e9) * 1e3
                print(
                    f"| {dtype_name} | {tuple(call[0].shape)} | {name} | {t_f:.3f} | {t_b:.3f} | "
                    f"{2 * tensor_ms:.3f} | {5 * tensor_ms:.3f} | {y_err:.1e} | {dx_err:.1e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
