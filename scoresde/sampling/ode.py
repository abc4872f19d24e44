r"""The probability-flow ODE: sampling (decoding), encoding, and a counted ODE solve.

.. math::
    \frac{dx}{dt} = f(x, t) - \tfrac12 g(t)^2\,\nabla_x \log p_t(x)

shares its marginals :math:`p_t` with the forward SDE, so integrating it from ``T`` to
``eps`` turns prior samples into data samples (:func:`sample_ode`), and from ``eps`` to
``T`` turns data into latents (:func:`solve_probability_flow` with ``t0 < t1``). Both run
with any diffrax ODE solver and step-size controller, on the device, under ``jit``;
diffrax integrates backwards in time natively when ``t0 > t1``.

Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential
Equations", ICLR 2021, Section 4.3 and Appendix D.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde.sampling._count import CallCounter
from scoresde.sampling.base import batch_time
from scoresde.sampling.denoise import tweedie_denoise
from scoresde.sampling.pc import DEFAULT_EPS, check_eps, check_shape
from scoresde.sde import SDE, ScoreFn

#: Default relative and absolute tolerances of the adaptive ODE solve (the paper's 1e-5).
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-5
#: Default cap on the number of (accepted or rejected) adaptive steps.
DEFAULT_MAX_STEPS = 16384


def solve_ode(
    vector_field: Callable[[jax.Array, Any], Any],
    y0: Any,
    t0,
    t1,
    *,
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    dt0=None,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> tuple[Any, jax.Array]:
    r"""Solves :math:`dy/dt = F(t, y)` from ``t0`` to ``t1`` and counts the evaluations of ``F``.

    The default is Tsit5 with a PID controller at ``rtol``/``atol`` and diffrax's initial
    step selection. The count is made at run time (every executed evaluation, including
    rejected steps and the initial step selection), so it is exact for any solver.

    Args:
      vector_field: ``F(t, y)`` with a scalar ``t``; ``y`` any PyTree of arrays.
      y0: the initial state at ``t0``.
      t0: start time; ``t0 > t1`` integrates backwards.
      t1: end time.
      solver: a diffrax ODE solver (default ``diffrax.Tsit5()``).
      stepsize_controller: a diffrax step-size controller (default
        ``diffrax.PIDController(rtol=rtol, atol=atol)``).
      rtol: relative tolerance of the default controller.
      atol: absolute tolerance of the default controller.
      dt0: initial step; ``None`` lets an adaptive controller choose it. Required by
        ``diffrax.ConstantStepSize``.
      max_steps: the most steps diffrax may take.

    Returns:
      ``(y1, nfe)``: the state at ``t1`` and the number of evaluations of ``F`` (int32).

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> y1, nfe = sd.sampling.solve_ode(lambda t, y: -y, jnp.ones(2), 0.0, 1.0)
      >>> bool(jnp.allclose(y1, jnp.exp(-1.0), rtol=1e-4)), int(nfe) > 0
      (True, True)
    """
    if max_steps < 1:
        raise ValueError(f"solve_ode: max_steps must be >= 1, got max_steps={max_steps!r}.")
    return _solve_ode(
        vector_field, y0, t0, t1, solver, stepsize_controller, rtol, atol, dt0, max_steps
    )


@eqx.filter_jit
def _solve_ode(vector_field, y0, t0, t1, solver, controller, rtol, atol, dt0, max_steps):
    counter = CallCounter()
    counted = counter.wrap(vector_field)
    term = diffrax.ODETerm(lambda t, y, args: counted(t, y))
    solver = diffrax.Tsit5() if solver is None else solver
    if controller is None:
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
    sol = diffrax.diffeqsolve(
        term,
        solver,
        t0=t0,
        t1=t1,
        dt0=dt0,
        y0=y0,
        stepsize_controller=controller,
        saveat=diffrax.SaveAt(t1=True),
        max_steps=max_steps,
        adjoint=diffrax.ForwardMode(),
    )
    return jax.tree.map(lambda y: y[0], sol.ys), counter.value


def probability_flow_drift(sde: SDE, score_fn: ScoreFn) -> Callable[[jax.Array, jax.Array], Any]:
    r"""The probability-flow vector field ``F(t, x) = f(x, t) - g(t)^2 s(x, t) / 2``, scalar ``t``.

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> F = sd.sampling.probability_flow_drift(sd.VESDE(), lambda x, t: -x)
      >>> F(0.5, jnp.ones((2, 3))).shape
      (2, 3)
    """
    reverse = sde.reverse(score_fn, probability_flow=True)

    def vector_field(t, x):
        return reverse.sde(x, batch_time(x, t))[0]

    return vector_field


def solve_probability_flow(
    sde: SDE,
    score_fn: ScoreFn,
    x: jax.Array,
    t0,
    t1,
    *,
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    dt0=None,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> tuple[jax.Array, jax.Array]:
    r"""Integrates the probability-flow ODE from ``t0`` to ``t1`` (either direction).

    ``t0 < t1`` encodes (data at ``eps`` to latents at ``T``); ``t0 > t1`` decodes. The two
    are inverse maps up to the solver tolerance.

    Args:
      sde: the forward SDE.
      score_fn: ``score_fn(x, t)``.
      x: the state ``(B, *dims)`` at ``t0``.
      t0: start time.
      t1: end time.
      solver, stepsize_controller, rtol, atol, dt0, max_steps: as :func:`solve_ode`.

    Returns:
      ``(x1, nfe)``: the state at ``t1`` and the number of score evaluations.

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> sde = sd.VPSDE()
      >>> gm = sd.GaussianMixture.isotropic(jnp.array([1.0]), jnp.zeros((1, 2)), 1.0)
      >>> x = jnp.ones((3, 2))   # N(0, I) data is stationary under VP: the flow is the identity
      >>> z, nfe = sd.sampling.solve_probability_flow(sde, gm.score_fn(sde), x, 1e-3, 1.0)
      >>> bool(jnp.allclose(z, x, atol=1e-4))
      True
    """
    return solve_ode(
        probability_flow_drift(sde, score_fn),
        x,
        t0,
        t1,
        solver=solver,
        stepsize_controller=stepsize_controller,
        rtol=rtol,
        atol=atol,
        dt0=dt0,
        max_steps=max_steps,
    )


@eqx.filter_jit
def sample_ode(
    key: jax.Array,
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int],
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    eps: float = DEFAULT_EPS,
    denoise: bool = False,
    z: jax.Array | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    dt0=None,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> tuple[jax.Array, jax.Array]:
    r"""Samples by integrating the probability-flow ODE from ``T`` to ``eps``.

    Adaptive Tsit5 with a PID controller by default; any diffrax ODE solver and controller
    may be passed. ``z`` decodes given latents instead of prior draws (``key`` is then not
    used).

    Args:
      key: PRNG key for the prior draw.
      sde: the forward SDE.
      score_fn: ``score_fn(x, t)``.
      shape: ``(B, *dims)``; must equal ``z.shape`` when ``z`` is given.
      solver: a diffrax ODE solver (default ``diffrax.Tsit5()``).
      rtol: relative tolerance of the default controller.
      atol: absolute tolerance of the default controller.
      eps: the end time.
      denoise: end with Tweedie's denoising step at ``eps``.
      z: latents at ``T`` to decode, shape ``shape``.
      stepsize_controller, dt0, max_steps: as :func:`solve_ode`.

    Returns:
      ``(x, nfe)``: samples and the number of score evaluations (including denoising).

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> gm = sd.GaussianMixture.isotropic(jnp.array([0.5, 0.5]),
      ...                                   jnp.array([[-2.0, 0.0], [2.0, 0.0]]), 0.2)
      >>> sde = sd.VPSDE()
      >>> x, nfe = sd.sample_ode(jax.random.key(0), sde, gm.score_fn(sde), (64, 2))
      >>> x.shape
      (64, 2)
    """
    shape = check_shape(shape, "sample_ode")
    check_eps(eps, sde, "sample_ode")
    if z is None:
        x = sde.prior_sampling(key, shape)
    else:
        if tuple(z.shape) != shape:
            raise ValueError(
                f"sample_ode: z must have the sampling shape {shape}, got z of shape {z.shape}."
            )
        x = z
    x, nfe = solve_probability_flow(
        sde,
        score_fn,
        x,
        jnp.asarray(sde.T, x.dtype),
        jnp.asarray(eps, x.dtype),
        solver=solver,
        stepsize_controller=stepsize_controller,
        rtol=rtol,
        atol=atol,
        dt0=dt0,
        max_steps=max_steps,
    )
    if denoise:
        x = tweedie_denoise(sde, score_fn, x, eps)
        nfe = nfe + 1
    return x, nfe
