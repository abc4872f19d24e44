r"""Sampling the reverse-time SDE with any diffrax SDE solver.

In the reversed clock :math:`\tau = -t` (see :mod:`scoresde.sampling.base`) the reverse-time
SDE is the forward-in-:math:`\tau` Itô SDE with additive, diagonal noise

.. math::
    dx = -\big[f(x, -\tau) - g(-\tau)^2\,s(x, -\tau)\big]\,d\tau + g(-\tau)\,dW_\tau,

given to diffrax as ``MultiTerm(ODETerm(drift), DiagonalNoiseTerm(g, brownian))``.

Brownian motion: on the fixed grid ``linspace(T, eps, num_steps)`` (the default) the
increments come from ``diffrax.UnsafeBrownianPath``, which draws fresh normals per step from
a key folded with the step's end points — the same cost as a hand-written loop (see
``experiments/benchmarks/sampler_scan_vs_diffrax.py``). With an adaptive step-size controller
a ``diffrax.VirtualBrownianTree`` gives increments that stay consistent when steps are
rejected and retried.

Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential
Equations", ICLR 2021, Section 4.1; Kidger, "On Neural Differential Equations", 2021 (diffrax).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde._utils import batch_broadcast
from scoresde.sampling._count import CallCounter
from scoresde.sampling.base import batch_time
from scoresde.sampling.denoise import tweedie_denoise
from scoresde.sampling.pc import (
    DEFAULT_EPS,
    check_eps,
    check_num_steps,
    check_shape,
    reverse_time_grid,
)
from scoresde.sde import SDE, ScoreFn

#: Tolerance of the Virtual Brownian Tree, as a fraction of the grid spacing.
BROWNIAN_TOL_FRACTION = 1e-2

_CONCRETE_LEVY_AREAS = (
    diffrax.BrownianIncrement,
    diffrax.SpaceTimeLevyArea,
    diffrax.SpaceTimeTimeLevyArea,
)


class DiagonalNoiseTerm(diffrax.AbstractTerm):
    r"""A noise term :math:`g(t, y) \odot dW_t` with a diffusion shaped like the state.

    Attributes:
      diffusion: ``diffusion(t, y, args)`` returning an array shaped like ``y``.
      path: the Brownian path (or any ``diffrax.AbstractPath``) shaped like ``y``.

    Example:
      >>> import jax, jax.numpy as jnp, diffrax, scoresde as sd
      >>> bm = diffrax.UnsafeBrownianPath(shape=(2,), key=jax.random.key(0))
      >>> term = sd.sampling.DiagonalNoiseTerm(lambda t, y, args: 2.0 * jnp.ones_like(y), bm)
      >>> term.vf_prod(0.0, jnp.zeros(2), None, jnp.ones(2))
      Array([2., 2.], dtype=float32)
    """

    diffusion: Callable
    path: diffrax.AbstractPath

    def vf(self, t, y, args):
        return self.diffusion(t, y, args)

    def contr(self, t0, t1, **kwargs):
        return self.path.evaluate(t0, t1, **kwargs)

    def prod(self, vf, control):
        return vf * control


def _levy_area_for(solver: diffrax.AbstractSolver) -> type:
    while isinstance(solver, diffrax.AbstractWrappedSolver):  # e.g. diffrax.HalfSolver
        solver = solver.solver
    minimal = getattr(solver, "minimal_levy_area", diffrax.BrownianIncrement)
    for levy in _CONCRETE_LEVY_AREAS:
        if issubclass(levy, minimal):
            return levy
    raise ValueError(
        f"sample_sde: solver {type(solver).__name__} needs Levy area {minimal.__name__}, which "
        "no diffrax Brownian path provides."
    )


def reverse_sde_terms(sde: SDE, score_fn: ScoreFn, path: diffrax.AbstractPath) -> diffrax.MultiTerm:
    r"""The reverse-time SDE in the clock :math:`\tau = -t` as diffrax terms.

    Args:
      sde: the forward SDE.
      score_fn: ``score_fn(x, t)``.
      path: Brownian path on :math:`[-T, -\epsilon]` shaped like the samples.

    Returns:
      ``MultiTerm(ODETerm(drift), DiagonalNoiseTerm(diffusion, path))``.

    Example:
      >>> import jax, jax.numpy as jnp, diffrax, scoresde as sd
      >>> bm = diffrax.UnsafeBrownianPath(shape=(4, 2), key=jax.random.key(0))
      >>> terms = sd.sampling.reverse_sde_terms(sd.VPSDE(), lambda x, t: -x, bm)
      >>> sol = diffrax.diffeqsolve(terms, diffrax.Euler(), -1.0, -1e-3, 0.01, jnp.ones((4, 2)),
      ...                           adjoint=diffrax.ForwardMode())
      >>> sol.ys.shape
      (1, 4, 2)
    """
    reverse = sde.reverse(score_fn)

    def drift(tau, x, args):
        return -reverse.sde(x, batch_time(x, -tau))[0]

    def diffusion(tau, x, args):
        g = sde.sde(x, batch_time(x, -tau))[1]
        return jnp.broadcast_to(batch_broadcast(g, x), x.shape)

    return diffrax.MultiTerm(diffrax.ODETerm(drift), DiagonalNoiseTerm(diffusion, path))


@eqx.filter_jit
def sample_sde(
    key: jax.Array,
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int],
    solver: diffrax.AbstractSolver | None = None,
    num_steps: int | None = None,
    eps: float = DEFAULT_EPS,
    denoise: bool = True,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    brownian_tol: float | None = None,
    max_steps: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""Samples by integrating the reverse-time SDE from ``T`` to ``eps`` with a diffrax solver.

    Fixed steps (default): the grid ``linspace(T, eps, num_steps)`` through
    ``diffrax.StepTo``, noise from ``diffrax.UnsafeBrownianPath``. With an adaptive
    ``stepsize_controller`` (e.g. ``diffrax.PIDController`` with a solver that estimates
    its error, such as ``diffrax.SPaRK()``) the first step is the grid
    spacing and the noise comes from a ``diffrax.VirtualBrownianTree`` with tolerance
    ``brownian_tol`` (default: 1% of the grid spacing).

    Args:
      key: PRNG key.
      sde: the forward SDE.
      score_fn: ``score_fn(x, t)``.
      shape: ``(B, *dims)``.
      solver: a diffrax SDE solver (default ``diffrax.Euler()``, i.e. Euler-Maruyama).
      num_steps: grid points from ``T`` to ``eps`` (``None``: ``sde.N``).
      eps: the end time.
      denoise: end with Tweedie's denoising step at ``eps``.
      stepsize_controller: ``None`` for the fixed grid, or an adaptive controller.
      brownian_tol: tolerance of the Virtual Brownian Tree (adaptive steps only).
      max_steps: step cap for adaptive steps (default ``16 * num_steps``).

    Returns:
      ``(x, nfe)``: samples and the number of score evaluations (counted at run time).

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> gm = sd.GaussianMixture.isotropic(jnp.array([0.5, 0.5]),
      ...                                   jnp.array([[-2.0, 0.0], [2.0, 0.0]]), 0.2)
      >>> sde = sd.VESDE(sigma_max=10.0, N=100)
      >>> x, nfe = sd.sample_sde(jax.random.key(0), sde, gm.score_fn(sde), (64, 2))
      >>> int(nfe)   # 99 Euler-Maruyama steps + denoising
      100
    """
    shape = check_shape(shape, "sample_sde")
    num_steps = check_num_steps(num_steps, sde, "sample_sde")
    check_eps(eps, sde, "sample_sde")
    solver = diffrax.Euler() if solver is None else solver
    key_prior, key_bm = jax.random.split(key)
    x = sde.prior_sampling(key_prior, shape)
    ts = reverse_time_grid(sde, num_steps, eps, x.dtype)
    levy_area = _levy_area_for(solver)
    noise_shape = jax.ShapeDtypeStruct(shape, x.dtype)
    if stepsize_controller is None:
        path = diffrax.UnsafeBrownianPath(shape=noise_shape, key=key_bm, levy_area=levy_area)
        controller, dt0, steps_cap = diffrax.StepTo(ts=ts), None, num_steps - 1
    else:
        spacing = (sde.T - eps) / (num_steps - 1)
        tol = BROWNIAN_TOL_FRACTION * spacing if brownian_tol is None else brownian_tol
        path = diffrax.VirtualBrownianTree(
            ts[0], ts[-1], tol=tol, shape=noise_shape, key=key_bm, levy_area=levy_area
        )
        controller, dt0 = stepsize_controller, spacing
        steps_cap = 16 * num_steps if max_steps is None else max_steps
    counter = CallCounter()
    score = counter.wrap(score_fn)
    sol = diffrax.diffeqsolve(
        reverse_sde_terms(sde, score, path),
        solver,
        t0=ts[0],
        t1=ts[-1],
        dt0=dt0,
        y0=x,
        stepsize_controller=controller,
        saveat=diffrax.SaveAt(t1=True),
        max_steps=steps_cap,
        adjoint=diffrax.ForwardMode(),
    )
    x = sol.ys[0]
    if denoise:
        x = tweedie_denoise(sde, score, x, eps)
    return x, counter.value
