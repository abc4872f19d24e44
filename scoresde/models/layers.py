r"""Building blocks of NCSN++ / DDPM++ (Song et al., 2021), NHWC, in ``flax.linen``.

Submodule and parameter names follow the reference PyTorch port so that a state-dict key
maps to a Flax path by renaming the leaf only (``weight`` <-> ``kernel`` for convs and dense
layers, ``weight`` <-> ``scale`` for GroupNorm; ``W``/``b`` of :class:`NIN` unchanged).

GroupNorm everywhere uses :math:`\min(C/4, 32)` groups and :math:`\epsilon = 10^{-6}`
(:func:`group_norm`). Initializers are the reference's (:func:`default_init`): fan-average
uniform variance scaling, biases zero, and ``init_scale`` on the layers that end a residual
branch (``init_scale = 0`` gives weights of scale ``1e-10``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from scoresde.models import up_or_down_sampling as fir_ops
from scoresde.models.attention import attention
from scoresde.models.barrier import forward_barrier
from scoresde.models.group_norm import GroupNorm, Impl
from scoresde.models.initializers import default_init

#: GroupNorm's epsilon in NCSN++.
GROUP_NORM_EPS = 1e-6
#: The most groups :func:`group_norm` uses.
MAX_GROUPS = 32
#: The default init scale of :class:`NIN` (q, k, v projections of attention).
NIN_INIT_SCALE = 0.1
#: Whether :class:`ResnetBlockBigGANpp` at inference (``train=False``) writes its normalized,
#: activated input out before FIR downsampling (:func:`~scoresde.models.barrier.forward_barrier`).
#: XLA otherwise fuses GroupNorm's normalize-and-SiLU into the filter's 16 taps and computes
#: it 4 times per pixel (``docs/benchmarks.md``, eleventh round). Benchmarks set it to
#: ``False`` for the comparison.
MATERIALIZE_BEFORE_DOWNSAMPLING = True

Dtype = Any

_SQRT_HALF = 1.0 / math.sqrt(2.0)


def num_groups(channels: int) -> int:
    """NCSN++'s GroupNorm group count, ``min(channels // 4, 32)``.

    Example:
      >>> num_groups(16), num_groups(512)
      (4, 32)
    """
    groups = min(channels // 4, MAX_GROUPS)
    if groups < 1:
        raise ValueError(
            f"GroupNorm needs at least 4 channels (min(C // 4, 32) groups), got C={channels}."
        )
    return groups


def group_norm(
    channels: int,
    name: str,
    dtype: Dtype = jnp.float32,
    act: Callable[[jax.Array], jax.Array] | None = None,
    impl: Impl = "auto",
) -> GroupNorm:
    """A GroupNorm with :func:`num_groups` groups and epsilon ``1e-6``, then ``act``.

    GroupNorm + SiLU can run as one fused kernel on CUDA GPUs
    (:mod:`scoresde.models.group_norm`); ``impl`` chooses the implementation.
    """
    return GroupNorm(
        num_groups=num_groups(channels),
        epsilon=GROUP_NORM_EPS,
        act=act,
        impl=impl,
        dtype=dtype,
        name=name,
    )


def conv3x3(
    features: int,
    name: str,
    init_scale: float = 1.0,
    stride: int = 1,
    padding: Any = ((1, 1), (1, 1)),
    dtype: Dtype = jnp.float32,
) -> nn.Conv:
    """A 3x3 conv with the reference's init (zero bias); padding 1 unless given."""
    return nn.Conv(
        features,
        (3, 3),
        strides=(stride, stride),
        padding=padding,
        kernel_init=default_init(init_scale),
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        name=name,
    )


def conv1x1(
    features: int, name: str, init_scale: float = 1.0, dtype: Dtype = jnp.float32
) -> nn.Conv:
    """A 1x1 conv with the reference's init (zero bias)."""
    return nn.Conv(
        features,
        (1, 1),
        padding="VALID",
        kernel_init=default_init(init_scale),
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        name=name,
    )


def dense(features: int, name: str, dtype: Dtype = jnp.float32) -> nn.Dense:
    """A dense layer with the reference's init (zero bias)."""
    return nn.Dense(
        features,
        kernel_init=default_init(),
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        name=name,
    )


def get_act(nonlinearity: str) -> Callable[[jax.Array], jax.Array]:
    """The reference's activations by name: ``elu``, ``relu``, ``lrelu`` (slope 0.2), ``swish``.

    Example:
      >>> get_act("swish") is jax.nn.silu
      True
    """
    if nonlinearity == "elu":
        return jax.nn.elu
    if nonlinearity == "relu":
        return jax.nn.relu
    if nonlinearity == "lrelu":
        return lambda x: jax.nn.leaky_relu(x, negative_slope=0.2)
    if nonlinearity == "swish":
        return jax.nn.silu
    raise ValueError(
        f"nonlinearity must be one of ('elu', 'relu', 'lrelu', 'swish'), got {nonlinearity!r}."
    )


class GaussianFourierProjection(nn.Module):
    r"""Random Fourier features of a scalar: :math:`[\sin(2\pi x W), \cos(2\pi x W)]`.

    :math:`W \sim \mathcal N(0, \text{scale}^2)` of size ``embedding_size`` is fixed (the
    reference does not train it; here the gradient is stopped).

    Attributes:
      embedding_size: the size of ``W``; the output has twice this width.
      scale: the standard deviation of ``W`` (``model.fourier_scale``, 16 in the paper).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = GaussianFourierProjection(8)
      >>> m.init_with_output(jax.random.key(0), jnp.ones((2,)))[0].shape
      (2, 16)
    """

    embedding_size: int = 256
    scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        w = jax.lax.stop_gradient(w)
        x_proj = x[:, None] * w[None, :] * (2 * jnp.pi)
        return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


class NIN(nn.Module):
    """A per-pixel linear map (network-in-network): ``x @ W + b`` on the channel axis.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> NIN(5).init_with_output(jax.random.key(0), jnp.ones((1, 2, 2, 3)))[0].shape
      (1, 2, 2, 5)
    """

    features: int
    init_scale: float = NIN_INIT_SCALE
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param("W", default_init(self.init_scale), (x.shape[-1], self.features))
        b = self.param("b", nn.initializers.zeros, (self.features,))
        x = x.astype(self.dtype)
        return jnp.einsum("...c,cd->...d", x, w.astype(self.dtype)) + b.astype(self.dtype)


class Combine(nn.Module):
    """Merges the input pyramid into the features (``progressive_input='input_skip'``).

    ``h = Conv_0(x)`` (1x1); then ``cat([h, y])`` (``method='cat'``) or ``h + y`` (``'sum'``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = Combine(8, method="cat")
      >>> m.init_with_output(jax.random.key(0), jnp.ones((1, 4, 4, 3)),
      ...                    jnp.ones((1, 4, 4, 8)))[0].shape
      (1, 4, 4, 16)
    """

    features: int
    method: str = "cat"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        h = conv1x1(self.features, "Conv_0", dtype=self.dtype)(x)
        if self.method == "cat":
            return jnp.concatenate([h, y], axis=-1)
        if self.method == "sum":
            return h + y
        raise ValueError(f"Combine: method must be 'cat' or 'sum', got {self.method!r}.")


class AttnBlockpp(nn.Module):
    r"""Self-attention over all pixels (one head), with a residual connection.

    ``q, k, v = NIN_0/1/2(GroupNorm_0(x))``; :math:`A = \mathrm{softmax}(q k^\top / \sqrt C)`
    over the :math:`HW` key positions; ``out = x + NIN_3(A v)``, divided by :math:`\sqrt 2`
    when ``skip_rescale``. At inference in bfloat16 on a CUDA GPU, :math:`A v` is cuDNN's
    fused attention (:func:`~scoresde.models.attention.attention`).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = AttnBlockpp()
      >>> x = jnp.ones((1, 4, 4, 8))
      >>> jax.eval_shape(m.init_with_output, jax.random.key(0), x)[0].shape
      (1, 4, 4, 8)
    """

    skip_rescale: bool = False
    init_scale: float = 0.0
    group_norm_impl: Impl = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b, height, width, c = x.shape
        h = group_norm(c, "GroupNorm_0", self.dtype, impl=self.group_norm_impl)(x, train)
        q = NIN(c, dtype=self.dtype, name="NIN_0")(h)
        k = NIN(c, dtype=self.dtype, name="NIN_1")(h)
        v = NIN(c, dtype=self.dtype, name="NIN_2")(h)
        shape = (b, height * width, 1, c)  # (batch, positions, heads=1, channels)
        h = attention(q.reshape(shape), k.reshape(shape), v.reshape(shape), train=train)
        h = NIN(c, init_scale=self.init_scale, dtype=self.dtype, name="NIN_3")(
            h.reshape(b, height, width, c)
        )
        out = x + h
        return out * _SQRT_HALF if self.skip_rescale else out


class Upsample(nn.Module):
    """Doubles the resolution: FIR (``fir``) or nearest-neighbour, with or without a 3x3 conv.

    With ``fir`` and ``with_conv`` the conv is fused into the upsampling
    (:func:`~scoresde.models.up_or_down_sampling.upsample_conv_2d`, params ``Conv2d_0``);
    without ``fir`` the conv ``Conv_0`` follows a nearest-neighbour upsampling.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = Upsample(out_ch=6, with_conv=True, fir=True)
      >>> jax.eval_shape(m.init_with_output, jax.random.key(0), jnp.ones((1, 4, 4, 3)))[0].shape
      (1, 8, 8, 6)
    """

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple[int, ...] = fir_ops.DEFAULT_FIR_KERNEL
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_ch = self.out_ch if self.out_ch else x.shape[-1]
        if not self.fir:
            h = fir_ops.naive_upsample_2d(x, 2)
            if self.with_conv:
                h = conv3x3(out_ch, "Conv_0", dtype=self.dtype)(h)
            return h
        if not self.with_conv:
            return fir_ops.upsample_2d(x, self.fir_kernel, factor=2)
        kernel, bias = _FIRConvParams(self.dtype, name="Conv2d_0")((3, 3, x.shape[-1], out_ch))
        h = fir_ops.upsample_conv_2d(x.astype(self.dtype), kernel, self.fir_kernel, factor=2)
        return h + bias


class Downsample(nn.Module):
    """Halves the resolution: FIR (``fir``) or plain, with or without a 3x3 conv.

    With ``fir`` and ``with_conv``: FIR blur then a stride-2 3x3 conv (params ``Conv2d_0``).
    Without ``fir``: a stride-2 3x3 conv ``Conv_0`` after zero-padding right/bottom by one, or
    2x2 mean pooling.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = Downsample(out_ch=6, with_conv=True, fir=True)
      >>> jax.eval_shape(m.init_with_output, jax.random.key(0), jnp.ones((1, 8, 8, 3)))[0].shape
      (1, 4, 4, 6)
    """

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple[int, ...] = fir_ops.DEFAULT_FIR_KERNEL
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_ch = self.out_ch if self.out_ch else x.shape[-1]
        if not self.fir:
            if self.with_conv:
                return conv3x3(
                    out_ch, "Conv_0", stride=2, padding=((0, 1), (0, 1)), dtype=self.dtype
                )(x)
            return fir_ops.naive_downsample_2d(x, 2)
        if not self.with_conv:
            return fir_ops.downsample_2d(x, self.fir_kernel, factor=2)
        kernel, bias = _FIRConvParams(self.dtype, name="Conv2d_0")((3, 3, x.shape[-1], out_ch))
        h = fir_ops.conv_downsample_2d(x.astype(self.dtype), kernel, self.fir_kernel, factor=2)
        return h + bias


class _FIRConvParams(nn.Module):
    """Holds ``kernel`` (HWIO) and ``bias`` of a FIR resampling conv (``Conv2d_0`` in torch)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, shape: tuple[int, int, int, int]) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", default_init(), shape)
        bias = self.param("bias", nn.initializers.zeros, (shape[-1],))
        return kernel.astype(self.dtype), bias.astype(self.dtype)


class ResnetBlockDDPMpp(nn.Module):
    r"""DDPM++'s residual block (no resampling).

    :math:`h = \mathrm{Conv_0}(\mathrm{act}(\mathrm{GN_0}(x)))
    + \mathrm{Dense_0}(\mathrm{act}(t_{emb}))`,
    :math:`h = \mathrm{Conv_1}(\mathrm{dropout}(\mathrm{act}(\mathrm{GN_1}(h))))`; the shortcut
    is ``Conv_2`` (3x3, ``conv_shortcut``) or ``NIN_0`` when the width changes; the output is
    :math:`x + h`, divided by :math:`\sqrt 2` when ``skip_rescale``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = ResnetBlockDDPMpp(act=jax.nn.silu, out_ch=8)
      >>> x, temb = jnp.ones((1, 4, 4, 4)), jnp.ones((1, 16))
      >>> jax.eval_shape(m.init_with_output, jax.random.key(0), x, temb)[0].shape
      (1, 4, 4, 8)
    """

    act: Callable[[jax.Array], jax.Array]
    out_ch: int | None = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0
    group_norm_impl: Impl = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, temb: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        in_ch = x.shape[-1]
        out_ch = self.out_ch if self.out_ch else in_ch
        h = group_norm(in_ch, "GroupNorm_0", self.dtype, self.act, self.group_norm_impl)(x, train)
        h = conv3x3(out_ch, "Conv_0", dtype=self.dtype)(h)
        t = None if temb is None else dense(out_ch, "Dense_0", self.dtype)(self.act(temb))
        h = group_norm(out_ch, "GroupNorm_1", self.dtype, self.act, self.group_norm_impl)(
            h, train, shift=t
        )
        h = nn.Dropout(self.dropout, deterministic=not train, name="Dropout_0")(h)
        h = conv3x3(out_ch, "Conv_1", init_scale=self.init_scale, dtype=self.dtype)(h)
        if in_ch != out_ch:
            if self.conv_shortcut:
                x = conv3x3(out_ch, "Conv_2", dtype=self.dtype)(x)
            else:
                x = NIN(out_ch, dtype=self.dtype, name="NIN_0")(x)
        out = x + h
        return out * _SQRT_HALF if self.skip_rescale else out


class ResnetBlockBigGANpp(nn.Module):
    r"""NCSN++'s BigGAN-style residual block, optionally resampling by 2 (``up`` / ``down``).

    :math:`h = \mathrm{act}(\mathrm{GN_0}(x))`; if resampling, both :math:`h` and the shortcut
    :math:`x` are up/downsampled (FIR when ``fir``, else nearest / 2x2 mean);
    :math:`h = \mathrm{Conv_0}(h) + \mathrm{Dense_0}(\mathrm{act}(t_{emb}))`,
    :math:`h = \mathrm{Conv_1}(\mathrm{dropout}(\mathrm{act}(\mathrm{GN_1}(h))))`; the shortcut
    is the 1x1 ``Conv_2`` when the width changes or the block resamples; the output is
    :math:`x + h`, divided by :math:`\sqrt 2` when ``skip_rescale``.
    At inference a FIR downsampling block writes :math:`h` out before filtering it
    (:data:`MATERIALIZE_BEFORE_DOWNSAMPLING`); the value is the same.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = ResnetBlockBigGANpp(act=jax.nn.silu, down=True, fir=True)
      >>> x, temb = jnp.ones((1, 8, 8, 4)), jnp.ones((1, 16))
      >>> jax.eval_shape(m.init_with_output, jax.random.key(0), x, temb)[0].shape
      (1, 4, 4, 4)
    """

    act: Callable[[jax.Array], jax.Array]
    out_ch: int | None = None
    up: bool = False
    down: bool = False
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: tuple[int, ...] = fir_ops.DEFAULT_FIR_KERNEL
    skip_rescale: bool = True
    init_scale: float = 0.0
    group_norm_impl: Impl = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, temb: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        in_ch = x.shape[-1]
        out_ch = self.out_ch if self.out_ch else in_ch
        h = group_norm(in_ch, "GroupNorm_0", self.dtype, self.act, self.group_norm_impl)(x, train)
        if self.up:
            if self.fir:
                h = fir_ops.upsample_2d(h, self.fir_kernel, factor=2)
                x = fir_ops.upsample_2d(x, self.fir_kernel, factor=2)
            else:
                h = fir_ops.naive_upsample_2d(h, 2)
                x = fir_ops.naive_upsample_2d(x, 2)
        elif self.down:
            if self.fir:
                if not train and MATERIALIZE_BEFORE_DOWNSAMPLING:
                    h = forward_barrier(h)
                h = fir_ops.downsample_2d(h, self.fir_kernel, factor=2)
                x = fir_ops.downsample_2d(x, self.fir_kernel, factor=2)
            else:
                h = fir_ops.naive_downsample_2d(h, 2)
                x = fir_ops.naive_downsample_2d(x, 2)
        h = conv3x3(out_ch, "Conv_0", dtype=self.dtype)(h)
        t = None if temb is None else dense(out_ch, "Dense_0", self.dtype)(self.act(temb))
        h = group_norm(out_ch, "GroupNorm_1", self.dtype, self.act, self.group_norm_impl)(
            h, train, shift=t
        )
        h = nn.Dropout(self.dropout, deterministic=not train, name="Dropout_0")(h)
        h = conv3x3(out_ch, "Conv_1", init_scale=self.init_scale, dtype=self.dtype)(h)
        if in_ch != out_ch or self.up or self.down:
            x = conv1x1(out_ch, "Conv_2", dtype=self.dtype)(x)
        out = x + h
        return out * _SQRT_HALF if self.skip_rescale else out
