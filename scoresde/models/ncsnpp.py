r"""NCSN++ and DDPM++: the score networks of Song et al. (ICLR 2021), NHWC, in ``flax.linen``.

A U-Net of residual blocks (BigGAN-style or DDPM-style) with self-attention at chosen
resolutions, conditioned on the noise level through a time embedding (Gaussian Fourier
features of :math:`\log\sigma` for NCSN++, sinusoidal features of the label for DDPM++),
optional FIR (anti-aliased) resampling, and optional progressive input/output pyramids.
DDPM++ is this module with the DDPM++ switches (positional embedding, no FIR, centered input).

The submodules are named ``all_modules_{i}`` in the reference's constructor order, so a
score_sde_pytorch key ``all_modules.<i>.<sub-key>`` names the Flax path
``('all_modules_<i>', ...)`` (see :meth:`NCSNpp.torch_key`).

Reference: Y. Song, J. Sohl-Dickstein, D. P. Kingma, A. Kumar, S. Ermon, B. Poole,
"Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from scoresde.models import layers
from scoresde.models.embeddings import get_timestep_embedding
from scoresde.models.group_norm import IMPLS as GROUP_NORM_IMPLS
from scoresde.models.up_or_down_sampling import DEFAULT_FIR_KERNEL

RESBLOCK_TYPES = ("biggan", "ddpm")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
PROGRESSIVE_COMBINE = ("sum", "cat")
EMBEDDING_TYPES = ("fourier", "positional")
NONLINEARITIES = ("elu", "relu", "lrelu", "swish")

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_TORCH_LEAF = {"kernel": "weight", "scale": "weight"}


def _geometric_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> np.ndarray:
    """The reference's noise table, largest first: ``exp(linspace(log smax, log smin, N))``."""
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales))


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"NCSNpp: {name} must be one of {allowed}, got {name}={value!r}.")


class NCSNpp(nn.Module):
    r"""NCSN++ / DDPM++ score network (Song et al., 2021).

    Applied as ``model.apply(variables, x, labels, train=False)`` with ``x: (B, H, W, C)``
    (square, side divisible by :math:`2^{L-1}`, :math:`L` = ``len(ch_mult)``) and
    ``labels: (B,)``: :math:`\sigma(t)` for the Fourier embedding, :math:`999\,t` (or an
    integer level) for the positional one. Dropout (``train=True``) takes the ``"dropout"`` rng.
    The output has the shape of ``x``; with ``scale_by_sigma`` it is divided by :math:`\sigma`
    (the label for Fourier, ``sigmas[int(label)]`` of the geometric table for positional).

    Attributes:
      nf: base width; level :math:`i` has ``nf * ch_mult[i]`` channels.
      ch_mult: width multipliers, one per resolution level.
      num_res_blocks: residual blocks per level (the decoder has one more).
      attn_resolutions: resolutions (image sides) with self-attention.
      dropout: dropout rate inside the residual blocks.
      resamp_with_conv: resampling layers carry a 3x3 conv.
      conditional: condition on the noise level (time embedding MLP).
      fir: FIR (anti-aliased) resampling instead of nearest / mean pooling.
      fir_kernel: the 1-D FIR kernel.
      skip_rescale: divide residual sums by :math:`\sqrt 2`.
      resblock_type: ``'biggan'`` (resampling res blocks) or ``'ddpm'``.
      progressive: output pyramid, ``'none'``, ``'output_skip'`` or ``'residual'``.
      progressive_input: input pyramid, ``'none'``, ``'input_skip'`` or ``'residual'``.
      progressive_combine: how ``'input_skip'`` merges, ``'sum'`` or ``'cat'``.
      embedding_type: ``'fourier'`` (of :math:`\log\sigma`) or ``'positional'``.
      fourier_scale: the std of the Fourier frequencies.
      init_scale: init scale of the layers that end a residual branch (0 means 1e-10).
      scale_by_sigma: divide the output by :math:`\sigma`.
      nonlinearity: ``'elu'``, ``'relu'``, ``'lrelu'`` or ``'swish'``.
      centered: the input is already in :math:`[-1, 1]`; otherwise :math:`x \mapsto 2x - 1`.
      sigma_min, sigma_max, num_scales: the geometric :math:`\sigma` table used by
        ``scale_by_sigma`` with the positional embedding.
      dtype: the compute dtype (parameters stay float32; the output has the input's dtype).
      group_norm_impl: GroupNorm's implementation, ``'auto'`` (a fused GroupNorm + SiLU
        kernel on CUDA GPUs for feature maps of 16x16 and smaller, where it is faster; XLA
        elsewhere), ``'xla'`` or ``'pallas'``
        (:func:`scoresde.models.group_norm.group_norm`); the function is the same.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = NCSNpp(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
      >>> x, sigma = jnp.zeros((2, 8, 8, 3)), jnp.array([0.5, 2.0])
      >>> variables = jax.eval_shape(model.init, jax.random.key(0), x, sigma)  # shapes only
      >>> jax.eval_shape(model.apply, variables, x, sigma).shape
      (2, 8, 8, 3)
    """

    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = True
    fir_kernel: tuple[int, ...] = DEFAULT_FIR_KERNEL
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "residual"
    progressive_combine: str = "sum"
    embedding_type: str = "fourier"
    fourier_scale: float = 16.0
    init_scale: float = 0.0
    scale_by_sigma: bool = True
    nonlinearity: str = "swish"
    centered: bool = False
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    dtype: Any = jnp.float32
    group_norm_impl: str = "auto"

    #: State-dict buffers of the reference that are not Flax parameters.
    torch_buffers: ClassVar[tuple[str, ...]] = ("sigmas",)

    def __post_init__(self):
        if self.nf < 1:
            raise ValueError(f"NCSNpp: nf must be >= 1, got nf={self.nf}.")
        if len(self.ch_mult) < 1 or any(m < 1 for m in self.ch_mult):
            raise ValueError(
                f"NCSNpp: ch_mult must be non-empty positive ints, got {self.ch_mult}."
            )
        if self.num_res_blocks < 1:
            raise ValueError(
                f"NCSNpp: num_res_blocks must be >= 1, got num_res_blocks={self.num_res_blocks}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"NCSNpp: dropout must be in [0, 1), got dropout={self.dropout}.")
        _check_choice("resblock_type", self.resblock_type, RESBLOCK_TYPES)
        _check_choice("progressive", self.progressive, PROGRESSIVE)
        _check_choice("progressive_input", self.progressive_input, PROGRESSIVE_INPUT)
        _check_choice("progressive_combine", self.progressive_combine, PROGRESSIVE_COMBINE)
        _check_choice("embedding_type", self.embedding_type, EMBEDDING_TYPES)
        _check_choice("nonlinearity", self.nonlinearity, NONLINEARITIES)
        _check_choice("group_norm_impl", self.group_norm_impl, GROUP_NORM_IMPLS)
        if self.scale_by_sigma and self.embedding_type == "positional":
            if not 0 < self.sigma_min < self.sigma_max or self.num_scales < 1:
                raise ValueError(
                    "NCSNpp: scale_by_sigma with a positional embedding needs "
                    f"0 < sigma_min < sigma_max and num_scales >= 1, got sigma_min="
                    f"{self.sigma_min}, sigma_max={self.sigma_max}, num_scales={self.num_scales}."
                )
        super().__post_init__()

    @staticmethod
    def torch_key(path: tuple[str, ...]) -> str:
        """The score_sde_pytorch state-dict key (without ``module.``) of a Flax param path.

        Example:
          >>> NCSNpp.torch_key(("all_modules_3", "Conv_0", "kernel"))
          'all_modules.3.Conv_0.weight'
        """
        head, *rest = path
        if head.startswith("all_modules_"):
            head = "all_modules." + head[len("all_modules_") :]
        leaf = rest[-1] if rest else head
        parts = [head, *rest[:-1], _TORCH_LEAF.get(leaf, leaf)] if rest else [head]
        return ".".join(parts)

    def torch_buffer_values(self) -> dict[str, np.ndarray]:
        """Values of :attr:`torch_buffers` as the reference registers them (float64 ``sigmas``)."""
        return {"sigmas": _geometric_sigmas(self.sigma_min, self.sigma_max, self.num_scales)}

    def torch_frozen(self, path: tuple[str, ...]) -> bool:
        """Whether the reference keeps this param out of training (the Fourier ``W``).

        Such params are in the state dict but not in the EMA's ``shadow_params``.
        """
        return self.embedding_type == "fourier" and tuple(path) == ("all_modules_0", "W")

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"NCSNpp: x must be NHWC (B, H, W, C), got shape {x.shape}.")
        batch, height, width, channels = x.shape
        out_dtype = x.dtype
        if labels.shape != (batch,):
            raise ValueError(
                f"NCSNpp: labels must have shape (B,) = ({batch},), got {labels.shape}."
            )
        num_levels = len(self.ch_mult)
        if height != width or height % (2 ** (num_levels - 1)):
            raise ValueError(
                f"NCSNpp: images must be square with a side divisible by 2**(len(ch_mult)-1) = "
                f"{2 ** (num_levels - 1)}, got H={height}, W={width}."
            )
        act = layers.get_act(self.nonlinearity)
        dt = self.dtype
        nf = self.nf
        counter = iter(range(1 << 30))

        def name() -> str:
            return f"all_modules_{next(counter)}"

        def resblock(h, temb, out_ch=None, up=False, down=False):
            if self.resblock_type == "ddpm":
                block = layers.ResnetBlockDDPMpp(
                    act=act,
                    out_ch=out_ch,
                    dropout=self.dropout,
                    skip_rescale=self.skip_rescale,
                    init_scale=self.init_scale,
                    group_norm_impl=self.group_norm_impl,
                    dtype=dt,
                    name=name(),
                )
            else:
                block = layers.ResnetBlockBigGANpp(
                    act=act,
                    out_ch=out_ch,
                    up=up,
                    down=down,
                    dropout=self.dropout,
                    fir=self.fir,
                    fir_kernel=self.fir_kernel,
                    skip_rescale=self.skip_rescale,
                    init_scale=self.init_scale,
                    group_norm_impl=self.group_norm_impl,
                    dtype=dt,
                    name=name(),
                )
            return block(h, temb, train)

        def attn(h):
            return layers.AttnBlockpp(
                skip_rescale=self.skip_rescale,
                init_scale=self.init_scale,
                group_norm_impl=self.group_norm_impl,
                dtype=dt,
                name=name(),
            )(h, train)

        def norm_act(h):
            gn = layers.group_norm(h.shape[-1], name(), dt, act, self.group_norm_impl)
            return gn(h, train)

        # Time embedding.
        labels = labels.astype(jnp.float32) if self.embedding_type == "fourier" else labels
        if self.embedding_type == "fourier":
            used_sigmas = labels
            temb = layers.GaussianFourierProjection(nf, self.fourier_scale, name=name())(
                jnp.log(used_sigmas)
            )
        else:
            used_sigmas = None
            if self.scale_by_sigma:
                sigmas = _geometric_sigmas(self.sigma_min, self.sigma_max, self.num_scales)
                used_sigmas = jnp.asarray(sigmas, jnp.float32)[labels.astype(jnp.int32)]
            temb = get_timestep_embedding(labels, nf)
        if self.conditional:
            temb = layers.dense(4 * nf, name(), dt)(temb)
            temb = layers.dense(4 * nf, name(), dt)(act(temb))
        else:
            temb = None

        if not self.centered:
            x = 2 * x - 1.0
        x = x.astype(dt)

        # Encoder.
        input_pyramid = x if self.progressive_input != "none" else None
        hs = [layers.conv3x3(nf, name(), dtype=dt)(x)]
        for i_level in range(num_levels):
            for _ in range(self.num_res_blocks):
                h = resblock(hs[-1], temb, out_ch=nf * self.ch_mult[i_level])
                if width // 2**i_level in self.attn_resolutions:
                    h = attn(h)
                hs.append(h)
            if i_level != num_levels - 1:
                if self.resblock_type == "ddpm":
                    h = layers.Downsample(
                        with_conv=self.resamp_with_conv,
                        fir=self.fir,
                        fir_kernel=self.fir_kernel,
                        dtype=dt,
                        name=name(),
                    )(hs[-1])
                else:
                    h = resblock(hs[-1], temb, down=True)
                if self.progressive_input == "input_skip":
                    input_pyramid = layers.Downsample(
                        with_conv=False, fir=self.fir, fir_kernel=self.fir_kernel, dtype=dt
                    )(input_pyramid)
                    h = layers.Combine(
                        h.shape[-1], method=self.progressive_combine, dtype=dt, name=name()
                    )(input_pyramid, h)
                elif self.progressive_input == "residual":
                    input_pyramid = layers.Downsample(
                        out_ch=h.shape[-1],
                        with_conv=True,
                        fir=self.fir,
                        fir_kernel=self.fir_kernel,
                        dtype=dt,
                        name=name(),
                    )(input_pyramid)
                    input_pyramid = input_pyramid + h
                    if self.skip_rescale:
                        input_pyramid = input_pyramid * _SQRT_HALF
                    h = input_pyramid
                hs.append(h)

        # Middle.
        h = hs[-1]
        h = resblock(h, temb)
        h = attn(h)
        h = resblock(h, temb)

        # Decoder.
        pyramid = None
        for i_level in reversed(range(num_levels)):
            for _ in range(self.num_res_blocks + 1):
                h = resblock(
                    jnp.concatenate([h, hs.pop()], axis=-1),
                    temb,
                    out_ch=nf * self.ch_mult[i_level],
                )
            if width // 2**i_level in self.attn_resolutions:
                h = attn(h)
            if self.progressive != "none":
                if i_level == num_levels - 1:
                    if self.progressive == "output_skip":
                        pyramid = norm_act(h)
                        pyramid = layers.conv3x3(
                            channels, name(), init_scale=self.init_scale, dtype=dt
                        )(pyramid)
                    else:
                        pyramid = norm_act(h)
                        pyramid = layers.conv3x3(h.shape[-1], name(), dtype=dt)(pyramid)
                elif self.progressive == "output_skip":
                    pyramid = layers.Upsample(
                        with_conv=False, fir=self.fir, fir_kernel=self.fir_kernel, dtype=dt
                    )(pyramid)
                    pyramid_h = norm_act(h)
                    pyramid_h = layers.conv3x3(
                        channels, name(), init_scale=self.init_scale, dtype=dt
                    )(pyramid_h)
                    pyramid = pyramid + pyramid_h
                else:
                    pyramid = layers.Upsample(
                        out_ch=h.shape[-1],
                        with_conv=True,
                        fir=self.fir,
                        fir_kernel=self.fir_kernel,
                        dtype=dt,
                        name=name(),
                    )(pyramid)
                    pyramid = pyramid + h
                    if self.skip_rescale:
                        pyramid = pyramid * _SQRT_HALF
                    h = pyramid
            if i_level != 0:
                if self.resblock_type == "ddpm":
                    h = layers.Upsample(
                        with_conv=self.resamp_with_conv,
                        fir=self.fir,
                        fir_kernel=self.fir_kernel,
                        dtype=dt,
                        name=name(),
                    )(h)
                else:
                    h = resblock(h, temb, up=True)

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = norm_act(h)
            h = layers.conv3x3(channels, name(), init_scale=self.init_scale, dtype=dt)(h)

        if self.scale_by_sigma:
            h = h / used_sigmas.reshape((batch, 1, 1, 1)).astype(h.dtype)
        return h.astype(out_dtype)
