r"""FIR resampling of NHWC images: ``upfirdn2d`` and the up/down-sampling built on it.

``upfirdn2d(x, k, up, down, pad)`` is the operation of StyleGAN2 (Karras et al., 2020) that
NCSN++ (Song et al., 2021) uses for anti-aliased resampling:

1. insert ``up - 1`` zeros after every pixel (both spatial axes),
2. zero-pad by ``pad = (p0, p1)`` (before, after) on both spatial axes (negative = crop),
3. convolve (true convolution, the kernel flipped) with the 2-D kernel ``k``, per channel,
4. keep every ``down``-th pixel.

The filter is written as a sum of ``K_h K_w`` strided slices of the zero-inserted, padded
image, each scaled by one kernel tap. XLA fuses the interior padding, the slices and the sum
into one elementwise kernel that reads the input once and writes the output once (and the same
for its transpose in the backward pass). Upsampling (``down = 1``) skips the inserted zeros:
each of the ``up**2`` output phases sums only the taps that land on real pixels (4 of 16 for
the 4-tap kernel at ``up = 2``), and a reshape interleaves the phases. A depthwise
``lax.conv_general_dilated`` computes the same thing, but on GPU it runs as a slow grouped
convolution (see ``docs/benchmarks.md``). Everything is plain ``lax``, so forward-mode
(``jax.jvp``, used by the likelihood) and reverse-mode differentiation both work.

A 1-D kernel ``k`` of length K becomes the separable 2-D kernel :math:`k k^\top / (\sum k)^2`.
The default ``(1, 3, 3, 1)`` is the binomial filter of the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

#: The reference's FIR kernel (a binomial filter).
DEFAULT_FIR_KERNEL = (1, 3, 3, 1)

_NHWC = ("NHWC", "HWIO", "NHWC")


def setup_kernel(k: Sequence[float] | np.ndarray) -> np.ndarray:
    r"""Turns a 1-D or 2-D FIR kernel into a normalized 2-D float32 kernel.

    A 1-D kernel :math:`k` becomes :math:`k k^\top`; the result is divided by its sum.

    Example:
      >>> setup_kernel([1, 1]).tolist()
      [[0.25, 0.25], [0.25, 0.25]]
    """
    k = np.asarray(k, dtype=np.float64)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.size == 0:
        raise ValueError(
            f"FIR kernel must be 1-D or square 2-D and non-empty, got shape {k.shape}."
        )
    total = k.sum()
    if total == 0:
        raise ValueError(f"FIR kernel must have a non-zero sum, got {k.tolist()}.")
    return (k / total).astype(np.float32)


def _check_nhwc(x: jax.Array, where: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{where}: x must be NHWC with 4 dimensions, got shape {x.shape}.")


def _pair(pad: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(pad, int):
        return pad, pad
    p0, p1 = pad
    return int(p0), int(p1)


def upfirdn2d(
    x: jax.Array,
    kernel: Sequence[Sequence[float]] | np.ndarray | jax.Array,
    up: int = 1,
    down: int = 1,
    pad: int | Sequence[int] = (0, 0),
) -> jax.Array:
    r"""Upsample by zero insertion, pad, FIR-filter and downsample an NHWC batch.

    With :math:`\tilde x` the zero-upsampled, padded image,
    :math:`y[i, j] = \sum_{a,b} \tilde x[d\,i + a, d\,j + b]\; k[K_h-1-a, K_w-1-b]`.

    Args:
      x: ``(B, H, W, C)``.
      kernel: the 2-D FIR kernel ``(K_h, K_w)`` (used as given: no normalization here).
      up: the upsampling factor (>= 1).
      down: the downsampling factor (>= 1).
      pad: ``(p0, p1)`` zeros before/after on both spatial axes, or one int; negative crops.

    Returns:
      ``(B, H', W', C)`` with :math:`H' = \lfloor (H\,up + p_0 + p_1 - K_h)/down \rfloor + 1`.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.ones((1, 4, 4, 2))
      >>> upfirdn2d(x, setup_kernel([1, 3, 3, 1]), down=2, pad=(1, 1)).shape
      (1, 2, 2, 2)
    """
    _check_nhwc(x, "upfirdn2d")
    if up < 1 or down < 1:
        raise ValueError(f"upfirdn2d: up and down must be >= 1, got up={up}, down={down}.")
    if isinstance(kernel, jax.core.Tracer):
        k = kernel.astype(x.dtype)
    else:
        k = np.asarray(kernel, dtype=np.float32)
    if k.ndim != 2:
        raise ValueError(f"upfirdn2d: kernel must be 2-D, got shape {k.shape}.")
    p0, p1 = _pair(pad)
    kh, kw = k.shape
    # The zero-inserted, padded image has (H - 1) up + 1 + p0 + p1 + (up - 1) rows: upfirdn
    # also puts up - 1 zeros after the last pixel.
    hp, wp = (x.shape[1] * up + p0 + p1, x.shape[2] * up + p0 + p1)
    ho, wo = (hp - kh) // down + 1, (wp - kw) // down + 1
    if ho < 1 or wo < 1:
        raise ValueError(
            f"upfirdn2d: the padded image ({hp}x{wp}) is smaller than the kernel ({kh}x{kw})."
        )
    if isinstance(k, np.ndarray) and up > 1 and down == 1 and ho % up == 0 and wo % up == 0:
        return _upfirdn2d_polyphase(x, k, up, p0, ho, wo)
    return _upfirdn2d_direct(x, k, up, down, p0, p1, ho, wo)


def _upfirdn2d_direct(x, k, up: int, down: int, p0: int, p1: int, ho: int, wo: int):
    """``upfirdn2d`` as the sum of K_h K_w strided slices of the zero-inserted, padded image."""
    kh, kw = k.shape
    cfg = (p0, p1 + up - 1, up - 1)  # interior padding inserts the zeros
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), cfg, cfg, (0, 0, 0)))
    b, c = x.shape[0], x.shape[3]
    out = None
    for a in range(kh):
        for bb in range(kw):
            # True convolution: output pixel i sees kernel tap (kh-1-a) at offset a.
            tap = k[kh - 1 - a, kw - 1 - bb]
            if not isinstance(tap, jax.Array) and tap == 0:
                continue
            window = lax.slice(
                xp,
                (0, a, bb, 0),
                (b, a + down * (ho - 1) + 1, bb + down * (wo - 1) + 1, c),
                (1, down, down, 1),
            )
            term = window * jnp.asarray(tap, x.dtype)
            out = term if out is None else out + term
    return jnp.zeros((b, ho, wo, c), x.dtype) if out is None else out


def _phase_taps(size: int, up: int, p0: int) -> list[list[tuple[int, int]]]:
    r"""Per output phase r: the (tap offset a, input offset d) pairs that hit a real pixel.

    Output row :math:`i = up\,q + r` reads the zero-inserted image at :math:`i + a`, a real
    pixel :math:`j` iff :math:`i + a = p_0 + up\,j`, i.e. :math:`a \equiv p_0 - r` (mod up),
    and then :math:`j = q + d` with :math:`d = (r + a - p_0)/up`.
    """
    return [
        [(a, (r + a - p0) // up) for a in range(size) if (r + a - p0) % up == 0] for r in range(up)
    ]


def _phase_images(x, k: np.ndarray, up: int, p0: int, ho: int, wo: int) -> list[list[jax.Array]]:
    r"""The ``up x up`` phase images of an upsampling: ``[r][s]`` holds output pixels
    :math:`(up\,q + r, up\,p + s)`, each a sum of :math:`\lceil K/up \rceil^2` shifted
    slices of the (zero-extended) input."""
    b, h, w, c = x.shape
    kh, kw = k.shape
    qh, qw = ho // up, wo // up
    taps_h, taps_w = _phase_taps(kh, up, p0), _phase_taps(kw, up, p0)
    dh = [d for taps in taps_h for _, d in taps] or [0]
    dw = [d for taps in taps_w for _, d in taps] or [0]
    lo_h, lo_w = max(0, -min(dh)), max(0, -min(dw))
    hi_h, hi_w = max(0, qh - h + max(dh)), max(0, qw - w + max(dw))
    xp = jnp.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
    phases = []
    for r in range(up):
        row = []
        for s in range(up):
            acc = None
            for a, di in taps_h[r]:
                for bb, dj in taps_w[s]:
                    tap = k[kh - 1 - a, kw - 1 - bb]
                    if tap == 0:
                        continue
                    i0, j0 = lo_h + di, lo_w + dj
                    window = lax.slice(xp, (0, i0, j0, 0), (b, i0 + qh, j0 + qw, c))
                    term = window * jnp.asarray(tap, x.dtype)
                    acc = term if acc is None else acc + term
            row.append(jnp.zeros((b, qh, qw, c), x.dtype) if acc is None else acc)
        phases.append(row)
    return phases


def _upfirdn2d_polyphase(x, k: np.ndarray, up: int, p0: int, ho: int, wo: int):
    r"""Upsampling without the inserted zeros: ``up**2`` phase images, then interleaved.

    Each output phase :math:`(r, s)` is a sum of :math:`\lceil K/up \rceil^2` shifted slices
    of the input, where the direct form sums all :math:`K^2` taps of the zero-inserted image
    (for the 4-tap kernel at ``up = 2``: 4 instead of 16). Stacking the phases on new axes
    after H and W makes the interleave a reshape. (Two other interleaves, summed interior pads
    and a parity select, measured slower on an H100: ``experiments/benchmarks/fir_bench.py``.)
    """
    phases = _phase_images(x, k, up, p0, ho, wo)
    b, qh, qw, c = phases[0][0].shape
    rows = [jnp.stack(row, axis=3) for row in phases]  # (B, qh, qw, up, C)
    return jnp.stack(rows, axis=2).reshape(b, ho, wo, c)  # (B, qh, up, qw, up, C)


def upsample_2d(
    x: jax.Array, k: Sequence[float] = DEFAULT_FIR_KERNEL, factor: int = 2, gain: float = 1.0
) -> jax.Array:
    """Upsamples ``(B, H, W, C)`` to ``(B, factor H, factor W, C)`` with the FIR filter ``k``.

    The kernel is normalized and scaled by ``gain * factor**2`` (keeping the mean intensity);
    with ``p = K - factor`` the padding is ``((p + 1)//2 + factor - 1, p//2)``.

    Example:
      >>> import jax.numpy as jnp
      >>> upsample_2d(jnp.ones((1, 4, 4, 3))).shape
      (1, 8, 8, 3)
    """
    kernel = setup_kernel(k) * (gain * factor**2)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(
    x: jax.Array, k: Sequence[float] = DEFAULT_FIR_KERNEL, factor: int = 2, gain: float = 1.0
) -> jax.Array:
    """Downsamples ``(B, H, W, C)`` to ``(B, H/factor, W/factor, C)`` with the FIR filter ``k``.

    With ``p = K - factor`` the padding is ``((p + 1)//2, p//2)``.

    Example:
      >>> import jax.numpy as jnp
      >>> downsample_2d(jnp.ones((1, 4, 4, 3))).shape
      (1, 2, 2, 3)
    """
    kernel = setup_kernel(k) * gain
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(
    x: jax.Array,
    w: jax.Array,
    k: Sequence[float] = DEFAULT_FIR_KERNEL,
    factor: int = 2,
    gain: float = 1.0,
) -> jax.Array:
    """Fused upsample + convolution: zero-insertion, the conv ``w``, then the FIR filter.

    Equals the transposed convolution of StyleGAN2's ``upsample_conv_2d``: the image is
    zero-upsampled by ``factor``, cross-correlated with ``w`` (HWIO) over its full support,
    and filtered with ``k`` (scaled by ``gain * factor**2``) back to ``factor`` times the size.

    Args:
      x: ``(B, H, W, I)``.
      w: ``(kh, kw, I, O)`` conv kernel (square).
      k: 1-D FIR kernel.
      factor: the upsampling factor.
      gain: the filter's gain.

    Returns:
      ``(B, factor H, factor W, O)``.

    Example:
      >>> import jax.numpy as jnp
      >>> upsample_conv_2d(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 3, 5))).shape
      (1, 8, 8, 5)
    """
    _check_nhwc(x, "upsample_conv_2d")
    kh, kw = w.shape[0], w.shape[1]
    if kh != kw:
        raise ValueError(f"upsample_conv_2d: w must have a square kernel, got shape {w.shape}.")
    kernel = setup_kernel(k) * (gain * factor**2)
    p = (kernel.shape[0] - factor) - (kw - 1)
    x = lax.conv_general_dilated(
        x,
        w.astype(x.dtype),
        window_strides=(1, 1),
        padding=((kh - 1, kh - 1), (kw - 1, kw - 1)),
        lhs_dilation=(factor, factor),
        dimension_numbers=_NHWC,
    )
    return upfirdn2d(x, kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(
    x: jax.Array,
    w: jax.Array,
    k: Sequence[float] = DEFAULT_FIR_KERNEL,
    factor: int = 2,
    gain: float = 1.0,
) -> jax.Array:
    """Fused FIR filter + strided conv: blur with ``k``, then conv ``w`` with stride ``factor``.

    With ``p = (K - factor) + (kw - 1)`` the blur pads ``((p + 1)//2, p//2)`` and the conv pads
    nothing.

    Args:
      x: ``(B, H, W, I)``.
      w: ``(kh, kw, I, O)`` conv kernel (square).
      k: 1-D FIR kernel.
      factor: the downsampling factor.
      gain: the filter's gain.

    Returns:
      ``(B, H / factor, W / factor, O)``.

    Example:
      >>> import jax.numpy as jnp
      >>> conv_downsample_2d(jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 5))).shape
      (1, 4, 4, 5)
    """
    _check_nhwc(x, "conv_downsample_2d")
    kh, kw = w.shape[0], w.shape[1]
    if kh != kw:
        raise ValueError(f"conv_downsample_2d: w must have a square kernel, got shape {w.shape}.")
    kernel = setup_kernel(k) * gain
    p = (kernel.shape[0] - factor) + (kw - 1)
    x = upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2))
    return lax.conv_general_dilated(
        x,
        w.astype(x.dtype),
        window_strides=(factor, factor),
        padding="VALID",
        dimension_numbers=_NHWC,
    )


def naive_upsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour upsampling of ``(B, H, W, C)`` by ``factor``.

    Example:
      >>> import jax.numpy as jnp
      >>> naive_upsample_2d(jnp.arange(4.0).reshape(1, 2, 2, 1))[0, :, :, 0].tolist()[0]
      [0.0, 0.0, 1.0, 1.0]
    """
    _check_nhwc(x, "naive_upsample_2d")
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
    return x.reshape(b, h * factor, w * factor, c)


def naive_downsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
    """Mean-pooling of ``(B, H, W, C)`` over ``factor x factor`` blocks.

    Example:
      >>> import jax.numpy as jnp
      >>> naive_downsample_2d(jnp.arange(4.0).reshape(1, 2, 2, 1)).ravel().tolist()
      [1.5]
    """
    _check_nhwc(x, "naive_downsample_2d")
    b, h, w, c = x.shape
    if h % factor or w % factor:
        raise ValueError(
            f"naive_downsample_2d: H and W must be divisible by factor={factor}, got {x.shape}."
        )
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
