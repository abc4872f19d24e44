r"""Predictor-corrector sampling driven by ``diffrax.diffeqsolve``.

The sampler integrates the reverse-time SDE over the grid :math:`t_0 = T > t_1 > \dots >
t_{n-1} = \epsilon` (``linspace(T, eps, num_steps)``, as the reference), in the reversed clock
:math:`\tau = -t` (see :mod:`scoresde.sampling.base`). One diffrax step from :math:`t_i` to
:math:`t_{i+1}` is one predictor step followed by ``n_corrector_steps`` corrector steps at
:math:`t_{i+1}` (the order of the paper's Algorithm 1); then, with ``denoise=True``, one
Tweedie step at :math:`\epsilon` (:func:`scoresde.sampling.denoise.tweedie_denoise`).

Differences from the reference implementation:

- Euler-Maruyama steps by the grid spacing :math:`(T-\epsilon)/(n-1)`, not by :math:`1/N`.
- The discrete predictors (reverse diffusion, ancestral) and the Langevin :math:`\alpha`
  use the SDE's DDPM/SMLD discretization with ``N = num_steps`` (the same grid); with the
  default ``num_steps = sde.N`` this is the reference's behaviour.
- The final noise removal is Tweedie's posterior mean, and it is counted in ``nfe``;
  ``nfe`` is counted at run time and never doubled.

Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential
Equations", ICLR 2021, Section 4.2 and Appendix G.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde._utils import is_concrete_number
from scoresde.sampling._count import CallCounter
from scoresde.sampling.base import AbstractCorrector, ReverseSDETerm, unwrap_term
from scoresde.sampling.correctors import (
    DEFAULT_SNR,
    AnnealedLangevinCorrector,
    LangevinCorrector,
    NoneCorrector,
)
from scoresde.sampling.denoise import tweedie_denoise
from scoresde.sampling.predictors import (
    AncestralSamplingPredictor,
    EulerMaruyamaPredictor,
    NonePredictor,
    ReverseDiffusionPredictor,
)
from scoresde.sde import SDE, ScoreFn

#: The end time of sampling used by the paper (``sampling.eps`` in the reference configs).
DEFAULT_EPS = 1e-3

PREDICTOR_NAMES = ("euler_maruyama", "reverse_diffusion", "ancestral", "none")
CORRECTOR_NAMES = ("langevin", "ald", "none")


class PredictorCorrector(diffrax.AbstractSolver):
    r"""A diffrax solver: a predictor step, then ``n_corrector_steps`` corrector steps.

    A step from :math:`\tau_0` to :math:`\tau_1` (physical :math:`t = -\tau_0 \to
    t_\text{next} = -\tau_1`) runs ``predictor.step`` and then the corrector at
    :math:`t_\text{next}`, corrector ``j`` drawing its normals from stream ``1 + j`` of the
    term. An optional ``constraint(x, t, stream)`` is applied after every sub-step
    (inpainting and colorization use it to impose the known part of the sample).

    Attributes:
      predictor: any diffrax solver accepting a :class:`ReverseSDETerm` (the predictors of
        :mod:`scoresde.sampling.predictors`, or e.g. ``diffrax.Euler()``).
      corrector: an :class:`~scoresde.sampling.base.AbstractCorrector`.
      n_corrector_steps: corrector steps per predictor step (>= 0).
      constraint: ``None`` or a callable ``(x, t, stream) -> x``.

    Example:
      >>> import jax, jax.numpy as jnp, diffrax, scoresde as sd
      >>> solver = sd.sampling.PredictorCorrector(sd.ReverseDiffusionPredictor(),
      ...                                         sd.LangevinCorrector(), 1)
      >>> term = sd.sampling.ReverseSDETerm(sd.VPSDE(N=10), lambda x, t: -x,
      ...                                   jax.random.key(1), (3, 2), jnp.float32)
      >>> ts = -jnp.linspace(1.0, 1e-3, 10)
      >>> sol = diffrax.diffeqsolve(term, solver, ts[0], ts[-1], None, jnp.ones((3, 2)),
      ...                           stepsize_controller=diffrax.StepTo(ts), max_steps=9)
      >>> sol.ys.shape
      (1, 3, 2)
    """

    predictor: diffrax.AbstractSolver
    corrector: AbstractCorrector
    n_corrector_steps: int = eqx.field(static=True, default=1)
    constraint: Callable | None = None

    term_structure: ClassVar = ReverseSDETerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def __check_init__(self):
        n = self.n_corrector_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(
                f"PredictorCorrector: n_corrector_steps must be an integer >= 0, got {n!r}."
            )
        if not isinstance(self.predictor, diffrax.AbstractSolver):
            raise TypeError(
                "PredictorCorrector: predictor must be a diffrax.AbstractSolver (e.g. "
                f"sd.ReverseDiffusionPredictor()), got {type(self.predictor).__name__}."
            )
        if not isinstance(self.corrector, AbstractCorrector):
            raise TypeError(
                "PredictorCorrector: corrector must be an AbstractCorrector (e.g. "
                f"sd.LangevinCorrector()), got {type(self.corrector).__name__}."
            )

    def order(self, terms):
        return self.predictor.order(terms)

    def strong_order(self, terms):
        return self.predictor.strong_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.predictor.init(terms, t0, t1, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        x, _, _, solver_state, result = self.predictor.step(
            terms, t0, t1, y0, args, solver_state, made_jump
        )
        t_next = -t1
        term = unwrap_term(terms)
        if self.constraint is not None:
            x = self.constraint(x, t_next, 0)
        if not isinstance(self.corrector, NoneCorrector):
            for j in range(self.n_corrector_steps):
                x = self.corrector.correct(term, x, t_next, term.noise(t_next, x, 1 + j))
                if self.constraint is not None:
                    x = self.constraint(x, t_next, 1 + j)
        return x, None, dict(y0=y0, y1=x), solver_state, result

    def func(self, terms, t0, y0, args):
        return self.predictor.func(terms, t0, y0, args)


def resolve_predictor(predictor: str | diffrax.AbstractSolver) -> diffrax.AbstractSolver:
    """A predictor object from its name (``PREDICTOR_NAMES``) or the object itself."""
    if isinstance(predictor, diffrax.AbstractSolver):
        return predictor
    if predictor == "euler_maruyama":
        return EulerMaruyamaPredictor()
    if predictor == "reverse_diffusion":
        return ReverseDiffusionPredictor()
    if predictor == "ancestral":
        return AncestralSamplingPredictor()
    if predictor == "none" or predictor is None:
        return NonePredictor()
    raise ValueError(
        f"predictor must be one of {PREDICTOR_NAMES} or a diffrax solver (e.g. "
        f"sd.EulerMaruyamaPredictor()), got predictor={predictor!r}."
    )


def resolve_corrector(corrector: str | AbstractCorrector, snr: float) -> AbstractCorrector:
    """A corrector object from its name (``CORRECTOR_NAMES``, using ``snr``) or the object."""
    if isinstance(corrector, AbstractCorrector):
        return corrector
    if corrector == "langevin":
        return LangevinCorrector(snr=snr)
    if corrector == "ald":
        return AnnealedLangevinCorrector(snr=snr)
    if corrector == "none" or corrector is None:
        return NoneCorrector()
    raise ValueError(
        f"corrector must be one of {CORRECTOR_NAMES} or an AbstractCorrector (e.g. "
        f"sd.LangevinCorrector(snr=0.16)), got corrector={corrector!r}."
    )


def check_num_steps(num_steps, sde: SDE, where: str) -> int:
    """``sde.N`` when ``num_steps`` is None; else checks it is an integer >= 2."""
    if num_steps is None:
        num_steps = sde.N
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(
            f"{where}: num_steps must be an integer >= 2 (grid points from T to eps), "
            f"got num_steps={num_steps!r}."
        )
    return num_steps


def check_eps(eps, sde: SDE, where: str) -> None:
    """Checks ``0 < eps < T`` when ``eps`` is concrete."""
    if is_concrete_number(eps) and not 0.0 < float(eps) < sde.T:
        raise ValueError(f"{where}: eps must satisfy 0 < eps < T={sde.T}, got eps={eps!r}.")


def check_shape(shape, where: str) -> tuple[int, ...]:
    """The batch shape as a tuple of positive ints ``(B, *dims)``."""
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"{where}: shape must be a sequence of ints, got {shape!r}.") from None
    if len(shape) < 1 or any(s < 1 for s in shape):
        raise ValueError(f"{where}: shape must be (B, *dims) with positive sizes, got {shape}.")
    return shape


def sde_on_grid(sde: SDE, num_steps: int) -> SDE:
    """``sde`` whose discrete schedule (``N``) has ``num_steps`` levels, matching the grid."""
    if num_steps == sde.N:
        return sde
    if not dataclasses.is_dataclass(sde):
        raise ValueError(
            f"num_steps={num_steps} differs from sde.N={sde.N}, and {type(sde).__name__} is "
            "not a dataclass whose N can be replaced; pass num_steps=None or make the SDE "
            "a flax.struct dataclass."
        )
    return dataclasses.replace(sde, N=num_steps)


def reverse_time_grid(sde: SDE, num_steps: int, eps, dtype) -> jax.Array:
    """The reversed clock ``-linspace(T, eps, num_steps)``, increasing from ``-T`` to ``-eps``."""
    return -jnp.linspace(sde.T, eps, num_steps, dtype=dtype)


def run_pc(
    key: jax.Array,
    sde: SDE,
    score_fn: ScoreFn,
    x_T: jax.Array,
    solver: PredictorCorrector,
    num_steps: int,
    eps,
    probability_flow: bool,
) -> jax.Array:
    """Runs ``solver`` over the grid from ``x_T`` at ``T`` to ``eps``; returns ``x_eps``."""
    term = ReverseSDETerm(
        sde=sde,
        score_fn=score_fn,
        key=key,
        shape=x_T.shape,
        dtype=x_T.dtype,
        probability_flow=probability_flow,
    )
    ts = reverse_time_grid(sde, num_steps, eps, x_T.dtype)
    sol = diffrax.diffeqsolve(
        term,
        solver,
        t0=ts[0],
        t1=ts[-1],
        dt0=None,
        y0=x_T,
        stepsize_controller=diffrax.StepTo(ts=ts),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=num_steps - 1,
        adjoint=diffrax.ForwardMode(),
    )
    return sol.ys[0]


@eqx.filter_jit
def sample_pc(
    key: jax.Array,
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int],
    predictor: str | diffrax.AbstractSolver = "reverse_diffusion",
    corrector: str | AbstractCorrector = "langevin",
    snr: float = DEFAULT_SNR,
    n_corrector_steps: int = 1,
    num_steps: int | None = None,
    eps: float = DEFAULT_EPS,
    denoise: bool = True,
    probability_flow: bool = False,
) -> tuple[jax.Array, jax.Array]:
    r"""Predictor-corrector sampling from the prior at ``T`` down to ``eps``.

    Each of the ``num_steps - 1`` steps of the grid ``linspace(T, eps, num_steps)`` is one
    predictor step and ``n_corrector_steps`` corrector steps; ``denoise`` adds one Tweedie
    step at ``eps``. Jitted (``equinox.filter_jit``): strings, ints and the function
    ``score_fn`` are static; to pass network weights as traced arguments rather than
    compile-time constants, give ``score_fn`` as a ``jax.tree_util.Partial`` or an
    ``equinox.Module``.

    Args:
      key: PRNG key.
      sde: the forward SDE.
      score_fn: ``score_fn(x, t)`` with ``x: (B, *dims)``, ``t: (B,)``.
      shape: ``(B, *dims)``.
      predictor: ``"euler_maruyama"``, ``"reverse_diffusion"``, ``"ancestral"``,
        ``"none"``, or a predictor object (any diffrax solver on a :class:`ReverseSDETerm`).
      corrector: ``"langevin"``, ``"ald"``, ``"none"``, or an ``AbstractCorrector``.
      snr: signal-to-noise ratio of a corrector given by name.
      n_corrector_steps: corrector steps per predictor step.
      num_steps: grid points from ``T`` to ``eps``; ``None`` means ``sde.N``.
      eps: the last time of the grid.
      denoise: end with Tweedie's denoising step at ``eps``.
      probability_flow: make the Euler-Maruyama and reverse-diffusion predictors follow
        the probability-flow ODE (deterministic predictor).

    Returns:
      ``(x, nfe)``: samples of ``shape`` and the number of score evaluations made (int32).

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> gm = sd.GaussianMixture.isotropic(jnp.array([0.5, 0.5]),
      ...                                   jnp.array([[-2.0, 0.0], [2.0, 0.0]]), 0.2)
      >>> sde = sd.VPSDE(N=100)
      >>> x, nfe = sd.sample_pc(jax.random.key(0), sde, gm.score_fn(sde), (256, 2))
      >>> x.shape, int(nfe)   # 99 steps x (predictor + corrector) + denoising
      ((256, 2), 199)

    Reference: Song et al., ICLR 2021, Section 4.2 and Algorithms 2-3.
    """
    shape = check_shape(shape, "sample_pc")
    num_steps = check_num_steps(num_steps, sde, "sample_pc")
    check_eps(eps, sde, "sample_pc")
    solver = PredictorCorrector(
        resolve_predictor(predictor), resolve_corrector(corrector, snr), n_corrector_steps
    )
    sde = sde_on_grid(sde, num_steps)
    counter = CallCounter()
    score = counter.wrap(score_fn)
    key_prior, key_noise = jax.random.split(key)
    x = sde.prior_sampling(key_prior, shape)
    x = run_pc(key_noise, sde, score, x, solver, num_steps, eps, probability_flow)
    if denoise:
        x = tweedie_denoise(sde, score, x, eps)
    return x, counter.value
