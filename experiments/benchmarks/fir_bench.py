r"""FIR resampling: the shipped tap-sum ``upfirdn2d`` against the forms it replaced.

All compute StyleGAN2's ``upfirdn2d`` (zero insertion, padding, a 4x4 binomial filter,
decimation). The depthwise form is one ``lax.conv_general_dilated`` with
``feature_group_count=C``; the shipped form (``taps``) sums strided slices, which XLA fuses
into one elementwise kernel: 16 slices when downsampling, and when upsampling 4 per output
phase (the phases then interleaved by two stacks and a reshape; ``taps_pad`` and
``taps_select`` interleave them by summed interior pads and by a parity select).
``zero_insert_taps`` is the upsampling the phases replaced: 16 slices of the zero-inserted
image, 12 of them on inserted zeros. ``down_after_act`` puts a normalize-and-SiLU before the
downsampling, as NCSN++'s blocks do, fused into the taps or written out first
(``taps_materialized``, behind :func:`~scoresde.models.barrier.forward_barrier`). Shapes
are NCSN++'s on CIFAR-10 (batch 128): each resolution's widest down- and upsampling. Forward
and forward+backward, median milliseconds, the max difference from ``taps``, and the
bytes-moved floor (input read once, output written once) at ``--bandwidth`` GB/s.

GPU run::

    PYTHONPATH=. python experiments/benchmarks/fir_bench.py

``--fir depthwise`` in ``profile_step.py`` swaps the depthwise form into a whole network.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from scoresde.models import up_or_down_sampling as fir
from scoresde.models.barrier import forward_barrier


def upfirdn2d_depthwise(x, kernel, up=1, down=1, pad=(0, 0)):
    """``upfirdn2d`` as one depthwise convolution (the form the tap sum replaced)."""
    k = jnp.asarray(kernel, dtype=x.dtype)
    p0, p1 = (pad, pad) if isinstance(pad, int) else pad
    channels = x.shape[-1]
    w = jnp.broadcast_to(k[::-1, ::-1, None, None], (*k.shape, 1, channels))
    padding = ((p0, p1 + up - 1), (p0, p1 + up - 1))
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=(down, down),
        padding=padding,
        lhs_dilation=(up, up),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )


def upfirdn2d_zero_insert(x, kernel, up=1, down=1, pad=(0, 0)):
    """The tap sum over the zero-inserted image (what upsampling ran before the phases)."""
    k = np.asarray(kernel, np.float32)
    p0, p1 = (pad, pad) if isinstance(pad, int) else pad
    ho = (x.shape[1] * up + p0 + p1 - k.shape[0]) // down + 1
    wo = (x.shape[2] * up + p0 + p1 - k.shape[1]) // down + 1
    return fir._upfirdn2d_direct(x, k, up, down, p0, p1, ho, wo)


def upsample_phases_pad(x, k, up, p0, ho, wo):
    """Each phase put in place by an interior ``lax.pad``, the padded images summed."""
    zero = jnp.zeros((), x.dtype)
    out = None
    for r, row in enumerate(fir._phase_images(x, k, up, p0, ho, wo)):
        for s, phase in enumerate(row):
            cfg_h, cfg_w = (r, up - 1 - r, up - 1), (s, up - 1 - s, up - 1)
            placed = lax.pad(phase, zero, ((0, 0, 0), cfg_h, cfg_w, (0, 0, 0)))
            out = placed if out is None else out + placed
    return out


def upsample_phases_select(x, k, up, p0, ho, wo):
    """Phases nearest-upsampled and picked per output pixel by its parity (``where`` on iota)."""
    phases = fir._phase_images(x, k, up, p0, ho, wo)
    b, qh, qw, c = phases[0][0].shape
    r_of = lax.broadcasted_iota(jnp.int32, (1, ho, wo, 1), 1) % up
    s_of = lax.broadcasted_iota(jnp.int32, (1, ho, wo, 1), 2) % up
    out = None
    for r, row in enumerate(phases):
        for s, phase in enumerate(row):
            near = jnp.broadcast_to(phase[:, :, None, :, None, :], (b, qh, up, qw, up, c))
            near = near.reshape(b, ho, wo, c)
            out = near if out is None else jnp.where((r_of == r) & (s_of == s), near, out)
    return out


#: Interleaves of the phase images: the ``up`` rows here, and ``suite.py --fir-upsample``.
UPSAMPLE_INTERLEAVES = {
    "stack": fir._upfirdn2d_polyphase,
    "pad": upsample_phases_pad,
    "select": upsample_phases_select,
}


def use_upsample_interleave(name: str) -> None:
    """Makes ``upfirdn2d`` interleave its phase images the way ``name`` does (this process)."""
    fir._upfirdn2d_polyphase = UPSAMPLE_INTERLEAVES[name]


def median_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--bandwidth", type=float, default=3000.0, help="GB/s, measured copy rate")
    p.add_argument("--smoke", action="store_true", help="tiny shapes for a CPU")
    args = p.parse_args(argv)
    dtype = jnp.dtype(args.dtype)
    cases = [(32, 128, "down"), (16, 256, "down"), (8, 256, "down")]
    cases += [(32, 128, "down_after_act"), (16, 256, "down_after_act")]
    cases += [(16, 256, "up"), (8, 256, "up"), (4, 256, "up")]
    if args.smoke:
        cases, args.batch, args.repeats = (
            [(8, 8, "down"), (8, 8, "down_after_act"), (4, 8, "up")],
            2,
            3,
        )
    down_k = fir.setup_kernel(fir.DEFAULT_FIR_KERNEL)
    up_k = down_k * 4
    print("| op | input | impl | fwd ms | fwd+bwd ms | floor fwd ms | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for size, ch, mode in cases:
        x = jax.random.normal(jax.random.key(size + ch), (args.batch, size, size, ch), dtype)
        impls = {
            "down": {
                "taps": lambda x: fir.upfirdn2d(x, down_k, down=2, pad=(1, 1)),
                "depthwise": lambda x: upfirdn2d_depthwise(x, down_k, down=2, pad=(1, 1)),
            },
            # GroupNorm's normalize-and-SiLU before the downsampling, as in NCSN++'s blocks.
            "down_after_act": {
                "taps": lambda x: fir.downsample_2d(jax.nn.silu(1.1 * x + 0.1)),
                "taps_materialized": lambda x: fir.downsample_2d(
                    forward_barrier(jax.nn.silu(1.1 * x + 0.1))
                ),
            },
            "up": {
                "taps": lambda x: fir.upfirdn2d(x, up_k, up=2, pad=(2, 1)),
                **{
                    f"taps_{name}": lambda x, f=f: f(x, up_k, 2, 2, 2 * x.shape[1], 2 * x.shape[2])
                    for name, f in UPSAMPLE_INTERLEAVES.items()
                    if name != "stack"
                },
                "zero_insert_taps": lambda x: upfirdn2d_zero_insert(x, up_k, up=2, pad=(2, 1)),
                "depthwise": lambda x: upfirdn2d_depthwise(x, up_k, up=2, pad=(2, 1)),
            },
        }[mode]
        reference = None
        for impl_name, impl in impls.items():
            fwd = jax.jit(impl)
            y = fwd(x)
            g = jax.random.normal(jax.random.key(7), y.shape, dtype)
            grad = jax.jit(jax.grad(lambda x, g, impl=impl: jnp.sum(impl(x) * g)))
            out = np.asarray(y, np.float32)
            reference = out if reference is None else reference
            t_f = median_ms(fwd, x, repeats=args.repeats)
            t_b = median_ms(grad, x, g, repeats=args.repeats)
            floor = (x.size + y.size) * dtype.itemsize / (args.bandwidth * 1e9) * 1e3
            diff = float(np.max(np.abs(out - reference)))
            print(
                f"| {mode} | {tuple(x.shape)} | {impl_name} | {t_f:.3f} | {t_b:.3f} | "
                f"{floor:.3f} | {diff:.2e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
