"""Parameter initializers of the reference networks."""

from __future__ import annotations

from flax import linen as nn

#: What the reference substitutes for ``init_scale = 0`` (a zero scale is not allowed).
ZERO_INIT_SCALE = 1e-10


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
    r"""DDPM's initializer: variance scaling, fan-average, uniform.

    Draws :math:`U(-a, a)` with :math:`a = \sqrt{3\,\text{scale} / ((\text{fan\_in} + \text{fan\_out})/2)}`;
    ``scale = 0`` means :data:`ZERO_INIT_SCALE` (near-zero output layers, as in the reference).

    Example:
      >>> import jax
      >>> w = default_init(1.0)(jax.random.key(0), (3, 3, 8, 16))
      >>> w.shape
      (3, 3, 8, 16)
    """
    scale = ZERO_INIT_SCALE if scale == 0 else scale
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")
