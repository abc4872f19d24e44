"""The DDPM U-Net of Ho et al. (2020), weight-compatible with score_sde_pytorch's ``ddpm``."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from scoresde.models.ddpm_layers import (
    DDPM_GROUPS,
    AttnBlock,
    Downsample,
    ResnetBlockDDPM,
    Upsample,
    group_norm,
)
from scoresde.models.embeddings import get_timestep_embedding
from scoresde.models.group_norm import IMPLS as GROUP_NORM_IMPLS
from scoresde.models.layers import conv3x3, dense, get_act

_ALL_MODULES = re.compile(r"all_modules_(\d+)")
#: Flax leaf name -> PyTorch parameter name, where they differ.
_TORCH_LEAF = {"kernel": "weight", "scale": "weight"}


def geometric_sigmas(
    sigma_min: float, sigma_max: float, num_scales: int, dtype: type = np.float32
) -> np.ndarray:
    r"""The reference's noise levels :math:`\sigma_i`, largest first.

    .. math::
        \sigma_i = \sigma_{max}\,(\sigma_{min}/\sigma_{max})^{i/(N-1)},\quad i = 0, \dots, N-1,

    computed in float64 as the reference does, then cast to ``dtype``. Index 0 is
    :math:`\sigma_{max}` (the opposite order of :attr:`scoresde.VESDE.discrete_sigmas`).

    Args:
      sigma_min: smallest noise level, > 0.
      sigma_max: largest noise level, > ``sigma_min``.
      num_scales: number of levels :math:`N \ge 1`.
      dtype: the returned dtype (float32 for the networks; the reference's buffer is float64).

    Returns:
      ``(num_scales,)`` array.

    Example:
      >>> geometric_sigmas(0.01, 1.0, 3).tolist()
      [1.0, 0.10000000149011612, 0.009999999776482582]
    """
    if not sigma_min > 0:
        raise ValueError(f"sigma_min must be > 0, got {sigma_min}.")
    if not sigma_max > sigma_min:
        raise ValueError(f"sigma_max must be > sigma_min = {sigma_min}, got {sigma_max}.")
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}.")
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales)).astype(dtype)


class DDPM(nn.Module):
    r"""The DDPM U-Net (Ho et al., 2020), as score_sde's ``ddpm`` model.

    A sinusoidal embedding of the time label goes through two dense layers,
    :math:`t_{emb} = W_2\,\phi(W_1\,\mathrm{emb}(t))`, and conditions every residual block.
    The encoder has, per resolution, ``num_res_blocks`` residual blocks (each followed by
    self-attention at the ``attn_resolutions``) and a strided-conv downsampling; a middle of
    ResBlock, attention, ResBlock; a decoder with ``num_res_blocks + 1`` residual blocks per
    resolution over the concatenated skip connections, then nearest-neighbour upsampling; last
    :math:`\mathrm{Conv}(\phi(\mathrm{GN}(h)))` back to the input channels. GroupNorm has 32
    groups, so every channel count ``nf * ch_mult[i]`` must be a multiple of 32.

    Submodules are named ``all_modules_{i}`` in the reference's construction order, so
    ``all_modules_3/Conv_0/kernel`` is the state-dict key ``all_modules.3.Conv_0.weight``
    (see :meth:`torch_key`).

    Attributes:
      nf: base channel count (a multiple of 32).
      ch_mult: channel multiplier per resolution; ``len(ch_mult)`` resolutions.
      num_res_blocks: residual blocks per resolution in the encoder.
      attn_resolutions: spatial sizes at which self-attention is applied.
      dropout: dropout rate inside the residual blocks (training only).
      resamp_with_conv: learned convolutions in the down/upsampling layers.
      centered: inputs are already in [-1, 1]; else :math:`x \mapsto 2x - 1` first.
      nonlinearity: ``swish`` (DDPM), ``elu``, ``relu`` or ``lrelu``.
      scale_by_sigma: divide the output by :math:`\sigma_{\text{label}}` of
        :func:`geometric_sigmas` (labels are then integer level indices).
      sigma_min, sigma_max, num_scales: the noise levels used by ``scale_by_sigma``.
      dtype: the compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
      group_norm_impl: GroupNorm's implementation, ``'auto'`` (a fused GroupNorm + SiLU
        kernel on CUDA GPUs for feature maps of 16x16 and smaller, where it is faster; XLA
        elsewhere), ``'xla'`` or ``'pallas'``
        (:func:`scoresde.models.group_norm.group_norm`).

    Call: ``model.apply(variables, x, labels, train=False)`` with ``x: (B, H, W, C)``,
    ``labels: (B,)`` (floats or ints), ``H = W`` divisible by ``2 ** (len(ch_mult) - 1)``;
    dropout draws from the ``"dropout"`` RNG when ``train=True``. Returns ``(B, H, W, C)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = DDPM(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
      >>> x = jnp.zeros((2, 8, 8, 3)); labels = jnp.array([10.0, 500.0])
      >>> # Shapes only (model.init / model.apply run the same code on real arrays):
      >>> out, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), x, labels)
      >>> out.shape, sum(p.size for p in jax.tree.leaves(variables))
      ((2, 8, 8, 3), 685731)

    Reference: J. Ho, A. Jain, P. Abbeel, "Denoising Diffusion Probabilistic Models",
    NeurIPS 2020; Y. Song et al., "Score-Based Generative Modeling through Stochastic
    Differential Equations", ICLR 2021.
    """

    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    centered: bool = True
    nonlinearity: str = "swish"
    scale_by_sigma: bool = False
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    dtype: Any = jnp.float32
    group_norm_impl: str = "auto"

    #: State-dict buffers of the reference that are not parameters here.
    torch_buffers: ClassVar[tuple[str, ...]] = ("sigmas",)

    def __post_init__(self) -> None:
        if not isinstance(self.nf, int) or self.nf <= 0 or self.nf % DDPM_GROUPS:
            raise ValueError(
                f"DDPM: nf must be a positive multiple of {DDPM_GROUPS} (GroupNorm has "
                f"{DDPM_GROUPS} groups), got {self.nf!r}."
            )
        if len(self.ch_mult) == 0 or any(int(m) < 1 for m in self.ch_mult):
            raise ValueError(
                f"DDPM: ch_mult must be a non-empty tuple of positive ints, got {self.ch_mult!r}."
            )
        if self.num_res_blocks < 1:
            raise ValueError(f"DDPM: num_res_blocks must be >= 1, got {self.num_res_blocks}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DDPM: dropout must be in [0, 1), got {self.dropout}.")
        get_act(self.nonlinearity)
        if self.group_norm_impl not in GROUP_NORM_IMPLS:
            raise ValueError(
                f"DDPM: group_norm_impl must be one of {GROUP_NORM_IMPLS}, "
                f"got {self.group_norm_impl!r}."
            )
        if self.scale_by_sigma:
            geometric_sigmas(self.sigma_min, self.sigma_max, self.num_scales)
        super().__post_init__()

    def torch_buffer_values(self) -> dict[str, np.ndarray]:
        """The reference's ``sigmas`` buffer (float64, largest first), for exporting."""
        return {
            "sigmas": geometric_sigmas(self.sigma_min, self.sigma_max, self.num_scales, np.float64)
        }

    @staticmethod
    def torch_key(path: tuple[str, ...]) -> str:
        """The score_sde_pytorch state-dict key (without ``module.``) of the parameter at ``path``.

        Example:
          >>> DDPM.torch_key(("all_modules_3", "GroupNorm_0", "scale"))
          'all_modules.3.GroupNorm_0.weight'
        """
        match = _ALL_MODULES.fullmatch(path[0]) if path else None
        if match is None or len(path) < 2:
            raise ValueError(f"DDPM.torch_key: not a DDPM parameter path: {path!r}.")
        *inner, leaf = path[1:]
        return ".".join([f"all_modules.{match.group(1)}", *inner, _TORCH_LEAF.get(leaf, leaf)])

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"DDPM: x must be NHWC (B, H, W, C), got shape {x.shape}.")
        if labels.shape != x.shape[:1]:
            raise ValueError(
                f"DDPM: labels must have shape (B,) = {x.shape[:1]}, got {labels.shape}."
            )
        num_resolutions = len(self.ch_mult)
        factor = 2 ** (num_resolutions - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"DDPM: height and width must be divisible by 2 ** (len(ch_mult) - 1) = {factor}, "
                f"got {x.shape[1:3]}."
            )
        act = get_act(self.nonlinearity)
        counter = iter(range(10**9))

        def name() -> str:
            return f"all_modules_{next(counter)}"

        def resblock(out_ch: int) -> ResnetBlockDDPM:
            return ResnetBlockDDPM(
                out_ch,
                act,
                self.dropout,
                dtype=self.dtype,
                group_norm_impl=self.group_norm_impl,
                name=name(),
            )

        def attn(h: jax.Array) -> jax.Array:
            return AttnBlock(self.dtype, self.group_norm_impl, name=name())(h, train)

        temb = get_timestep_embedding(labels, self.nf)
        temb = dense(4 * self.nf, name(), dtype=self.dtype)(temb)
        temb = dense(4 * self.nf, name(), dtype=self.dtype)(act(temb))

        h = x if self.centered else 2.0 * x - 1.0
        hs = [conv3x3(self.nf, name(), dtype=self.dtype)(h)]
        for level in range(num_resolutions):
            for _ in range(self.num_res_blocks):
                h = resblock(self.nf * self.ch_mult[level])(hs[-1], temb, train)
                if h.shape[2] in self.attn_resolutions:
                    h = attn(h)
                hs.append(h)
            if level != num_resolutions - 1:
                hs.append(Downsample(self.resamp_with_conv, self.dtype, name=name())(hs[-1]))

        h = hs[-1]
        h = resblock(h.shape[-1])(h, temb, train)
        h = attn(h)
        h = resblock(h.shape[-1])(h, temb, train)

        for level in reversed(range(num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = resblock(self.nf * self.ch_mult[level])(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train
                )
            if h.shape[2] in self.attn_resolutions:
                h = attn(h)
            if level != 0:
                h = Upsample(self.resamp_with_conv, self.dtype, name=name())(h)

        h = group_norm(name(), self.dtype, act, self.group_norm_impl)(h, train)
        h = conv3x3(x.shape[-1], name(), init_scale=0.0, dtype=self.dtype)(h)

        if self.scale_by_sigma:
            sigmas = jnp.asarray(geometric_sigmas(self.sigma_min, self.sigma_max, self.num_scales))
            h = h / sigmas[labels.astype(jnp.int32)][:, None, None, None].astype(h.dtype)
        return h
