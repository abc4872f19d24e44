r"""The time-embedding add of a ResNet block: as written, or folded into the GroupNorm after it.

A DDPM++/NCSN++ ResNet block computes ``h = Conv_0(...) + Dense(temb)[:, None, None, :]`` and
then ``silu(GroupNorm_1(h))``. On a GPU, XLA's fused-convolution rewriter absorbs the add into
cuDNN's convolution as its *side input*, which must be a full ``(B, H, W, C)`` tensor: the
broadcast is written out (``wrapped_broadcast`` in the bfloat16 batch-512 forward profile,
0.72 ms at 32x32x128) and read back. The add is only consumed by the GroupNorm, and a
per-(example, channel) shift :math:`t_c` can be folded into it. With per-channel sums
:math:`s_{1c} = \sum_{hw} h`, :math:`s_{2c} = \sum_{hw} h^2` over the :math:`P` pixels and
:math:`N = P\,C/G` entries per group,

.. math::

    \mu_g = \frac1N \sum_{c \in g} (s_{1c} + P t_c), \quad
    \sigma_g^2 = \frac1N \sum_{c \in g} (s_{2c} + 2 t_c s_{1c} + P t_c^2) - \mu_g^2,

and :math:`\mathrm{GN}(h + t) = h\,a_c + b_c` with :math:`a_c = \gamma_c / \sqrt{\sigma_g^2 +
\epsilon}` and :math:`b_c = \beta_c + (t_c - \mu_g) a_c`: the shifted tensor never exists.

Variants (same function, same parameters):

- ``as_written``: convolution + bias, ``+ t``, ``flax.linen.GroupNorm``, SiLU;
- ``folded``: convolution + bias, then the folded GroupNorm above, SiLU.

Each row: median ms of the forward and of forward+backward (gradients for the input, the
kernel, ``t``, and the GroupNorm scale and bias), and the max difference from ``as_written``.

The networks took another route (``docs/benchmarks.md``, tenth round): at inference the add
stays as written but behind an optimization barrier, so XLA fuses it into the GroupNorm's
passes (``scoresde.models.group_norm.SHIFT_AFTER_BARRIER``); ``suite.py
--shift-in-convolution`` compares the two in the whole network.

GPU run (the shapes of DDPM++'s 32x32 blocks; batch 512 is the forward benchmark's)::

    PYTHONPATH=. python experiments/benchmarks/temb_shift_bench.py
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from fir_bench import median_ms
from groupnorm_bench import EPS, flax_gn


def conv_bias(x, kernel, bias):
    y = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + bias.astype(y.dtype)


def as_written(x, kernel, bias, t, gamma, beta, groups):
    h = conv_bias(x, kernel, bias) + t[:, None, None, :].astype(x.dtype)
    return flax_gn(h, gamma, beta, groups)


def folded(x, kernel, bias, t, gamma, beta, groups):
    h = conv_bias(x, kernel, bias)
    b, height, width, c = h.shape
    pixels, per_group = height * width, c // groups
    hf = h.astype(jnp.float32)
    s1, s2 = hf.sum((1, 2)), (hf * hf).sum((1, 2))  # (B, C)
    tf = t.astype(jnp.float32)
    n = pixels * per_group
    mean = (s1 + pixels * tf).reshape(b, groups, per_group).sum(-1) / n  # (B, G)
    second = (s2 + 2 * tf * s1 + pixels * tf * tf).reshape(b, groups, per_group).sum(-1) / n
    inv = jax.lax.rsqrt(jnp.maximum(second - mean * mean, 0.0) + EPS)
    inv_c = jnp.repeat(inv, per_group, axis=1)  # (B, C)
    mean_c = jnp.repeat(mean, per_group, axis=1)
    scale = gamma * inv_c
    shift = beta + (tf - mean_c) * scale
    y = hf * scale[:, None, None, :] + shift[:, None, None, :]
    return jax.nn.silu(y).astype(h.dtype)


VARIANTS = {"as_written": as_written, "folded": folded}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="128,512")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    shapes = [(32, 128), (16, 256)]
    batches = [int(b) for b in args.batches.split(",")]
    if args.smoke:
        shapes, batches, args.repeats = [(8, 16)], [2], 3
    print("| dtype | input | variant | fwd ms | fwd+bwd ms | max diff |")
    print("|---|---|---|---|---|---|")
    for dtype_name in args.dtypes.split(","):
        dtype = jnp.dtype(dtype_name)
        for batch in batches:
            for size, ch in shapes:
                groups = min(ch // 4, 32)
                keys = jax.random.split(jax.random.key(size * ch + batch), 6)
                x = jax.random.normal(keys[0], (batch, size, size, ch)).astype(dtype)
                kernel = (jax.random.normal(keys[1], (3, 3, ch, ch)) / (3 * ch**0.5)).astype(dtype)
                bias = 0.1 * jax.random.normal(keys[2], (ch,))
                t = jax.random.normal(keys[3], (batch, ch))
                gamma = 1.0 + 0.1 * jax.random.normal(keys[4], (ch,))
                beta = 0.1 * jax.random.normal(keys[5], (ch,))
                g = jax.random.normal(jax.random.key(7), x.shape, dtype)
                inputs = (x, kernel, bias, t, gamma, beta)
                ref = None
                for name, f in VARIANTS.items():
                    fwd = jax.jit(lambda *a, f=f, groups=groups: f(*a, groups))
                    loss = (
                        lambda *a, f=f, groups=groups: jnp.sum(  # noqa: E731
                            f(*a[:-1], groups).astype(jnp.float32) * a[-1]
                        )
                    )
                    bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 3, 4, 5)))
                    y = np.asarray(fwd(*inputs), np.float32)
                    ref = y if ref is None else ref
                    t_f = median_ms(fwd, *inputs, repeats=args.repeats)
                    t_b = median_ms(bwd, *inputs, g, repeats=args.repeats)
                    print(
                        f"| {dtype_name} | {tuple(x.shape)} | {name} | {t_f:.3f} | {t_b:.3f} | "
                        f"{np.max(np.abs(y - ref)):.1e} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
