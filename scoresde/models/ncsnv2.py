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
# The reference's RefineNets (ncsnv2_64, ncsnv2_128, ncsnv2_256). Residual stages, in order:
# (name, channels as a multiple of nf, dilation); every stage has two blocks and all but
# the first open with resample='down' (a 2x2 mean pool when the dilation is 1; dilated
# stages keep the resolution). RefineNet blocks, deepest first: (name, features / nf).
_STAGES = {
    64: (("res1", 1, 1), ("res2", 2, 1), ("res3", 2, 2), ("res4", 2, 4)),
    128: (("res1", 1, 1), ("res2", 2, 1), ("res3", 2, 1), ("res4", 4, 2), ("res5", 4, 4)),
    256: (
        ("res1", 1, 1),
        ("res2", 2, 1),
        ("res3", 2, 1),
        ("res31", 2, 1),
        ("res4", 4, 2),
        ("res5", 4, 4),
    ),
}
_REFINES = {
    64: (("refine1", 2), ("refine2", 2), ("refine3", 1), ("refine4", 1)),
    128: (("refine1", 4), ("refine2", 2), ("refine3", 2), ("refine4", 1), ("refine5", 1)),
    256: (
        ("refine1", 4),
        ("refine2", 2),
        ("refine31", 2),
        ("refine3", 2),
        ("refine4", 1),
        ("refine5", 1),
    ),
}
#: The ``variant`` values of :class:`NCSNv2` (the reference's ``ncsnv2_{variant}``).
NCSNV2_VARIANTS = tuple(_STAGES)


def _downsampling_factor(variant: int) -> int:
    return 2 ** sum(1 for _, _, dilation in _STAGES[variant][1:] if dilation == 1)


def _torch_key(cls_name: str, path: tuple[str, ...]) -> str:
    if len(path) < 2:
        raise ValueError(f"{cls_name}.torch_key: not a parameter path: {path!r}.")
    *modules, leaf = path
    parts = [_LIST_ITEM.sub(r"\1.\2", m) if _LIST_ITEM.fullmatch(m) else m for m in modules]
    return ".".join([*parts, _TORCH_LEAF.get(leaf, leaf)])


def _check_inputs(cls_name: str, x: jax.Array, labels: jax.Array, factor: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"{cls_name}: x must be NHWC (B, H, W, C), got shape {x.shape}.")
    if labels.shape != x.shape[:1]:
        raise ValueError(
            f"{cls_name}: labels must have shape (B,) = {x.shape[:1]}, got {labels.shape}."
        )
    if x.shape[1] % factor or x.shape[2] % factor:
        raise ValueError(
            f"{cls_name}: height and width must be multiples of {factor} (the network mean-pools "
            f"{factor.bit_length() - 1} times), got {x.shape[1:3]}."
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"{cls_name}: labels must be integer noise-level indices, got dtype {labels.dtype}."
        )


def _refinenet(
    x: jax.Array,
    y: jax.Array | None,
    nf: int,
    act: Activation,
    num_classes: int | None,
    variant: int = 64,
) -> jax.Array:
    """The shared body of NCSN/NCSNv2, built inside the caller's compact ``__call__``."""
    h = ncsn_conv(nf, x.shape[-1], "begin_conv")(x)
    layers = []
    for i, (name, mult, dilation) in enumerate(_STAGES[variant]):
        for j, resample in enumerate(("down" if i > 0 else None, None)):
            block = ResidualBlock(
                mult * nf,
                act,
                resample=resample,
                dilation=dilation,
                num_classes=num_classes,
                name=f"{name}_{j}",
            )
            h = block(h, y)
        layers.append(h)

    h = None
    for k, ((name, mult), layer) in enumerate(
        zip(_REFINES[variant], reversed(layers), strict=True)
    ):
        block = RefineBlock(
            mult * nf,
            act,
            start=k == 0,
            end=k == len(layers) - 1,
            num_classes=num_classes,
            name=name,
        )
        h = block([layer] if h is None else [layer, h], layer.shape[1:3], y)
    h = act(normalize("normalizer", num_classes, h, y))
    return ncsn_conv(x.shape[-1], nf, "end_conv")(h)


class NCSNv2(nn.Module):
    r"""The NCSNv2 RefineNet (score_sde's ``ncsnv2_64``, ``ncsnv2_128``, ``ncsnv2_256``).

    ``variant=64`` (images below 96px): a begin conv; four stages of two pre-activation
    residual blocks with InstanceNorm++ (channels ``nf, 2nf, 2nf, 2nf``; the second stage
    halves the resolution by mean pooling, the third and fourth use dilations 2 and 4 at the
    same resolution); four RefineNet blocks back up to full resolution (bilinear, corners
    aligned); InstanceNorm++, the nonlinearity and an end conv. ``variant=128`` has five
    stages (``nf, 2nf, 2nf, 4nf, 4nf``, two mean pools, dilations 2 and 4 last) and
    ``variant=256`` six (an extra ``res31`` / ``refine31`` at ``2nf``, three mean pools), as
    in the reference. The output is divided by :math:`\sigma_{\text{label}}`:

    .. math:: s_\theta(x, i) = \mathrm{net}(x) / \sigma_i,\qquad
        \sigma_i = \sigma_{max} (\sigma_{min}/\sigma_{max})^{i/(N-1)},

    so label 0 is the largest noise level. The dilated convolutions are padded by their
    dilation ('SAME'), the fix of the fixture (the PyTorch reference pads by 1 and crashes).

    Parameter names follow the reference: ``res1_0/conv1/kernel`` is the state-dict key
    ``res1.0.conv1.weight`` (see :meth:`torch_key`).

    Attributes:
      nf: base channel count.
      variant: 64, 128 or 256, the reference's ``ncsnv2_{variant}`` network.
      centered: inputs are already in [-1, 1]; else :math:`x \mapsto 2x - 1` first.
      nonlinearity: ``elu`` (the reference configs), ``relu``, ``lrelu`` or ``swish``.
      sigma_min, sigma_max, num_scales: the noise levels :math:`\sigma_i`.
      scale_by_sigma: divide the output by :math:`\sigma_i` (the PyTorch reference always does).

    Call: ``model.apply(variables, x, labels, train=False)`` with ``x: (B, H, W, C)``
    (``H, W`` multiples of 2, 4, 8 for variants 64, 128, 256) and integer ``labels: (B,)`` in
    ``[0, num_scales)``; ``train`` is accepted for a uniform interface (the network has no dropout).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = NCSNv2(nf=8, num_scales=10)
      >>> x = jnp.zeros((2, 8, 8, 3)); labels = jnp.array([0, 9])
      >>> # Shapes only (model.init / model.apply run the same code on real arrays):
      >>> out, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), x, labels)
      >>> out.shape
      (2, 8, 8, 3)

    Reference: Y. Song and S. Ermon, "Improved Techniques for Training Score-Based
    Generative Models", NeurIPS 2020.
    """

    nf: int = 128
    variant: int = 64
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
        if self.variant not in NCSNV2_VARIANTS:
            raise ValueError(
                f"NCSNv2: variant must be one of {NCSNV2_VARIANTS}, got {self.variant!r}."
            )
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
        _check_inputs("NCSNv2", x, labels, _downsampling_factor(self.variant))
        h = x if self.centered else 2.0 * x - 1.0
        h = _refinenet(h, None, self.nf, get_act(self.nonlinearity), None, self.variant)
        if self.scale_by_sigma:
            sigmas = jnp.asarray(geometric_sigmas(self.sigma_min, self.sigma_max, self.num_scales))
            h = h / sigmas[labels][:, None, None, None].astype(h.dtype)
        return h


class NCSN(nn.Module):
    r"""The NCSN (v1) RefineNet with conditional InstanceNorm++ (score_sde's ``ncsn``).

    The architecture of :class:`NCSNv2` (``variant=64``), but every normalization (residual
    blocks, RCU, fusion and pooling blocks, the final one) is conditional: its
    :math:`\gamma, \alpha, \beta` are the row ``labels`` of a learned ``(num_scales, 3C)``
    embedding, and the chained pooling averages instead of taking the max. The network is
    told the noise level only through these normalizations; by default its output is not
    divided by :math:`\sigma_i` (``scale_by_sigma=False`` in the reference configs).

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
    (``H, W`` even) and integer ``labels: (B,)`` in ``[0, num_scales)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = NCSN(nf=8, num_scales=10, sigma_max=1.0)
      >>> x = jnp.zeros((2, 8, 8, 3)); labels = jnp.array([0, 9])
      >>> # Shapes only (model.init / model.apply run the same code on real arrays):
      >>> out, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), x, labels)
      >>> out.shape
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
        _check_inputs("NCSN", x, labels, _downsampling_factor(64))
        h = x if self.centered else 2.0 * x - 1.0
        act = get_act(self.nonlinearity)
        h = _refinenet(h, labels, self.nf, act, self.num_scales)
        if self.scale_by_sigma:
            sigmas = jnp.asarray(geometric_sigmas(self.sigma_min, self.sigma_max, self.num_scales))
            h = h / sigmas[labels][:, None, None, None].astype(h.dtype)
        return h
