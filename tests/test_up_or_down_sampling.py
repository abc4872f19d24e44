"""FIR resampling: ``upfirdn2d`` against its definition, and the resampling helpers built on it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde.models import up_or_down_sampling as fir

# float32 convolutions of O(1) values over at most ~50 terms: round-off stays below 1e-5.
ATOL = 1e-5


def upfirdn_direct(x: np.ndarray, k: np.ndarray, up: int, down: int, pad: tuple[int, int]):
    """The definition, step by step, with loops (NHWC, float64)."""
    b, h, w, c = x.shape
    p0, p1 = pad
    # 1. insert up-1 zeros after every pixel.
    u = np.zeros((b, h * up, w * up, c))
    u[:, ::up, ::up, :] = x
    # 2. pad with zeros (negative pads crop).
    size = (h * up + p0 + p1, w * up + p0 + p1)
    padded = np.zeros((b, *size, c))
    for i in range(size[0]):
        for j in range(size[1]):
            si, sj = i - p0, j - p0
            if 0 <= si < h * up and 0 <= sj < w * up:
                padded[:, i, j, :] = u[:, si, sj, :]
    # 3. true convolution ('valid'), 4. keep every down-th pixel.
    kh, kw = k.shape
    out = np.zeros((b, size[0] - kh + 1, size[1] - kw + 1, c))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            for a in range(kh):
                for bb in range(kw):
                    out[:, i, j, :] += padded[:, i + a, j + bb, :] * k[kh - 1 - a, kw - 1 - bb]
    return out[:, ::down, ::down, :]


def transposed_conv_direct(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """StyleGAN2's transposed conv with the flipped kernel, as a scatter (NHWC, HWIO)."""
    b, h, wd, _ = x.shape
    kh, kw, _, o = w.shape
    wf = w[::-1, ::-1]
    out = np.zeros((b, (h - 1) * stride + kh, (wd - 1) * stride + kw, o))
    for i in range(h):
        for j in range(wd):
            contrib = np.einsum("bc,hwco->bhwo", x[:, i, j, :], wf)
            out[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :] += contrib
    return out


@pytest.mark.parametrize(
    "up, down, pad",
    [
        (1, 1, (0, 0)),
        (2, 1, (2, 1)),
        (1, 2, (1, 1)),
        (3, 2, (1, 2)),
        (2, 2, (-1, 3)),
        (1, 1, (-1, -1)),
    ],
)
def test_upfirdn2d_matches_definition(np_rng, up, down, pad):
    x = np_rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    # An asymmetric kernel: catches a missing flip.
    k = np_rng.standard_normal((3, 3)).astype(np.float32)
    got = np.asarray(fir.upfirdn2d(x, k, up=up, down=down, pad=pad))
    want = upfirdn_direct(x.astype(np.float64), k.astype(np.float64), up, down, pad)
    np.testing.assert_allclose(got, want, atol=ATOL)


@pytest.mark.parametrize("ksize", [1, 3, 4])
@pytest.mark.parametrize("up", [2, 3])
@pytest.mark.parametrize("pad", [(2, 1), (-2, 3), (3, -1)])
def test_polyphase_upsampling_matches_definition_and_its_gradient(np_rng, ksize, up, pad):
    """Upsampling (down = 1) runs as up**2 phase images when the output divides into them.

    Values against the loop definition; the gradient against that of the zero-insertion form
    (``_upfirdn2d_direct``), the same linear map written the other way.
    """
    x = np_rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    k = np_rng.standard_normal((ksize, ksize)).astype(np.float32)
    size = (5 * up + sum(pad) - ksize + 1, 4 * up + sum(pad) - ksize + 1)
    if min(size) < 1:
        pytest.skip("output would be empty")
    got = fir.upfirdn2d(x, k, up=up, pad=pad)
    want = upfirdn_direct(x.astype(np.float64), k.astype(np.float64), up, 1, pad)
    np.testing.assert_allclose(np.asarray(got), want, atol=ATOL)

    g = np_rng.standard_normal(got.shape).astype(np.float32)
    _, vjp = jax.vjp(lambda v: fir.upfirdn2d(v, k, up=up, pad=pad), jnp.asarray(x))
    _, vjp_direct = jax.vjp(
        lambda v: fir._upfirdn2d_direct(v, k, up, 1, pad[0], pad[1], *size), jnp.asarray(x)
    )
    np.testing.assert_allclose(np.asarray(vjp(g)[0]), np.asarray(vjp_direct(g)[0]), atol=ATOL)


@pytest.mark.parametrize("up, down, pad", [(2, 1, (2, 1)), (1, 2, (1, 1)), (3, 1, (0, 2))])
def test_upfirdn2d_supports_forward_and_reverse_mode(np_rng, up, down, pad):
    r"""The likelihood differentiates networks forward-mode (``jax.jvp``), training in reverse.

    ``upfirdn2d`` is linear, so its JVP at any point is the map applied to the tangent, and
    its VJP is the adjoint: :math:`\langle g, f(t)\rangle = \langle f^*(g), t\rangle`.
    """
    x, t = np_rng.standard_normal((2, 2, 4, 4, 3)).astype(np.float32)
    k = fir.setup_kernel([1, 3, 3, 1]) * up**2

    def f(v):
        return fir.upfirdn2d(v, k, up=up, down=down, pad=pad)

    y, jv = jax.jvp(f, (jnp.asarray(x),), (jnp.asarray(t),))
    np.testing.assert_allclose(np.asarray(jv), np.asarray(f(t)), atol=ATOL)
    g = np_rng.standard_normal(y.shape).astype(np.float32)
    (adj,) = jax.vjp(f, jnp.asarray(x))[1](jnp.asarray(g))
    np.testing.assert_allclose(np.sum(g * np.asarray(jv)), np.sum(np.asarray(adj) * t), rtol=1e-5)


def test_setup_kernel_is_normalized_outer_product():
    k = fir.setup_kernel([1, 3, 3, 1])
    np.testing.assert_allclose(k, np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0, rtol=1e-7)
    with pytest.raises(ValueError, match="non-zero sum"):
        fir.setup_kernel([1, -1])


def test_upsample_and_downsample_match_definition(np_rng):
    x = np_rng.standard_normal((1, 6, 6, 2)).astype(np.float32)
    k = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    up = upfirdn_direct(x.astype(np.float64), 4 * k, 2, 1, (2, 1))
    down = upfirdn_direct(x.astype(np.float64), k, 1, 2, (1, 1))
    np.testing.assert_allclose(np.asarray(fir.upsample_2d(x)), up, atol=ATOL)
    np.testing.assert_allclose(np.asarray(fir.downsample_2d(x)), down, atol=ATOL)


def test_resampling_keeps_constants_in_the_interior():
    # The filters have unit DC gain: away from the zero padding, a constant stays a constant.
    x = np.full((1, 8, 8, 2), 3.0, np.float32)
    np.testing.assert_allclose(np.asarray(fir.upsample_2d(x))[:, 2:-2, 2:-2], 3.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(fir.downsample_2d(x))[:, 1:-1, 1:-1], 3.0, rtol=1e-6)


def test_fused_convs_with_identity_kernel_reduce_to_plain_resampling(np_rng):
    # A centred delta kernel makes the conv the identity, so the fused ops must align exactly
    # with the plain FIR resampling (this pins the padding of the fused versions).
    x = np_rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    delta = np.zeros((3, 3, 3, 3), np.float32)
    for c in range(3):
        delta[1, 1, c, c] = 1.0
    np.testing.assert_allclose(
        np.asarray(fir.upsample_conv_2d(x, delta)), np.asarray(fir.upsample_2d(x)), atol=ATOL
    )
    np.testing.assert_allclose(
        np.asarray(fir.conv_downsample_2d(x, delta)), np.asarray(fir.downsample_2d(x)), atol=ATOL
    )


def test_upsample_conv_2d_matches_stylegan_transposed_conv(np_rng):
    x = np_rng.standard_normal((1, 4, 4, 2)).astype(np.float32)
    w = np_rng.standard_normal((3, 3, 2, 5)).astype(np.float32)
    k = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0 * 4
    t = transposed_conv_direct(x.astype(np.float64), w.astype(np.float64), 2)
    want = upfirdn_direct(t, k, 1, 1, (1, 1))  # p = (4 - 2) - (3 - 1) = 0 -> pad (1, 1)
    got = np.asarray(fir.upsample_conv_2d(x, w))
    assert got.shape == (1, 8, 8, 5)
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_conv_downsample_2d_matches_blur_then_strided_conv(np_rng):
    x = np_rng.standard_normal((1, 8, 8, 2)).astype(np.float32)
    w = np_rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    k = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    blur = upfirdn_direct(x.astype(np.float64), k, 1, 1, (2, 2))
    want = np.zeros((1, 4, 4, 4))
    for i in range(4):
        for j in range(4):
            patch = blur[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :]
            want[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, w)
    np.testing.assert_allclose(np.asarray(fir.conv_downsample_2d(x, w)), want, atol=ATOL)


def test_naive_resampling(np_rng):
    x = np_rng.standard_normal((2, 4, 6, 3)).astype(np.float32)
    up = np.asarray(fir.naive_upsample_2d(x))
    np.testing.assert_array_equal(up, x.repeat(2, axis=1).repeat(2, axis=2))
    down = np.asarray(fir.naive_downsample_2d(x))
    want = x.reshape(2, 2, 2, 3, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(down, want, rtol=1e-6)


def test_upfirdn2d_under_jit_and_bad_input(np_rng):
    x = np_rng.standard_normal((1, 4, 4, 2)).astype(np.float32)
    k = fir.setup_kernel([1, 3, 3, 1]) * 4  # gain factor**2 keeps the mean when upsampling
    f = jax.jit(lambda x: fir.upfirdn2d(x, k, up=2, pad=(2, 1)))
    np.testing.assert_allclose(np.asarray(f(x)), np.asarray(fir.upsample_2d(x)), atol=ATOL)
    with pytest.raises(ValueError, match="NHWC"):
        fir.upfirdn2d(x[0], k)
    with pytest.raises(ValueError, match="up and down"):
        fir.upfirdn2d(x, k, up=0)


def test_upfirdn2d_with_a_traced_kernel_and_bfloat16(np_rng):
    """A kernel passed through jit (traced, not a constant) gives the same values; the output
    keeps the input's dtype (bfloat16 compute stays bfloat16)."""
    x = np_rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    k = fir.setup_kernel([1, 3, 3, 1])
    want = np.asarray(fir.upfirdn2d(x, k, down=2, pad=(1, 1)))
    got = jax.jit(lambda x, k: fir.upfirdn2d(x, k, down=2, pad=(1, 1)))(x, k)
    np.testing.assert_allclose(np.asarray(got), want, atol=ATOL)
    low = fir.upfirdn2d(jnp.asarray(x, jnp.bfloat16), k, up=2, pad=(2, 1))
    assert low.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="smaller than the kernel"):
        fir.upfirdn2d(x, k, pad=(-2, -2))
