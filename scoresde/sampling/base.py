r"""The interface of predictors and correctors: diffrax solvers on a reverse-time term.

Reverse-time integration runs in the reversed clock :math:`\tau = -t`, so that diffrax always
steps forward (from :math:`\tau_0 = -T` to :math:`\tau_1 = -\epsilon`) and every solver sees
the physical time as ``t = -tau``. Negation is exact in floating point, so the grid
``-linspace(T, eps, num_steps)`` reproduces the reference's time points bit for bit. In
:math:`\tau` the reverse-time SDE :math:`dx = [f - g^2\nabla\log p_t]\,dt + g\,d\bar w` reads

.. math::
    dx = -\big[f(x, -\tau) - c\,g(-\tau)^2 s(x, -\tau)\big]\,d\tau + g(-\tau)\,dW_\tau,

with :math:`c = 1` (reverse SDE) or :math:`c = \tfrac12` and no noise (probability flow).

:class:`ReverseSDETerm` is that equation as a ``diffrax.AbstractTerm`` (so ``diffrax.Euler``
on it *is* Euler-Maruyama), and it also carries what discrete samplers need: the forward SDE
(its DDPM/SMLD discretization, ancestral step and Langevin ``alpha``), the score function and
a source of fresh standard normals keyed by time. :class:`AbstractPredictor` and
:class:`AbstractCorrector` are diffrax solvers whose step is written in physical time; any
other diffrax solver that accepts an ``AbstractTerm`` can be used as a predictor too.

Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential
Equations", ICLR 2021, Section 4.2 and Appendix G.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde._utils import batch_broadcast
from scoresde.sde import SDE, ReverseSDE, ScoreFn

#: Stream of :meth:`ReverseSDETerm.noise` used by predictors; correctors use 1, 2, ...
PREDICTOR_STREAM = 0


def time_key(key: jax.Array, t: jax.Array) -> jax.Array:
    """``key`` folded with the bits of the scalar time ``t``: one fresh key per grid time."""
    t = jnp.asarray(t)
    if t.dtype == jnp.float64:
        bits = jax.lax.bitcast_convert_type(t, jnp.uint32)  # (2,) words
        return jax.random.fold_in(jax.random.fold_in(key, bits[0]), bits[1])
    bits = jax.lax.bitcast_convert_type(t.astype(jnp.float32), jnp.uint32)
    return jax.random.fold_in(key, bits)


def batch_time(x: jax.Array, t: jax.Array) -> jax.Array:
    """The scalar time ``t`` repeated once per sample of ``x``: shape ``(B,)``, ``x``'s dtype."""
    return jnp.full((x.shape[0],), t, dtype=x.dtype)


class ReverseSDETerm(diffrax.AbstractTerm):
    r"""The reverse-time SDE of ``sde`` driven by ``score_fn``, in the clock :math:`\tau = -t`.

    As a diffrax term: ``vf(tau, x) = (-drift(x, t), g(t))`` with the reverse drift of
    :meth:`scoresde.SDE.reverse`, ``contr(tau0, tau1) = (dtau, sqrt(dtau) z)`` with ``z`` the
    predictor's standard normals at ``t = -tau0``, and ``prod`` their combination
    :math:`-\text{drift}\,d\tau + g\,dW`. ``diffrax.Euler()`` on this term is Euler-Maruyama.

    Attributes:
      sde: the forward SDE (its ``N`` sets the DDPM/SMLD discretization used by the
        reverse-diffusion and ancestral predictors and the Langevin ``alpha``).
      score_fn: ``score_fn(x, t)`` with ``t: (B,)``.
      key: PRNG key; :meth:`noise` folds in the stream and the time.
      shape: the batch shape ``(B, *dims)``.
      dtype: the samples' dtype.
      probability_flow: integrate the probability-flow ODE instead (no noise, half the
        score term).

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> term = sd.sampling.ReverseSDETerm(sd.VPSDE(), lambda x, t: -x, jax.random.key(0),
      ...                                   (4, 2), jnp.float32)
      >>> term.noise(0.5, jnp.zeros((4, 2)), stream=0).shape
      (4, 2)
    """

    sde: SDE
    score_fn: ScoreFn
    key: jax.Array
    shape: tuple[int, ...] = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)
    probability_flow: bool = eqx.field(static=True, default=False)

    @property
    def reverse(self) -> ReverseSDE:
        """The reverse-time SDE (or probability-flow ODE) in physical time."""
        return self.sde.reverse(self.score_fn, self.probability_flow)

    def score(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """The score at the scalar time ``t`` (one call of ``score_fn``)."""
        return self.score_fn(x, batch_time(x, t))

    def noise(self, t: jax.Array, x: jax.Array, stream: int) -> jax.Array:
        """Standard normals shaped like ``x``, fresh for each ``(stream, t)``."""
        key = time_key(jax.random.fold_in(self.key, stream), t)
        return jax.random.normal(key, x.shape, x.dtype)

    # diffrax.AbstractTerm ---------------------------------------------------------------------
    def vf(self, t, y, args):
        drift, diffusion = self.reverse.sde(y, batch_time(y, -t))
        return -drift, diffusion

    def contr(self, t0, t1, **kwargs):
        del kwargs
        dtau = t1 - t0
        z = self.noise(-t0, jnp.zeros(self.shape, self.dtype), PREDICTOR_STREAM)
        return dtau, jnp.sqrt(dtau).astype(self.dtype) * z

    def prod(self, vf, control):
        drift, diffusion = vf
        dtau, dw = control
        return drift * dtau + batch_broadcast(diffusion, dw) * dw


def unwrap_term(terms) -> ReverseSDETerm:
    """The :class:`ReverseSDETerm` inside the wrappers diffrax puts around terms.

    ``diffeqsolve`` wraps every term to handle the direction of time; the samplers always
    integrate forward in :math:`\\tau`, where the wrapper is the identity.
    """
    term = terms
    while not isinstance(term, ReverseSDETerm):
        inner = getattr(term, "term", None)
        if inner is None:
            raise TypeError(
                "predictors and correctors need a ReverseSDETerm (as built by sd.sample_pc), "
                f"got terms of type {type(terms).__name__}."
            )
        term = inner
    return term


class AbstractPredictor(diffrax.AbstractSolver):
    r"""A predictor: one step of a reverse-time solver from ``t`` to ``t_next < t``.

    Subclasses implement :meth:`update` in physical time; diffrax drives it through
    :meth:`step` on a :class:`ReverseSDETerm` in the reversed clock. ``diffeqsolve`` with a
    predictor alone is a plain reverse-time sampler.
    """

    term_structure: ClassVar = ReverseSDETerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    @abc.abstractmethod
    def update(
        self, term: ReverseSDETerm, x: jax.Array, t: jax.Array, t_next: jax.Array
    ) -> jax.Array:
        """The sample at ``t_next`` from the sample ``x`` at ``t`` (scalar times)."""

    def order(self, terms):
        return 1

    def strong_order(self, terms):
        return 0.5

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del args, solver_state, made_jump
        y1 = self.update(unwrap_term(terms), y0, -t0, -t1)
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


class AbstractCorrector(diffrax.AbstractSolver):
    r"""A corrector: a score-based MCMC step that leaves :math:`p_t` invariant, at fixed ``t``.

    Subclasses implement :meth:`correct`. As a diffrax solver, a step from ``tau0`` to
    ``tau1`` is one correction at ``t = -tau1``: ``diffeqsolve`` with a corrector alone over
    a grid is annealed Langevin dynamics.
    """

    term_structure: ClassVar = ReverseSDETerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    @abc.abstractmethod
    def correct(
        self, term: ReverseSDETerm, x: jax.Array, t: jax.Array, noise: jax.Array
    ) -> jax.Array:
        """One corrector step at the scalar time ``t`` with standard normals ``noise``."""

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del t0, args, solver_state, made_jump
        term = unwrap_term(terms)
        y1 = self.correct(term, y0, -t1, term.noise(-t1, y0, stream=1))
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


def per_sample_norm(v: jax.Array) -> jax.Array:
    """Euclidean norm of each sample of ``v: (B, ...)``, shape ``(B,)``."""
    return jnp.sqrt(jnp.sum(jnp.reshape(v, (v.shape[0], -1)) ** 2, axis=-1))
