r"""Predictors: one reverse-time step from ``t`` to ``t_next < t``, as diffrax solvers.

Each predictor makes its step from the :class:`~scoresde.sampling.base.ReverseSDETerm` it is
given and draws its standard normals from ``term.noise(t, x, stream=PREDICTOR_STREAM)``.

Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential
Equations", ICLR 2021, Section 4.2 and Appendices E-F.
"""

from __future__ import annotations

import jax.numpy as jnp

from scoresde._utils import batch_broadcast
from scoresde.sampling.base import PREDICTOR_STREAM, AbstractPredictor, ReverseSDETerm, batch_time


class EulerMaruyamaPredictor(AbstractPredictor):
    r"""Euler-Maruyama on the reverse-time SDE, with the step equal to the grid spacing.

    .. math::
        x_{t+\Delta t} = x_t + \big[f(x_t, t) - g(t)^2 s(x_t, t)\big]\Delta t
        + g(t)\sqrt{-\Delta t}\,z,\qquad \Delta t = t_\text{next} - t < 0.

    With ``probability_flow=True`` the term halves the score term and drops the noise (Euler
    on the probability-flow ODE). One score evaluation per step. This is ``diffrax.Euler()``
    on the same term, written in physical time.

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> x, nfe = sd.sample_pc(jax.random.key(0), sd.VPSDE(N=10), lambda x, t: -x, (4, 2),
      ...                       predictor=sd.EulerMaruyamaPredictor(), corrector="none")
      >>> x.shape, int(nfe)
      ((4, 2), 10)
    """

    def update(self, term: ReverseSDETerm, x, t, t_next):
        drift, diffusion = term.reverse.sde(x, batch_time(x, t))
        dt = t_next - t
        z = term.noise(t, x, PREDICTOR_STREAM)
        return x + drift * dt + batch_broadcast(diffusion, x) * jnp.sqrt(-dt) * z


class ReverseDiffusionPredictor(AbstractPredictor):
    r"""The reverse of the forward discretization :math:`x_{i+1} = x_i + f_i(x_i) + G_i z_i`.

    .. math::
        x_i = x_{i+1} - f_{i+1}(x_{i+1}) + G_{i+1}^2 s(x_{i+1}, t_{i+1}) + G_{i+1} z,

    with ``(f, G)`` from :meth:`scoresde.SDE.discretize` (DDPM for VP, SMLD for VE,
    Euler-Maruyama for sub-VP) of the SDE on the sampler's grid. With
    ``probability_flow=True`` the score term is halved and the noise dropped. One score
    evaluation per step.

    Example:
      >>> import jax, scoresde as sd
      >>> x, nfe = sd.sample_pc(jax.random.key(0), sd.VESDE(N=10), lambda x, t: -x, (4, 2),
      ...                       predictor="reverse_diffusion", corrector="none", denoise=False)
      >>> int(nfe)
      9
    """

    def update(self, term: ReverseSDETerm, x, t, t_next):
        del t_next
        f, G = term.reverse.discretize(x, batch_time(x, t))
        z = term.noise(t, x, PREDICTOR_STREAM)
        return x - f + batch_broadcast(G, x) * z


class AncestralSamplingPredictor(AbstractPredictor):
    r"""Ancestral sampling: :meth:`scoresde.SDE.ancestral_step` from ``t`` to ``t_next``.

    VP: DDPM's step :math:`(x + \beta_i s)/\sqrt{1-\beta_i} + \sqrt{\beta_i}z`; VE: the SMLD
    step of the paper's Appendix F; sub-VP: the exact Gaussian posterior step given the
    Tweedie estimate of :math:`x_0`. Always stochastic: ``probability_flow=True`` is an
    error. One score evaluation per step.

    Example:
      >>> import jax, scoresde as sd
      >>> x, nfe = sd.sample_pc(jax.random.key(0), sd.SubVPSDE(N=10), lambda x, t: -x, (4, 2),
      ...                       predictor="ancestral", corrector="none")
      >>> int(nfe)
      10
    """

    def update(self, term: ReverseSDETerm, x, t, t_next):
        if term.probability_flow:
            raise ValueError(
                "AncestralSamplingPredictor: probability_flow=True is not supported (ancestral "
                "sampling is stochastic); use predictor='euler_maruyama' or "
                "'reverse_diffusion' for a deterministic sampler."
            )
        score = term.score(x, t)
        z = term.noise(t, x, PREDICTOR_STREAM)
        x_next, _ = term.sde.ancestral_step(x, batch_time(x, t), batch_time(x, t_next), score, z)
        return x_next


class NonePredictor(AbstractPredictor):
    """The identity: no predictor step (a corrector-only sampler such as annealed Langevin).

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> x = jnp.ones((2, 3))
      >>> bool((sd.NonePredictor().update(None, x, 1.0, 0.5) == x).all())
      True
    """

    def update(self, term, x, t, t_next):
        del term, t, t_next
        return x
