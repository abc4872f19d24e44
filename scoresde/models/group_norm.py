r"""GroupNorm, optionally followed by SiLU, as one fused GPU kernel.

For NHWC :math:`x` with :math:`G` groups of :math:`C/G` channels, per example :math:`b` and
group :math:`g`,

.. math::

    \mu_{bg} = \frac{1}{n}\sum_{h,w,c \in g} x_{bhwc}, \quad
    \sigma^2_{bg} = \frac{1}{n}\sum_{h,w,c \in g} (x_{bhwc} - \mu_{bg})^2, \quad
    y_{bhwc} = \phi\Big(\gamma_c \frac{x_{bhwc} - \mu_{bg}}{\sqrt{\sigma^2_{bg} + \epsilon}}
    + \beta_c\Big)

with :math:`n = HW C/G` and :math:`\phi` the identity or SiLU, :math:`u \sigma(u)`.

XLA computes this as a reduction of ``(B, H, W, G, C/G)`` and an elementwise pass (two to
three times the memory floor on an H200 at 32x32, more in several launches at small sizes).
:func:`group_norm` can instead run a Pallas (Triton) kernel on CUDA GPUs, one program per
example and block of whole groups, in one launch: it reads :math:`x` once for the
statistics (sums of :math:`x - k`, :math:`k` the first chunk's group means: the
shifted-data variance formula, accurate where the plain :math:`E[x^2] - E[x]^2` cancels)
and a second time to write :math:`y`. The backward kernel reads :math:`x` and the cotangent
twice and writes :math:`\partial L/\partial x` once, recomputing :math:`\hat x` and
:math:`\phi'` instead of storing them. ``impl="auto"`` takes the kernel where it measured
faster than XLA (feature maps of at most ``AUTO_MAX_ROWS`` pixels, ``docs/benchmarks.md``).
Elsewhere (CPU, TPU, larger maps, shapes the kernel does not cover) the function is computed
with ``jax.numpy`` exactly as ``flax.linen.GroupNorm`` does.

Differentiation: with ``train=True`` the kernel's gradient is the hand-written backward
kernel (a ``jax.custom_vjp``: reverse mode only, as a training step needs); with
``train=False`` the kernel carries a ``jax.custom_jvp`` whose tangent is the ``jax.numpy``
formula, so forward mode (the likelihood's ``jax.jvp`` through the network), ``vmap`` and
reverse mode all work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.extend
import jax.numpy as jnp
from flax import linen as nn
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from scoresde.models.barrier import forward_barrier

__all__ = ["GroupNorm", "default_backend_is_cuda", "group_norm", "kernel_blocks"]

Dtype = Any
Impl = Literal["auto", "xla", "pallas"]

#: The implementations :func:`group_norm` accepts.
IMPLS = ("auto", "xla", "pallas")
#: Elements of one chunk a kernel program holds in registers (rows x channel block).
TILE_ELEMENTS = 8192
#: Bytes of one row of a channel block: a full 128-byte cache line.
ROW_BYTES = 128
#: Triton warps per kernel program.
NUM_WARPS = 8
#: The largest H * W for which ``impl="auto"`` picks the kernel. Measured on an H200
#: (``groupnorm_bench.py --chain 10``, docs/benchmarks.md): at 16x16 and below the kernel
#: beats XLA's fusions (forward+backward up to 4x at 4x4), at 32x32 it ties or loses (batch
#: 512 bfloat16 forward+backward 0.91 against 0.75 ms).
AUTO_MAX_ROWS = 256
#: Whether the XLA path of :func:`group_norm` with ``train=False`` adds its ``shift`` after
#: an optimization barrier on the value of ``x``. Without it, XLA folds ``x + shift`` into the
#: cuDNN convolution that made ``x`` (its *side input*, a full ``(B, H, W, C)`` tensor), so the
#: broadcast shift is written out and read back; behind the barrier the add fuses into the
#: normalization's own passes. Measured on an H100 (``docs/benchmarks.md``, tenth round): the
#: batch-512 forward 3.4-4.3% faster; the training step's throughput the same within noise
#: but its cold compile 13-16 s longer, so ``train=True`` leaves the add to XLA. Benchmarks set
#: it to ``False`` for the comparison.
SHIFT_AFTER_BARRIER = True
#: Whether the kernel with ``train=False`` reads ``shift`` itself and adds it to each pixel as
#: it loads ``x``. Otherwise ``x + shift`` is an XLA add before the kernel, which XLA folds
#: into the convolution that made ``x`` as its side input: the broadcast shift is written out
#: and read back (at 16x16 and below, where ``auto`` picks the kernel). ``train=True`` keeps
#: the XLA add, so the training step's program is unchanged. Benchmarks set it to ``False``
#: for the comparison (``docs/benchmarks.md``, twelfth round).
SHIFT_IN_KERNEL = True


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def kernel_blocks(
    shape: tuple[int, ...],
    num_groups: int,
    itemsize: int,
    tile_elements: int = TILE_ELEMENTS,
    channel_block: int | None = None,
) -> tuple[int, int] | None:
    """(channel block, rows per chunk) of the fused kernel for an NHWC shape, or None.

    A program of the kernel normalizes one example's block of whole groups, ``channel
    block`` channels wide (at least ``ROW_BYTES`` per row, a power of two dividing ``C``),
    walking its ``H W`` rows in chunks of ``rows`` (a power of two). None where the kernel
    does not apply: not 4-D, or ``H W``, ``C`` or the group size not a power of two.

    Example:
      >>> kernel_blocks((128, 32, 32, 256), 32, 2)
      (64, 128)
      >>> kernel_blocks((8, 28, 28, 64), 16, 4) is None  # 784 rows: the XLA path
      True
    """
    if len(shape) != 4 or num_groups <= 0 or shape[-1] % num_groups:
        return None
    hw, c = shape[1] * shape[2], shape[3]
    group = c // num_groups
    if not (_is_power_of_two(hw) and _is_power_of_two(group) and _is_power_of_two(c)):
        return None
    cb = channel_block or max(group, ROW_BYTES // itemsize)
    cb = min(max(cb, group), c)
    if not _is_power_of_two(cb) or c % cb or cb % group:
        return None
    rows = min(hw, max(1, tile_elements // cb))
    return cb, rows


def _same_group(cb: int, group: int) -> jax.Array:
    """(cb, cb) mask: channels i and j of a block share a group."""
    lane = jnp.arange(cb, dtype=jnp.int32)
    group = jnp.int32(group)
    return lax.div(lane[:, None], group) == lax.div(lane[None, :], group)


def _group_sum(v: jax.Array, same: jax.Array) -> jax.Array:
    """Per channel of ``v`` (cb,), the sum of ``v`` over the channel's group."""
    return jnp.sum(jnp.where(same, v[None, :], 0.0), axis=1)


def _silu_f32(u: jax.Array) -> jax.Array:
    return u / (1.0 + jnp.exp(-u))


def _forward_kernel(*refs, rows, group, eps, silu, has_shift):
    if has_shift:  # the input is x + shift, shift one value per (example, channel)
        x_ref, scale_ref, bias_ref, shift_ref, y_ref, mean_ref, rstd_ref = refs
        s = shift_ref[...].astype(jnp.float32)[None, :]
    else:
        x_ref, scale_ref, bias_ref, y_ref, mean_ref, rstd_ref = refs
        s = None
    hw, cb = x_ref.shape
    n_chunks = hw // rows
    same = _same_group(cb, group)
    per_chunk = float(rows * group)

    def load(i):
        xc = x_ref[pl.ds(i * rows, rows), :].astype(jnp.float32)
        return xc if s is None else xc + s

    def chunk_stats(xc):
        mean = _group_sum(jnp.sum(xc, axis=0), same) / per_chunk
        d = xc - mean[None, :]
        return mean, _group_sum(jnp.sum(d * d, axis=0), same)

    if n_chunks == 1:
        x_all = load(0)
        mean, m2 = chunk_stats(x_all)
    else:
        # Sums of x - k, with k the first chunk's group means: the shifted-data formula
        # n var = sum (x-k)^2 - (sum (x-k))^2 / n loses only ~(mean-k)^2 / var of precision,
        # and the accumulators stay elementwise in registers (one reduction at the end, none
        # per chunk, so the chunks' loads overlap).
        k = chunk_stats(load(0))[0][None, :]

        def accumulate(i, carry):
            acc1, acc2 = carry
            d = load(i) - k
            return acc1 + d, acc2 + d * d

        zeros = jnp.zeros((rows, cb), jnp.float32)
        acc1, acc2 = lax.fori_loop(0, n_chunks, accumulate, (zeros, zeros))
        n = float(hw * group)
        s1 = _group_sum(jnp.sum(acc1, axis=0), same)
        s2 = _group_sum(jnp.sum(acc2, axis=0), same)
        mean = k[0] + s1 / n
        m2 = jnp.maximum(s2 - s1 * s1 / n, 0.0)
    rstd = lax.rsqrt(m2 / (hw * group) + eps)
    a = scale_ref[...].astype(jnp.float32) * rstd
    b = bias_ref[...].astype(jnp.float32) - mean * a
    mean_ref[...] = mean
    rstd_ref[...] = rstd

    def write(i, xc):
        y = xc * a[None, :] + b[None, :]
        if silu:
            y = _silu_f32(y)
        y_ref[pl.ds(i * rows, rows), :] = y.astype(y_ref.dtype)

    if n_chunks == 1:
        write(0, x_all)
    else:

        def body(i, carry):
            write(i, load(i))
            return carry

        lax.fori_loop(0, n_chunks, body, 0)


def _backward_kernel(
    x_ref,
    scale_ref,
    bias_ref,
    mean_ref,
    rstd_ref,
    g_ref,
    dx_ref,
    dscale_ref,
    dbias_ref,
    *,
    rows,
    group,
    silu,
):
    hw, cb = x_ref.shape
    n_chunks = hw // rows
    same = _same_group(cb, group)
    mean, rstd = mean_ref[...], rstd_ref[...]
    scale = scale_ref[...].astype(jnp.float32)
    bias = bias_ref[...].astype(jnp.float32)

    def local(i):
        """(x_hat, cotangent of the pre-activation) of chunk i."""
        window = pl.ds(i * rows, rows)
        xhat = (x_ref[window, :].astype(jnp.float32) - mean[None, :]) * rstd[None, :]
        g = g_ref[window, :].astype(jnp.float32)
        if silu:
            u = xhat * scale[None, :] + bias[None, :]
            s = 1.0 / (1.0 + jnp.exp(-u))
            g = g * (s * (1.0 + u * (1.0 - s)))
        return xhat, g

    def sums(i, carry):
        acc1, acc2 = carry
        xhat, gu = local(i)
        return acc1 + gu, acc2 + gu * xhat

    if n_chunks == 1:
        xhat_all, gu_all = local(0)
        s1, s2 = jnp.sum(gu_all, axis=0), jnp.sum(gu_all * xhat_all, axis=0)
    else:
        zeros = jnp.zeros((rows, cb), jnp.float32)
        acc1, acc2 = lax.fori_loop(0, n_chunks, sums, (zeros, zeros))
        s1, s2 = jnp.sum(acc1, axis=0), jnp.sum(acc2, axis=0)
    dbias_ref[...] = s1
    dscale_ref[...] = s2
    n = float(hw * group)
    c1 = _group_sum(scale * s1, same) / n
    c2 = _group_sum(scale * s2, same) / n

    def write(i, xhat, gu):
        dx = rstd[None, :] * (scale[None, :] * gu - c1[None, :] - xhat * c2[None, :])
        dx_ref[pl.ds(i * rows, rows), :] = dx.astype(dx_ref.dtype)

    if n_chunks == 1:
        write(0, xhat_all, gu_all)
    else:

        def body(i, carry):
            write(i, *local(i))
            return carry

        lax.fori_loop(0, n_chunks, body, 0)


def _pallas_call(kernel, out_shape, in_specs, out_specs, grid, num_warps, interpret, name):
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        compiler_params=None if interpret else plgpu.CompilerParams(num_warps=num_warps),
        interpret=interpret,
        name=name,
    )


def _specs(hw: int, cb: int):
    """Block specs over the grid (example, channel block): image rows, per channel, per example."""
    image = pl.BlockSpec((None, hw, cb), lambda i, j: (i, 0, j))
    channel = pl.BlockSpec((cb,), lambda i, j: (j,))
    per_example = pl.BlockSpec((None, cb), lambda i, j: (i, j))
    return image, channel, per_example


class _KernelConfig(NamedTuple):
    """Static parameters of the kernels (hashable, for ``nondiff_argnums``)."""

    num_groups: int
    eps: float
    silu: bool
    out_dtype: Any
    cb: int
    rows: int
    num_warps: int
    interpret: bool


# The kernels' wrappers are jitted (``cfg`` static) so that the GroupNorms of a network that
# share a configuration and shape share one traced and one lowered kernel.
@functools.partial(jax.jit, static_argnums=0)
def _forward(cfg: _KernelConfig, x, scale, bias, shift=None):
    """(y, per-channel mean, per-channel 1/std) from the forward kernel; x is NHWC.

    With ``shift``, ``(B, C)``, the kernel normalizes ``x + shift[:, None, None, :]``, adding
    it as it reads ``x`` (in float32), so the sum is never written out.
    """
    b, h, w, c = x.shape
    hw = h * w
    image, channel, per_example = _specs(hw, cfg.cb)
    kernel = functools.partial(
        _forward_kernel,
        rows=cfg.rows,
        group=c // cfg.num_groups,
        eps=cfg.eps,
        silu=cfg.silu,
        has_shift=shift is not None,
    )
    stat = jax.ShapeDtypeStruct((b, c), jnp.float32)
    operands = (x.reshape(b, hw, c), scale, bias) + (() if shift is None else (shift,))
    y, mean, rstd = _pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((b, hw, c), cfg.out_dtype), stat, stat),
        in_specs=[image, channel, channel] + ([] if shift is None else [per_example]),
        out_specs=(image, per_example, per_example),
        grid=(b, c // cfg.cb),
        num_warps=cfg.num_warps,
        interpret=cfg.interpret,
        name="group_norm_forward",
    )(*operands)
    return y.reshape(b, h, w, c), mean, rstd


@functools.partial(jax.jit, static_argnums=0)
def _backward(cfg: _KernelConfig, x, scale, bias, mean, rstd, g):
    """(dx, dscale, dbias) from the backward kernel."""
    b, h, w, c = x.shape
    hw = h * w
    image, channel, per_example = _specs(hw, cfg.cb)
    kernel = functools.partial(
        _backward_kernel, rows=cfg.rows, group=c // cfg.num_groups, silu=cfg.silu
    )
    partial = jax.ShapeDtypeStruct((b, c), jnp.float32)
    dx, dscale, dbias = _pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((b, hw, c), x.dtype), partial, partial),
        in_specs=[image, channel, channel, per_example, per_example, image],
        out_specs=(image, per_example, per_example),
        grid=(b, c // cfg.cb),
        num_warps=cfg.num_warps,
        interpret=cfg.interpret,
        name="group_norm_backward",
    )(x.reshape(b, hw, c), scale, bias, mean, rstd, g.reshape(b, hw, c))
    dx = dx.reshape(b, h, w, c)
    return dx, dscale.sum(0).astype(scale.dtype), dbias.sum(0).astype(bias.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _kernel_reverse(cfg, x, scale, bias):
    return _forward(cfg, x, scale, bias)[0]


def _kernel_reverse_fwd(cfg, x, scale, bias):
    y, mean, rstd = _forward(cfg, x, scale, bias)
    return y, (x, scale, bias, mean, rstd)


def _kernel_reverse_bwd(cfg, residuals, g):
    return _backward(cfg, *residuals, g)


_kernel_reverse.defvjp(_kernel_reverse_fwd, _kernel_reverse_bwd)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _kernel_forward_mode(cfg, x, scale, bias, shift=None):
    return _forward(cfg, x, scale, bias, shift)[0]


@_kernel_forward_mode.defjvp
def _kernel_forward_mode_jvp(cfg, primals, tangents):
    x, scale, bias, shift = primals
    dx, dscale, dbias, dshift = tangents
    y, mean, rstd = _forward(cfg, x, scale, bias, shift)
    b, h, w, c = x.shape
    group = c // cfg.num_groups

    def group_mean(v):  # (B, H, W, C) -> (B, 1, 1, C), each channel its group's mean
        m = v.reshape(b, h * w, cfg.num_groups, group).mean(axis=(1, 3))
        return jnp.repeat(m, group, axis=-1)[:, None, None, :]

    def per_pixel(v):  # (B, C) -> (B, 1, 1, C), in float32
        return v.astype(jnp.float32)[:, None, None, :]

    mean4, rstd4 = mean[:, None, None, :], rstd[:, None, None, :]
    xs = x.astype(jnp.float32) if shift is None else x.astype(jnp.float32) + per_pixel(shift)
    xhat = (xs - mean4) * rstd4
    dxf = dx.astype(jnp.float32) if shift is None else dx.astype(jnp.float32) + per_pixel(dshift)
    dxhat = rstd4 * (dxf - group_mean(dxf) - xhat * group_mean(dxf * xhat))
    du = scale * dxhat + dscale * xhat + dbias
    if cfg.silu:
        u = xhat * scale + bias
        s = jax.nn.sigmoid(u)
        du = du * (s * (1.0 + u * (1.0 - s)))
    return y, du.astype(y.dtype)


def _xla_group_norm(x, scale, bias, num_groups, eps, fast_variance, out_dtype):
    """``flax.linen.GroupNorm``'s arithmetic, step by step (same rounding)."""
    group = x.shape[-1] // num_groups
    xg = x.reshape(x.shape[:-1] + (num_groups, group)).astype(
        jnp.promote_types(x.dtype, jnp.float32)
    )
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
    mean = xg.mean(axes)
    if fast_variance:
        var = jnp.maximum(0.0, (xg * xg).mean(axes) - mean * mean)
    else:
        var = ((xg - jnp.expand_dims(mean, axes)) ** 2).mean(axes)
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    mean = jnp.repeat(mean, group, axis=-1).reshape(shape)
    var = jnp.repeat(var, group, axis=-1).reshape(shape)
    y = x - mean
    mul = lax.rsqrt(var + eps) * scale
    return jnp.asarray(y * mul + bias, out_dtype)


def default_backend_is_cuda() -> bool:
    """Whether JAX's default backend is a CUDA GPU: where ``impl="auto"`` takes the kernel.

    ``impl="auto"`` decides when :func:`group_norm` is traced, by this function (as JAX's
    own cuDNN attention checks its platform), not with ``lax.platform_dependent``, which
    traces and differentiates both implementations at every GroupNorm. Tracing and lowering
    the CIFAR-10 NCSN++ train step for CUDA took 9.5-10.0 s that way against 5.6-5.7 s
    (``compile_bench.py --lower-for cuda`` on a CPU, ``docs/benchmarks.md``), time paid at
    every process start, also when the compiled program comes from the cache.

    Example:
      >>> default_backend_is_cuda()  # on a CPU
      False
    """
    if jax.default_backend() != "gpu":
        return False
    return "cuda" in jax.extend.backend.get_backend().platform_version.lower()


def group_norm(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    *,
    num_groups: int,
    epsilon: float = 1e-6,
    silu: bool = False,
    dtype: Dtype | None = None,
    fast_variance: bool = True,
    train: bool = False,
    impl: Impl = "auto",
    shift: jax.Array | None = None,
    interpret: bool = False,
    tile_elements: int = TILE_ELEMENTS,
    channel_block: int | None = None,
    num_warps: int = NUM_WARPS,
) -> jax.Array:
    r"""GroupNorm over the last axis of NHWC ``x``, then SiLU if ``silu``.

    :math:`y = \phi(\gamma (x - \mu_g) / \sqrt{\sigma_g^2 + \epsilon} + \beta)` with the
    statistics over :math:`(H, W)` and the channels of each group (the module docstring
    has the details). With ``shift`` :math:`s`, of ``(B, C)``, the input is
    :math:`x_{bhwc} + s_{bc}` (a ResNet block's time embedding).

    Args:
      x: ``(B, H, W, C)``, any float dtype.
      scale, bias: ``(C,)``, :math:`\gamma` and :math:`\beta`.
      num_groups: :math:`G`, dividing ``C``.
      epsilon: :math:`\epsilon`.
      silu: apply :math:`\phi(u) = u\,\sigma(u)` (fused into the kernel).
      dtype: the output dtype (default: ``x``'s and the parameters' promoted dtype, as in
        flax).
      fast_variance: the XLA path's variance as :math:`E[x^2] - E[x]^2` (flax's default)
        rather than two-pass; the kernel always uses the shifted form (module docstring).
      train: the kernel's differentiation (module docstring): ``True`` for the hand-written
        backward kernel (reverse mode only), ``False`` to keep forward mode.
      shift: ``(B, C)``, added to every pixel of ``x`` before the normalization; ``None``
        for none. With ``train=False`` the XLA path adds it behind a barrier on ``x``
        (:data:`SHIFT_AFTER_BARRIER`) and the kernel as it reads ``x``, in float32
        (:data:`SHIFT_IN_KERNEL`, where ``x`` has the promoted dtype of ``x`` and ``shift``);
        the value is the same up to rounding.
      impl: ``"auto"`` (the kernel where JAX's default backend is a CUDA GPU, decided at
        trace time by :func:`default_backend_is_cuda`, for the shapes it covers up to
        ``AUTO_MAX_ROWS`` pixels, where it measured faster; XLA otherwise), ``"xla"``, or
        ``"pallas"`` (the kernel for every shape it covers, on whatever platform the program
        is lowered for: CUDA, or any with ``interpret``; XLA for the shapes it does not
        cover, see :func:`kernel_blocks`). A program traced where the default backend is a
        CUDA GPU but run elsewhere (on the host's CPU devices, or exported for other
        platforms) needs ``"xla"``.
      interpret: run the kernel in Pallas' interpreter (tests on a CPU).
      tile_elements, channel_block, num_warps: the kernel's tiling (benchmarks).

    Returns:
      ``y``, shaped like ``x``.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.arange(2 * 2 * 2 * 8, dtype=jnp.float32).reshape(2, 2, 2, 8)
      >>> y = group_norm(x, jnp.ones(8), jnp.zeros(8), num_groups=2)
      >>> float(jnp.round(y[0, ..., :4].mean(), 5)), float(jnp.round(y[0, ..., :4].std(), 3))
      (0.0, 1.0)
      >>> t = jnp.arange(2 * 8, dtype=jnp.float32).reshape(2, 8)  # a shift per example, channel
      >>> ys = group_norm(x, jnp.ones(8), jnp.zeros(8), num_groups=2, shift=t)
      >>> yt = group_norm(x + t[:, None, None, :], jnp.ones(8), jnp.zeros(8), num_groups=2)
      >>> bool(jnp.allclose(ys, yt))
      True
    """
    if impl not in IMPLS:
        raise ValueError(f"group_norm: impl must be one of {IMPLS}, got {impl!r}.")
    if x.ndim < 2 or num_groups <= 0 or x.shape[-1] % num_groups:
        raise ValueError(
            f"group_norm: num_groups={num_groups} must be positive and divide the channels "
            f"(last axis) of x, shape {x.shape}."
        )
    if shift is not None and (shift.ndim != 2 or shift.shape != (x.shape[0], x.shape[-1])):
        raise ValueError(
            f"group_norm: shift must have shape (B, C) = {(x.shape[0], x.shape[-1])} for x of "
            f"shape {x.shape}, got {shift.shape}."
        )
    x_dtype = x.dtype if shift is None else jnp.result_type(x, shift)
    out_dtype = jnp.dtype(dtype) if dtype is not None else jnp.result_type(x_dtype, scale, bias)

    def shifted(x, barrier):
        if shift is None:
            return x
        if barrier:
            x = forward_barrier(x)
        # indexed as the blocks wrote it (t[:, None, None, :]): the same program, op for op
        return x + shift[(slice(None),) + (None,) * (x.ndim - 2) + (slice(None),)]

    def xla(x, scale, bias):
        x = shifted(x, SHIFT_AFTER_BARRIER and not train)
        y = _xla_group_norm(x, scale, bias, num_groups, epsilon, fast_variance, out_dtype)
        return jax.nn.silu(y) if silu else y

    if impl == "xla":
        return xla(x, scale, bias)
    blocks = kernel_blocks(
        x.shape, num_groups, jnp.dtype(x_dtype).itemsize, tile_elements, channel_block
    )
    if impl == "auto" and x.ndim == 4 and x.shape[1] * x.shape[2] > AUTO_MAX_ROWS:
        return xla(x, scale, bias)
    if blocks is None:
        return xla(x, scale, bias)
    cfg = _KernelConfig(num_groups, epsilon, silu, out_dtype, *blocks, num_warps, bool(interpret))
    kernel = _kernel_reverse if train else _kernel_forward_mode

    def fused(x, scale, bias):
        if shift is not None and not train and SHIFT_IN_KERNEL and x.dtype == x_dtype:
            return _kernel_forward_mode(cfg, x, scale, bias, shift)
        # the kernel reads a materialized input: here XLA may as well fold the add into the
        # convolution that made x
        return kernel(cfg, shifted(x, False), scale, bias)

    if impl == "pallas" or interpret or default_backend_is_cuda():
        return fused(x, scale, bias)
    return xla(x, scale, bias)


class GroupNorm(nn.Module):
    r"""GroupNorm, then an activation; GroupNorm + SiLU runs as one fused kernel on GPUs.

    Parameters ``scale`` and ``bias`` as in ``flax.linen.GroupNorm`` (so checkpoints and
    converters see the same tree). :func:`group_norm` has the math and the implementations.

    Attributes:
      num_groups: :math:`G`.
      epsilon: :math:`\epsilon`.
      act: applied to the normalized output: ``None``, ``jax.nn.silu`` (fused), or any
        other callable (applied after the kernel).
      fast_variance: the XLA path's variance formula (see :func:`group_norm`).
      impl: ``"auto"``, ``"xla"`` or ``"pallas"`` (see :func:`group_norm`).
      dtype: the output dtype (parameters stay float32).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> gn = GroupNorm(num_groups=2, act=jax.nn.silu)
      >>> x = jnp.ones((1, 4, 4, 8))
      >>> y, variables = gn.init_with_output(jax.random.key(0), x)
      >>> y.shape, sorted(variables["params"])
      ((1, 4, 4, 8), ['bias', 'scale'])
    """

    num_groups: int
    epsilon: float = 1e-6
    act: Callable[[jax.Array], jax.Array] | None = None
    fast_variance: bool = True
    impl: Impl = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, shift: jax.Array | None = None
    ) -> jax.Array:
        """Normalizes ``x`` (plus ``shift``, ``(B, C)``, if given; see :func:`group_norm`)."""
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        fuse_silu = self.act is jax.nn.silu
        y = group_norm(
            x,
            scale,
            bias,
            num_groups=self.num_groups,
            epsilon=self.epsilon,
            silu=fuse_silu,
            dtype=self.dtype,
            fast_variance=self.fast_variance,
            train=train,
            impl=self.impl,
            shift=shift,
        )
        if self.act is not None and not fuse_silu:
            y = self.act(y)
        return y
