"""The building blocks of the DDPM U-Net (Ho et al., 2020), NHWC.

Submodule and parameter names follow the reference PyTorch port (``GroupNorm_0``, ``Conv_0``,
``Dense_0``, ``NIN_0`` ...), so a state-dict key maps onto a Flax path by renaming the leaf
only (``weight`` -> ``kernel`` / ``scale``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from scoresde.models.group_norm import GroupNorm, Impl
from scoresde.models.layers import NIN, conv3x3, dense

#: GroupNorm group count of DDPM (fixed, unlike NCSN++'s ``min(C // 4, 32)``).
DDPM_GROUPS = 32
#: GroupNorm epsilon of the reference.
GROUPNORM_EPS = 1e-6

Dtype = Any


def group_norm(
    name: str,
    dtype: Dtype = jnp.float32,
    act: Callable[[jax.Array], jax.Array] | None = None,
    impl: Impl = "auto",
) -> GroupNorm:
    """GroupNorm as the reference's ``torch.nn.GroupNorm(32, eps=1e-6)`` (two-pass variance),
    then ``act`` (GroupNorm + SiLU can be fused on GPUs, :mod:`scoresde.models.group_norm`)."""
    return GroupNorm(
        num_groups=DDPM_GROUPS,
        epsilon=GROUPNORM_EPS,
        act=act,
        fast_variance=False,
        impl=impl,
        dtype=dtype,
        name=name,
    )


class AttnBlock(nn.Module):
    r"""Self-attention over all pixels, with a residual connection.

    With :math:`h = \mathrm{GN}(x)`, :math:`q, k, v` the NIN projections of :math:`h` and
    :math:`C` channels: :math:`x + \mathrm{NIN}_3(\mathrm{softmax}(q k^\top / \sqrt{C})\, v)`,
    the softmax running over the :math:`HW` key positions.

    Attributes:
      dtype: the compute dtype (parameters stay float32).
      group_norm_impl: GroupNorm's implementation (:func:`scoresde.models.group_norm.group_norm`).
    """

    dtype: Dtype = jnp.float32
    group_norm_impl: Impl = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        batch, height, width, channels = x.shape
        h = group_norm("GroupNorm_0", self.dtype, impl=self.group_norm_impl)(x, train)
        q = NIN(channels, dtype=self.dtype, name="NIN_0")(h)
        k = NIN(channels, dtype=self.dtype, name="NIN_1")(h)
        v = NIN(channels, dtype=self.dtype, name="NIN_2")(h)
        q, k, v = (a.reshape(batch, height * width, channels) for a in (q, k, v))
        logits = jnp.einsum("bqc,bkc->bqk", q, k) * (channels**-0.5)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        h = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(batch, height, width, channels)
        h = NIN(channels, init_scale=0.0, dtype=self.dtype, name="NIN_3")(h)
        return x + h


class ResnetBlockDDPM(nn.Module):
    r"""DDPM's residual block, conditioned on a time embedding.

    .. math::
        h = \mathrm{Conv}_0(\phi(\mathrm{GN}_0(x))) + \mathrm{Dense}_0(\phi(t_{emb})),\quad
        h = \mathrm{Conv}_1(\mathrm{Dropout}(\phi(\mathrm{GN}_1(h)))),\quad
        \text{out} = s(x) + h,

    :math:`s` the identity, or a NIN projection ``NIN_0`` when the channel count changes.
    ``Conv_1`` starts near zero (``init_scale = 0``), so each block starts as the identity.

    Attributes:
      out_ch: output channels.
      act: the nonlinearity :math:`\phi`.
      dropout: dropout rate (active only with ``train=True``).
      dtype: the compute dtype.
      group_norm_impl: GroupNorm's implementation (:func:`scoresde.models.group_norm.group_norm`).
    """

    out_ch: int
    act: Callable[[jax.Array], jax.Array]
    dropout: float = 0.1
    dtype: Dtype = jnp.float32
    group_norm_impl: Impl = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None, train: bool) -> jax.Array:
        h = group_norm("GroupNorm_0", self.dtype, self.act, self.group_norm_impl)(x, train)
        h = conv3x3(self.out_ch, "Conv_0", dtype=self.dtype)(h)
        t = None if temb is None else dense(self.out_ch, "Dense_0", self.dtype)(self.act(temb))
        h = group_norm("GroupNorm_1", self.dtype, self.act, self.group_norm_impl)(h, train, shift=t)
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(self.out_ch, "Conv_1", init_scale=0.0, dtype=self.dtype)(h)
        if x.shape[-1] != self.out_ch:
            x = NIN(self.out_ch, dtype=self.dtype, name="NIN_0")(x)
        return x + h


class Downsample(nn.Module):
    """Halves the resolution: pad right/bottom by 1, then a stride-2 3x3 conv, else 2x2 mean.

    Attributes:
      with_conv: use the learned strided conv ``Conv_0`` (else average pooling).
      dtype: the compute dtype.
    """

    with_conv: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # TensorFlow's 'SAME' for a stride-2 3x3 conv on an even size pads after only.
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        if self.with_conv:
            conv = conv3x3(x.shape[-1], "Conv_0", stride=2, padding="VALID", dtype=self.dtype)
            return conv(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class Upsample(nn.Module):
    """Doubles the resolution: nearest-neighbour x2, then a 3x3 conv ``Conv_0`` if ``with_conv``.

    Attributes:
      with_conv: follow the nearest-neighbour upsampling by a learned 3x3 conv.
      dtype: the compute dtype.
    """

    with_conv: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        if self.with_conv:
            h = conv3x3(x.shape[-1], "Conv_0", dtype=self.dtype)(h)
        return h
