"""RefineNet score networks: NCSNv2 (``ncsnv2_64``) and NCSN v1 (``ncsn``) of score_sde."""

from __future__ import annotations

import re
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from scoresde.models.ddpm import geometric_sigmas
from scoresde.models.layers import get_act
from scoresde.models.ncsnv2_layers import (
    Activation,
    RefineBlock,
    ResidualBlock,
    ncsn_conv,
    normalize,
)

#: Flax module names that are items of a PyTorch ``ModuleList``: ``res1_0`` <-> ``res1.0``.
_LIST_ITEM = re.compile(r"(res\d+|adapt_convs|convs|norms)_(\d+)")
#: Flax leaf name -> PyTorch parameter name, where they differ.
_TORCH_LEAF = {"kernel": "weight", "embedding": "weight"}
#: The largest image the 64px RefineNet is meant for (the reference switches networks above).
MAX_IMAGE_SIZE_64 = 95


def _torch_key(cls_name: str, path: tuple[str, ...]) -> str:
    if len(path) < 2:
        raise ValueError(f"{cls_name}.torch_key: not a parameter path: {path!r}.")
    *modules, leaf = path
    parts = [_LIST_ITEM.sub(r"\1.\2", m) if _LIST_ITEM.fullmatch(m) else m for m in modules]
    return ".".join([*parts, _TORCH_LEAF.get(leaf, leaf)])


def _check_inputs(cls_name: str, x: jax.Array, labels: jax.Array) -> None:
    if x.ndim != 4:
        raise ValueError(f"{cls_name}: x must be NHWC (B, H, W, C), got shape {x.shape}.")
    if labels.shape != x.shape[:1]:
        raise ValueError(
            f"{cls_name}: labels must have shape (B,) = {x.shape[:1]}, got {labels.shape}."
        )
    if x.shape[1] % 2 or x.shape[2] % 2 or max(x.shape[1:3]) > MAX_IMAGE_SIZE_64:
        raise ValueError(
            f"{cls_name}: height and width must be even and at most "
            f"{MAX_IMAGE_SIZE_64} (the reference's 64px network), got {x.shape[1:3]}."
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"{cls_name}: labels must be integer noise-level indices, got dtype {labels.dtype}."
        )


def _refinenet(
    x: jax.Array, y: jax.Array | None, nf: int, act: Activation, num_classes: int | None
) -> jax.Array:
    """The shared body of NCSN/NCSNv2, built inside the caller's compact ``__call__``."""

    def res(name: str, out: int, h: jax.Array, **kwargs) -> jax.Array:
        return ResidualBlock(out, act, num_classes=num_classes, name=name, **kwargs)(h, y)

    h = ncsn_conv(nf, x.shape[-1], "begin_conv")(x)
    layer1 = res("res1_1", nf, res("res1_0", nf, h))
    layer2 = res("res2_1", 2 * nf, res("res2_0", 2 * nf, layer1, resample="down"))
    h = res("res3_0", 2 * nf, layer2, resample="down", dilation=2)
    layer3 = res("res3_1", 2 * nf, h, dilation=2)
    h = res("res4_0", 2 * nf, layer3, resample="down", dilation=4)
    layer4 = res("res4_1", 2 * nf, h, dilation=4)

    def refine(name: str, features: int, xs: list[jax.Array], **kwargs) -> jax.Array:
        block = RefineBlock(features, act, num_classes=num_classes, name=name, **kwargs)
        return block(xs, xs[0].shape[1:3], y)

    ref1 = refine("refine1", 2 * nf, [layer4], start=True)
    ref2 = refine("refine2", 2 * nf, [layer3, ref1])
    ref3 = refine("refine3", nf, [layer2, ref2])
    h = refine("refine4", nf, [layer1, ref3], end=True)
    h = act(normalize("normalizer", num_classes, h, y))
    return ncsn_conv(x.shape[-1], nf, "end_conv")(h)


class NCSNv2(nn.Module):
    r"""The NCSNv2 RefineNet for images up to 64px (score_sde's ``ncsnv2_64``).

    A begin conv; four stages of two pre-activation residual blocks with InstanceNorm++
    (channels ``nf, 2nf, 2nf, 2nf``; the second stage halves the resolution by mean pooling,
    the third and fourth use dilations 2 and 4 at the same resolution); four RefineNet blocks
    back up to full resolution (bilinear, corners aligned); InstanceNorm++, the nonlinearity
    and an end conv. The output is divided by :math:`\sigma_{\text{label}}`:

    .. math:: s_\theta(x, i) = \mathrm{net}(x) / \sigma_i,\qquad
        \sigma_i = \sigma_{max} (\sigma_{min}/\sigma_{max})^{i/(N-1)},

    so label 0 is the largest noise level. The dilated convolutions are padded by their
    dilation ('SAME'), the fix of the fixture (the PyTorch reference pads by 1 and crashes).

    Parameter names follow the reference: ``res1_0/conv1/kernel`` is the state-dict key
    ``res1.0.conv1.weight`` (see :meth:`torch_key`).

    Attributes:
      nf: base channel count.
      centered: inputs are already in [-1, 1]; else :math:`x \mapsto 2x - 1` first.
      nonlinearity: ``elu`` (the reference configs), ``relu``, ``lrelu`` or ``swish``.
      sigma_min, sigma_max, num_scales: the noise levels :math:`\sigma_i`.
      scale_by_sigma: divide the output by :math:`\sigma_i` (the PyTorch reference always does).

    Call: ``model.apply(variables, x, labels, train=False)`` with ``x: (B, H, W, C)``
    (``H, W`` even, at most 95) and integer ``labels: (B,)`` in ``[0, num_scales)``;
    ``train`` is accepted for a uniform interface (the network has no dropout).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = NCSNv2(nf=8, num_scales=10)
      >>> x = jnp.zeros((2, 8, 8, 3)); labels = jnp.array([0, 9])
      >>> variables = model.init(jax.random.key(0), x, labels)
      >>> model.apply(variables, x, labels).shape
      (2, 8, 8, 3)

    Reference: Y. Song and S. Ermon, "Improved Techniques for Training Score-Based
    Generative Models", NeurIPS 2020.
    """

    nf: int = 128
    centered: bool = False
    nonlinearity: str = "elu"
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 232
    scale_by_sigma: bool = True

    #: State-dict buffers of the reference that are not parameters here.
    torch_buffers: ClassVar[tuple[str, ...]] = ("sigmas",)

    def __post_init__(self) -> None:
        if not isinstance(self.nf, int) or self.nf <= 0:
            raise ValueError(f"NCSNv2: nf must be a positive int, got {self.nf!r}.")
        get_act(self.nonlinearity)
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
          >>> NCSNv2.torch_key(("refine2", "adapt_convs_1", "2_1_conv", "kernel"))
          'refine2.adapt_convs.1.2_1_conv.weight'
        """
        return _torch_key("NCSNv2", path)

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
        del train
        _check_inputs("NCSNv2", x, labels)
        h = x if self.centered else 2.0 * x - 1.0
        h = _refinenet(h, None, self.nf, get_act(self.nonlinearity), None)
        if self.scale_by_sigma:
            sigmas = jnp.asarray(geometric_sigmas(self.sigma_min, self.sigma_max, self.num_scales))
            h = h / sigmas[labels][:, None, None, None].astype(h.dtype)
        return h


class NCSN(nn.Module):
    r"""The NCSN (v1) RefineNet with conditional InstanceNorm++ (score_sde's ``ncsn``).

    The architecture of :class:`NCSNv2`, but every normalization (residual blocks, RCU,
    fusion and pooling blocks, the final one) is conditional: its :math:`\gamma, \alpha,
    \beta` are the row ``labels`` of a learned ``(num_scales, 3C)`` embedding, and the
    chained pooling averages instead of taking the max. The network is told the noise
    level only through these normalizations; by default its output is not divided by
    :math:`\sigma_i` (``scale_by_sigma=False`` in the reference configs).

    The reference's PyTorch and JAX versions of this model both fail to build (an
    unconditional norm called with labels; ``dilation=None`` compared with 1; a missing
    ``num_classes``). This is the intended model, with ``num_classes = num_scales``, the
    PyTorch layout (``refine3`` with ``nf`` features) and 'SAME' dilated convs.

    Attributes:
      nf: base channel count.
      centered: inputs are already in [-1, 1]; else :math:`x \mapsto 2x - 1` first.
      nonlinearity: ``elu`` (the reference configs), ``relu``, ``lrelu`` or ``swish``.
      sigma_min, sigma_max, num_scales: the noise levels; ``num_scales`` is also the number
        of embedding rows.
      scale_by_sigma: divide the output by :math:`\sigma_i`.

    Call: ``model.apply(variables, x, labels, train=False)`` with ``x: (B, H, W, C)``
    (``H, W`` even, at most 95) and integer ``labels: (B,)`` in ``[0, num_scales)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = NCSN(nf=8, num_scales=10, sigma_max=1.0)
      >>> x = jnp.zeros((2, 8, 8, 3)); labels = jnp.array([0, 9])
      >>> variables = model.init(jax.random.key(0), x, labels)
      >>> model.apply(variables, x, labels).shape
      (2, 8, 8, 3)

    Reference: Y. Song and S. Ermon, "Generative Modeling by Estimating Gradients of the
    Data Distribution", NeurIPS 2019.
    """

    nf: int = 128
    centered: bool = False
    nonlinearity: str = "elu"
    sigma_min: float = 0.01
    sigma_max: float = 1.0
    num_scales: int = 10
    scale_by_sigma: bool = False

    #: The reference's NCSN registers no buffers.
    torch_buffers: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.nf, int) or self.nf <= 0:
            raise ValueError(f"NCSN: nf must be a positive int, got {self.nf!r}.")
        get_act(self.nonlinearity)
        geometric_sigmas(self.sigma_min, self.sigma_max, self.num_scales)
        super().__post_init__()

    @staticmethod
    def torch_key(path: tuple[str, ...]) -> str:
        """The PyTorch-style state-dict key of the parameter at ``path``.

        Example:
          >>> NCSN.torch_key(("res2_0", "normalize1", "embed", "embedding"))
          'res2.0.normalize1.embed.weight'
        """
        return _torch_key("NCSN", path)

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
        del train
        _check_inputs("NCSN", x, labels)
        h = x if self.centered else 2.0 * x - 1.0
        act = get_act(self.nonlinearity)
        h = _refinenet(h, labels, self.nf, act, self.num_scales)
        if self.scale_by_sigma:
            sigmas = jnp.asarray(geometric_sigmas(self.sigma_min, self.sigma_max, self.num_scales))
            h = h / sigmas[labels][:, None, None, None].astype(h.dtype)
        return h
