r"""The final denoising step: Tweedie's posterior mean of the clean data.

For the linear SDEs here :math:`x_t = a(t)x_0 + \sigma(t)z`, and Tweedie's formula gives the
posterior mean exactly in terms of the score of :math:`p_t`:

.. math::
    \mathbb E[x_0 \mid x_t] = \frac{x_t + \sigma(t)^2\,\nabla_x\log p_t(x_t)}{a(t)}.

All samplers apply it once at ``t = eps`` when ``denoise=True`` (one score evaluation). For
VE it is the reference implementation's noise removal :math:`x + \sigma^2 s`; for VP the
reference instead ends with the mean of one more reverse-diffusion step,
:math:`(x + \beta_0 s)/\sqrt{1 - \beta_0}`, which agrees with Tweedie only to first order in
``eps``. The Tweedie estimate is the minimum-mean-squared-error denoiser and needs no
discretization.

Reference: Efron, "Tweedie's formula and selection bias", JASA 2011; Song et al., ICLR 2021,
Appendix G ("denoising").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scoresde._utils import batch_broadcast
from scoresde.sde import SDE, ScoreFn


def tweedie_denoise(sde: SDE, score_fn: ScoreFn, x: jax.Array, t: jax.Array) -> jax.Array:
    r"""Tweedie's estimate :math:`\mathbb E[x_0\mid x_t] = (x_t + \sigma_t^2 s(x_t, t))/a_t`.

    Args:
      sde: the forward SDE (its :meth:`~scoresde.SDE.marginal_prob` gives :math:`a_t`,
        :math:`\sigma_t`).
      score_fn: ``score_fn(x, t)``.
      x: samples ``(B, *dims)`` at time ``t``.
      t: a scalar time or one time per sample ``(B,)``.

    Returns:
      The denoised samples, shaped like ``x``. One call of ``score_fn``.

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> sde = sd.VESDE()
      >>> x = jnp.ones((2, 3))
      >>> sd.tweedie_denoise(sde, lambda x, t: jnp.zeros_like(x), x, 1e-3)[0]
      Array([1., 1., 1.], dtype=float32)
    """
    t = jnp.asarray(t, dtype=x.dtype)
    t_b = jnp.broadcast_to(t, (x.shape[0],)) if t.ndim == 0 else t
    mean_coeff, std = sde.marginal_prob(jnp.ones_like(x), t_b)
    score = score_fn(x, t_b)
    return (x + batch_broadcast(std**2, x) * score) / mean_coeff
