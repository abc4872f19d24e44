"""The building blocks of the RefineNet score networks of NCSN (v1) and NCSNv2, NHWC.

Names follow the reference PyTorch port (``conv1``, ``normalize1``, ``adapt_convs_0``,
``1_1_conv``, ``msf``, ``crp`` ...) so that a state-dict key maps onto a Flax path by
turning list indices ``name.i`` into ``name_i`` and ``weight`` into ``kernel``.

Each block takes ``num_classes``: ``None`` gives NCSNv2's unconditional InstanceNorm++,
an integer gives NCSN's conditional InstanceNorm++ with one embedding row per noise level.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

#: Epsilon of the instance statistics (PyTorch's ``InstanceNorm2d`` default).
INSTANCE_NORM_EPS = 1e-5
#: Std of the N(1, std^2) initialization of the InstanceNorm++ scales.
NORM_SCALE_INIT_STD = 0.02
#: Window of the pooling in the chained residual pooling blocks (stride 1, 'SAME').
CRP_POOL_WINDOW = 5

Activation = Callable[[jax.Array], jax.Array]


def _scale_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    return 1.0 + NORM_SCALE_INIT_STD * jax.random.normal(key, shape, dtype)


def _normalized_channel_means(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Instance-normalized ``x`` and the channel means standardized across channels."""
    means = jnp.mean(x, axis=(1, 2))  # (B, C)
    m = jnp.mean(means, axis=-1, keepdims=True)
    # The reference uses torch.var's unbiased estimate across channels here ...
    v = jnp.var(means, axis=-1, keepdims=True, ddof=1)
    means_plus = (means - m) / jnp.sqrt(v + INSTANCE_NORM_EPS)
    # ... and InstanceNorm2d's biased one over pixels.
    var = jnp.var(x, axis=(1, 2), keepdims=True)
    h = (x - means[:, None, None, :]) / jnp.sqrt(var + INSTANCE_NORM_EPS)
    return h, means_plus


class InstanceNormPlus(nn.Module):
    r"""InstanceNorm++ (Song & Ermon, 2019).

    With per-channel spatial means :math:`\mu_c`, standard deviations :math:`s_c`, and
    :math:`m, v` the mean and (unbiased) variance of the :math:`\mu_c` across channels:

    .. math::
        \text{out} = \gamma_c\Big(\frac{x_c - \mu_c}{\sqrt{s_c^2 + \epsilon}}
        + \alpha_c\,\frac{\mu_c - m}{\sqrt{v + \epsilon}}\Big) + \beta_c.

    Attributes:
      use_bias: learn :math:`\beta` (the reference's ``bias=True``).
    """

    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        h, means_plus = _normalized_channel_means(x)
        alpha = self.param("alpha", _scale_init, (channels,))
        gamma = self.param("gamma", _scale_init, (channels,))
        h = gamma * (h + means_plus[:, None, None, :] * alpha)
        if self.use_bias:
            h = h + self.param("beta", nn.initializers.zeros, (channels,))
        return h


class ConditionalInstanceNormPlus(nn.Module):
    r"""InstanceNorm++ whose :math:`\gamma, \alpha, \beta` are rows of an embedding of the label.

    The embedding ``embed`` has ``3 C`` columns per noise level, split as
    :math:`[\gamma, \alpha, \beta]` (``2 C`` columns, no :math:`\beta`, without bias).

    Attributes:
      num_classes: number of noise levels (rows of the embedding).
      use_bias: learn :math:`\beta`.
    """

    num_classes: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        h, means_plus = _normalized_channel_means(x)
        parts = 3 if self.use_bias else 2

        def init(key, shape, dtype=jnp.float32):
            scales = _scale_init(key, (shape[0], 2 * channels), dtype)
            return jnp.concatenate([scales, jnp.zeros((shape[0], shape[1] - 2 * channels))], -1)

        rows = nn.Embed(self.num_classes, parts * channels, embedding_init=init, name="embed")(y)
        gamma, alpha = rows[:, :channels], rows[:, channels : 2 * channels]
        h = gamma[:, None, None, :] * (h + means_plus[:, None, None, :] * alpha[:, None, None, :])
        if self.use_bias:
            h = h + rows[:, None, None, 2 * channels :]
        return h


def normalize(name: str, num_classes: int | None, x: jax.Array, y: jax.Array | None) -> jax.Array:
    """InstanceNorm++ (``num_classes=None``) or its conditional version, as submodule ``name``."""
    if num_classes is None:
        return InstanceNormPlus(name=name)(x)
    return ConditionalInstanceNormPlus(num_classes, name=name)(x, y)


def _uniform(bound: float) -> nn.initializers.Initializer:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def ncsn_conv(
    features: int,
    in_features: int,
    name: str,
    kernel_size: int = 3,
    dilation: int = 1,
    use_bias: bool = True,
) -> nn.Conv:
    r"""A stride-1 'SAME' convolution with PyTorch's default initialization.

    Weight and bias are drawn from :math:`U(-1/\sqrt{\text{fan\_in}}, 1/\sqrt{\text{fan\_in}})`,
    :math:`\text{fan\_in} = \text{in\_features}\cdot k^2`. Padding is
    ``dilation * (kernel_size // 2)`` on each side: for the dilated convs this is the corrected
    padding (the reference pads by 1 and then fails on mismatched shapes).
    """
    bound = 1.0 / math.sqrt(in_features * kernel_size**2)
    pad = dilation * (kernel_size // 2)
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        use_bias=use_bias,
        kernel_init=_uniform(bound),
        bias_init=_uniform(bound),
        name=name,
    )


def mean_pool_2x2(x: jax.Array) -> jax.Array:
    """Mean over non-overlapping 2x2 windows (halves height and width)."""
    batch, height, width, channels = x.shape
    return x.reshape(batch, height // 2, 2, width // 2, 2, channels).mean(axis=(2, 4))


class ConvMeanPool(nn.Module):
    """A stride-1 convolution (submodule ``conv``), then a 2x2 mean pool.

    Attributes:
      features: output channels.
      kernel_size: 3 for the residual path, 1 for the shortcut.
    """

    features: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = ncsn_conv(self.features, x.shape[-1], "conv", kernel_size=self.kernel_size)(x)
        return mean_pool_2x2(h)


class ResidualBlock(nn.Module):
    r"""The pre-activation residual block of NCSN/NCSNv2.

    .. math::
        h = \mathrm{conv}_1(\phi(\mathrm{norm}_1(x))),\qquad
        \text{out} = s(x) + \mathrm{conv}_2(\phi(\mathrm{norm}_2(h))),

    with :math:`s` the identity when neither the channels nor the resolution change. With
    ``resample='down'`` and ``dilation == 1``, ``conv2`` and the shortcut are a conv followed by
    2x2 mean pooling; with ``dilation > 1`` all convs are dilated and the resolution is kept
    (as in the reference).

    Attributes:
      output_dim: output channels.
      act: the nonlinearity :math:`\phi`.
      resample: ``None`` or ``"down"``.
      dilation: dilation of the 3x3 convs.
      num_classes: ``None`` for InstanceNorm++, else the number of noise levels of the
        conditional InstanceNorm++ (then call with labels ``y``).
    """

    output_dim: int
    act: Activation
    resample: str | None = None
    dilation: int = 1
    num_classes: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        if self.resample not in (None, "down"):
            raise ValueError(f"resample must be None or 'down', got {self.resample!r}.")
        input_dim, dil = x.shape[-1], self.dilation
        h = self.act(normalize("normalize1", self.num_classes, x, y))
        if self.resample == "down":
            h = ncsn_conv(input_dim, input_dim, "conv1", dilation=dil)(h)
            h = self.act(normalize("normalize2", self.num_classes, h, y))
            if dil > 1:
                h = ncsn_conv(self.output_dim, input_dim, "conv2", dilation=dil)(h)
                shortcut = ncsn_conv(self.output_dim, input_dim, "shortcut", dilation=dil)(x)
            else:
                h = ConvMeanPool(self.output_dim, name="conv2")(h)
                shortcut = ConvMeanPool(self.output_dim, kernel_size=1, name="shortcut")(x)
            return shortcut + h
        h = ncsn_conv(self.output_dim, input_dim, "conv1", dilation=dil)(h)
        h = self.act(normalize("normalize2", self.num_classes, h, y))
        h = ncsn_conv(self.output_dim, self.output_dim, "conv2", dilation=dil)(h)
        if self.output_dim == input_dim:
            return x + h
        if dil > 1:
            shortcut = ncsn_conv(self.output_dim, input_dim, "shortcut", dilation=dil)(x)
        else:
            shortcut = ncsn_conv(self.output_dim, input_dim, "shortcut", kernel_size=1)(x)
        return shortcut + h


class RCUBlock(nn.Module):
    r"""Residual conv units: ``n_blocks`` times :math:`x \leftarrow x + F^{n_{stages}}(x)`,
    :math:`F = \mathrm{conv}\circ\phi\circ[\mathrm{norm}]`.

    Convs (no bias) are named ``{i}_{j}_conv`` and norms ``{i}_{j}_norm`` (1-based), as in
    the reference.

    Attributes:
      n_blocks: residual units.
      n_stages: (norm,) activation, conv stages per unit.
      act: the nonlinearity.
      num_classes: ``None`` (no norms, NCSNv2) or the number of noise levels (NCSN).
    """

    n_blocks: int
    n_stages: int
    act: Activation
    num_classes: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        channels = x.shape[-1]
        for i in range(1, self.n_blocks + 1):
            residual = x
            for j in range(1, self.n_stages + 1):
                if self.num_classes is not None:
                    x = ConditionalInstanceNormPlus(self.num_classes, name=f"{i}_{j}_norm")(x, y)
                x = self.act(x)
                x = ncsn_conv(channels, channels, f"{i}_{j}_conv", use_bias=False)(x)
            x = x + residual
        return x


class CRPBlock(nn.Module):
    r"""Chained residual pooling: :math:`x \leftarrow \phi(x)`, :math:`p = x`, then
    ``n_stages`` times :math:`p \leftarrow \mathrm{conv}_i(\mathrm{pool}([\mathrm{norm}_i](p)))`,
    :math:`x \leftarrow x + p`.

    Pooling is a 5x5 stride-1 max pool (NCSNv2) or average pool counting the zero padding
    (conditional NCSN). Convs (no bias) are ``convs_{i}``, norms ``norms_{i}``.

    Attributes:
      n_stages: pooling stages.
      act: the nonlinearity.
      num_classes: ``None`` (max pool, no norms) or the number of noise levels (avg pool).
    """

    n_stages: int
    act: Activation
    num_classes: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        channels = x.shape[-1]
        window, pad = (CRP_POOL_WINDOW,) * 2, ((CRP_POOL_WINDOW // 2,) * 2,) * 2
        x = self.act(x)
        path = x
        for i in range(self.n_stages):
            if self.num_classes is None:
                path = nn.max_pool(path, window, strides=(1, 1), padding=pad)
            else:
                path = ConditionalInstanceNormPlus(self.num_classes, name=f"norms_{i}")(path, y)
                path = nn.avg_pool(path, window, strides=(1, 1), padding=pad)
            path = ncsn_conv(channels, channels, f"convs_{i}", use_bias=False)(path)
            x = path + x
        return x


def _interpolation_matrix(size_in: int, size_out: int) -> np.ndarray:
    """Rows of 1-D linear interpolation weights with ``align_corners=True``."""
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    src = np.arange(size_out, dtype=np.float64) * scale
    lo = np.clip(np.floor(src).astype(int), 0, size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = src - lo
    matrix = np.zeros((size_out, size_in), np.float32)
    np.add.at(matrix, (np.arange(size_out), lo), 1.0 - frac)
    np.add.at(matrix, (np.arange(size_out), hi), frac)
    return matrix


def resize_bilinear_align_corners(x: jax.Array, shape: tuple[int, int]) -> jax.Array:
    r"""Bilinear resize of NHWC ``x`` to ``shape`` with corners aligned.

    Output pixel :math:`i` samples the input at :math:`i\,(n_{in}-1)/(n_{out}-1)` on each
    axis (PyTorch's ``interpolate(mode='bilinear', align_corners=True)``).

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.arange(2.0).reshape(1, 1, 2, 1)
      >>> resize_bilinear_align_corners(x, (1, 3))[0, 0, :, 0].tolist()
      [0.0, 0.5, 1.0]
    """
    if tuple(x.shape[1:3]) == tuple(shape):
        return x
    rows = jnp.asarray(_interpolation_matrix(x.shape[1], shape[0]), x.dtype)
    cols = jnp.asarray(_interpolation_matrix(x.shape[2], shape[1]), x.dtype)
    return jnp.einsum("oh,pw,bhwc->bopc", rows, cols, x)


class MSFBlock(nn.Module):
    """Multi-resolution fusion: sum over inputs of ``resize(conv_i([norm_i](x_i)))``.

    Convs (with bias) are ``convs_{i}``, norms ``norms_{i}``.

    Attributes:
      features: output channels.
      num_classes: ``None`` (no norms) or the number of noise levels.
    """

    features: int
    num_classes: int | None = None

    @nn.compact
    def __call__(
        self, xs: list[jax.Array], shape: tuple[int, int], y: jax.Array | None = None
    ) -> jax.Array:
        total = None
        for i, x in enumerate(xs):
            if self.num_classes is not None:
                x = ConditionalInstanceNormPlus(self.num_classes, name=f"norms_{i}")(x, y)
            h = ncsn_conv(self.features, x.shape[-1], f"convs_{i}")(x)
            h = resize_bilinear_align_corners(h, shape)
            total = h if total is None else total + h
        return total


class RefineBlock(nn.Module):
    """RefineNet block: RCUs per input, multi-resolution fusion, chained pooling, output RCUs.

    Submodules: ``adapt_convs_{i}`` (2 x 2 RCU per input), ``msf`` (absent for the first
    block), ``crp`` (2 stages), ``output_convs`` (3 units for the last block, else 1).

    Attributes:
      features: output channels.
      act: the nonlinearity.
      start: the first (lowest-resolution) block: a single input, no fusion.
      end: the last block.
      num_classes: ``None`` (NCSNv2) or the number of noise levels (conditional NCSN).
    """

    features: int
    act: Activation
    start: bool = False
    end: bool = False
    num_classes: int | None = None

    @nn.compact
    def __call__(
        self, xs: list[jax.Array], shape: tuple[int, int], y: jax.Array | None = None
    ) -> jax.Array:
        hs = [
            RCUBlock(2, 2, self.act, self.num_classes, name=f"adapt_convs_{i}")(x, y)
            for i, x in enumerate(xs)
        ]
        if self.start:
            h = hs[0]
        else:
            h = MSFBlock(self.features, self.num_classes, name="msf")(hs, shape, y)
        h = CRPBlock(2, self.act, self.num_classes, name="crp")(h, y)
        return RCUBlock(3 if self.end else 1, 2, self.act, self.num_classes, name="output_convs")(
            h, y
        )
