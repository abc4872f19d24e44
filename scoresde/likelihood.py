"""Exact likelihoods through the probability-flow ODE: log-density, bits/dim, and the encoder.

Every SDE of this library has a deterministic probability-flow ODE whose marginals are the
SDE's marginals :math:`p_t`:

.. math::
    \\frac{dx}{dt} = \\tilde f(x, t) = f(x, t) - \\tfrac12 g(t)^2 \\nabla_x \\log p_t(x).

Along a solution, :math:`\\frac{d}{dt}\\log p_t(x(t)) = -\\nabla\\cdot\\tilde f(x(t), t)`, so
integrating the ODE augmented with the divergence from :math:`\\epsilon` to :math:`T` gives

.. math::
    \\log p_\\epsilon(x) = \\log p_T(z) + \\int_\\epsilon^T \\nabla\\cdot\\tilde f(x(t), t)\\,dt,
    \\qquad z = x(T),

with :math:`p_T` replaced by the SDE's prior. The divergence is either exact (the trace of the
Jacobian, ``D`` forward-mode products; for low dimensions) or the Hutchinson-Skilling estimate
:math:`\\mathbb E_v[v^\\top \\partial_x\\tilde f\\, v]` with Rademacher or Gaussian probes ``v``,
one Jacobian-vector product (:func:`jax.jvp`: one forward pass carrying a tangent) per
evaluation.

Everything runs on the device through :func:`diffrax.diffeqsolve` under ``jit``; the default
solver is Dormand-Prince 5(4) (:class:`diffrax.Dopri5`, the tableau of scipy's ``RK45`` that
the reference uses) with an adaptive step-size controller (:class:`diffrax.PIDController`).

**One solve per sample.** By default (``per_sample=True``) each sample gets its own adaptive
solve: the batched solve is ``jax.vmap`` of a batch-of-one solve, so every sample's step sizes,
error control and result depend on that sample only, not on which other images share its
batch, on padding, or on how the batch is split over devices. The vmapped loop runs until its
slowest sample is done (the finished ones are masked), so a batch costs as many network
evaluations as its hardest sample needs. ``per_sample=False`` instead solves the whole batch as
one ODE state, as the reference does with scipy: one step-size sequence, error measured as the
RMS over all samples. That takes at most as many steps as the per-sample solve of the hardest
sample, but each result then depends on its batch mates. See ``docs/benchmarks.md`` and
``experiments/benchmarks/likelihood_bench.py --compare-solves`` for measured differences.

Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential
Equations", ICLR 2021, Sec. 4.3 and App. D.2; Grathwohl et al., "FFJORD", ICLR 2019 (the
augmented ODE); Hutchinson (1989) and Skilling (1989) (the trace estimator).
"""

from __future__ import annotations

import math
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from scoresde._utils import is_concrete_number
from scoresde.sde import SDE, ScoreFn

#: Divergence estimators accepted by :func:`log_likelihood`.
DIVERGENCES = ("rademacher", "gaussian", "exact")
#: Default lower integration limit (the reference's likelihood ``eps``).
DEFAULT_EPS = 1e-5
#: Default relative and absolute tolerances of the adaptive solver (the reference's).
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-5
#: Default cap on the number of solver steps (accepted + rejected) of one solve.
DEFAULT_MAX_STEPS = 16_384
#: Number of levels of an 8-bit pixel.
PIXEL_LEVELS = 256
#: Largest 8-bit pixel value; undequantized images are scaled by it (the reference's ``k / 255``).
PIXEL_MAX = 255


# --------------------------------------------------------------------------------------------
# Validation helpers


def _check_sde(sde) -> None:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE (VPSDE, SubVPSDE, VESDE), got {sde!r}.")


def _check_x(x, name: str = "x") -> None:
    if np.ndim(x) < 2:
        raise ValueError(
            f"{name} must be batched with shape (B, *dims) and at least one data axis, "
            f"got shape {np.shape(x)}."
        )
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {jnp.result_type(x)}.")


def _check_tolerances(rtol, atol, eps, T: float, max_steps) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not is_concrete_number(value) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {name}={value!r}.")
    if not is_concrete_number(eps) or not 0 < float(eps) < T:
        raise ValueError(
            f"eps must be a number with 0 < eps < T={T} (the lower integration limit), "
            f"got eps={eps!r}."
        )
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got max_steps={max_steps!r}.")


def _check_divergence(divergence) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got divergence={divergence!r}.")


def _check_solver(solver) -> None:
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(
            "solver must be a diffrax ODE solver instance such as diffrax.Dopri5() or "
            f"diffrax.Tsit5(), got {solver!r}."
        )


def _probes(key, divergence: str, shape, dtype, n_probes: int, noise) -> jax.Array | None:
    """Probe vectors of shape ``(n_probes, *shape)``: the given ``noise`` or fresh draws."""
    if divergence == "exact":
        if noise is not None:
            raise ValueError(
                "noise (Hutchinson probe vectors) is only used with divergence='rademacher' or "
                "'gaussian'; pass noise=None with divergence='exact'."
            )
        return None
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be an integer >= 1, got n_probes={n_probes!r}.")
    if noise is not None:
        noise_shape = tuple(np.shape(noise))
        if noise_shape == tuple(shape) and n_probes == 1:
            return jnp.asarray(noise, dtype)[None]
        if noise_shape == (n_probes, *shape):
            return jnp.asarray(noise, dtype)
        allowed = f"{tuple(shape)} (one probe per sample)" if n_probes == 1 else ""
        allowed = allowed + (" or " if allowed else "") + f"{(n_probes, *shape)}"
        raise ValueError(
            f"noise must have shape {allowed} for x of shape {tuple(shape)} and "
            f"n_probes={n_probes}, got noise of shape {noise_shape}."
        )
    if key is None:
        raise ValueError(
            f"key is required to draw the probe vectors of divergence={divergence!r}; pass a "
            "jax.random key, or the probes themselves as noise=..."
        )
    full = (n_probes, *shape)
    if divergence == "rademacher":
        return jax.random.rademacher(key, full, dtype=dtype)
    return jax.random.normal(key, full, dtype=dtype)


# --------------------------------------------------------------------------------------------
# The ODE right-hand side


def _flow_drift_fn(sde: SDE, score_fn: ScoreFn, t: jax.Array):
    """``x -> f(x, t) - g(t)^2 score(x, t) / 2``, the probability-flow velocity at fixed ``t``."""
    rsde = sde.reverse(score_fn, probability_flow=True)

    def drift(x):
        return rsde.sde(x, t)[0]

    return drift


def _drift_and_divergence(drift_fn, x: jax.Array, probes: jax.Array | None):
    """Drift ``(B, *dims)`` and per-sample divergence ``(B,)`` of ``drift_fn`` at ``x``.

    Samples are assumed independent (the drift of sample ``i`` depends on ``x_i`` only), so one
    batched Jacobian-vector product gives every sample's own ``v_i^T J_ii v_i``.
    """
    batch = x.shape[0]
    dim = math.prod(x.shape[1:])
    axes = tuple(range(1, x.ndim))
    if probes is None:
        # Exact: tr J = sum_k e_k^T J e_k, the D basis directions pushed through one vmapped jvp.
        basis = jnp.eye(dim, dtype=x.dtype).reshape((dim, 1, *x.shape[1:]))
        basis = jnp.broadcast_to(basis, (dim, *x.shape))
        drift, jv = jax.vmap(lambda v: jax.jvp(drift_fn, (x,), (v,)), out_axes=(None, 0))(basis)
        jv = jv.reshape((dim, batch, dim))
        return drift, jnp.einsum("kbk->b", jv)
    drift, jv = jax.vmap(lambda v: jax.jvp(drift_fn, (x,), (v,)), out_axes=(None, 0))(probes)
    estimates = jnp.sum(probes * jv, axis=tuple(a + 1 for a in axes))  # (n_probes, B)
    return drift, jnp.mean(estimates, axis=0)


def drift_and_divergence(
    sde: SDE,
    score_fn: ScoreFn,
    x: jax.Array,
    t: jax.Array,
    divergence: str = "rademacher",
    noise: jax.Array | None = None,
    key: jax.Array | None = None,
    n_probes: int = 1,
) -> tuple[jax.Array, jax.Array]:
    r"""Right-hand side of the augmented probability-flow ODE: the drift and its divergence.

    .. math::
        \tilde f(x, t) = f(x, t) - \tfrac12 g(t)^2 s(x, t),\qquad
        \nabla\cdot\tilde f \approx \frac1M\sum_{m=1}^M v_m^\top \partial_x\tilde f(x, t)\, v_m,

    with Rademacher or standard-normal probes :math:`v_m` (Hutchinson-Skilling, unbiased), or
    the exact trace of the Jacobian.

    Args:
      sde: the forward SDE.
      score_fn: ``score_fn(x, t)`` approximating :math:`\nabla_x \log p_t(x)`.
      x: points ``(B, *dims)``.
      t: times ``(B,)``.
      divergence: ``"rademacher"``, ``"gaussian"`` or ``"exact"``.
      noise: probe vectors shaped like ``x`` (or ``(n_probes, *x.shape)``); drawn from ``key``
        when None.
      key: PRNG key for the probes (unused with ``noise`` or ``divergence="exact"``).
      n_probes: number of probes averaged per sample.

    Returns:
      ``(drift, div)``: the drift shaped like ``x`` and the divergence, shape ``(B,)``.

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> sde = sd.VESDE()   # zero drift; with score -x/s^2 the divergence is D g^2 / (2 s^2)
      >>> x = jnp.ones((1, 3)); t = jnp.array([0.5])
      >>> _, div = sd.drift_and_divergence(sde, lambda x, t: -x, x, t, divergence="exact")
      >>> bool(jnp.allclose(div, 1.5 * sde.sde(x, t)[1] ** 2))
      True

    Reference: Song et al. 2021, Eq. (13) and App. D.2.
    """
    _check_sde(sde)
    _check_x(x)
    _check_divergence(divergence)
    if np.shape(t) != np.shape(x)[:1]:
        raise ValueError(f"t must have shape (B,) = {np.shape(x)[:1]}, got {np.shape(t)}.")
    probes = _probes(key, divergence, x.shape, x.dtype, n_probes, noise)
    t = jnp.asarray(t, x.dtype)
    return _drift_and_divergence(_flow_drift_fn(sde, score_fn, t), x, probes)


# --------------------------------------------------------------------------------------------
# Solves


def _evals_per_solve(solver, num_steps: jax.Array) -> jax.Array:
    """Vector-field evaluations of a diffrax solve that took ``num_steps`` steps.

    Exact for Euler and for explicit Runge-Kutta tableaus: FSAL ones evaluate the first stage
    once at the start and then reuse the last stage of an accepted step (a rejected step keeps
    its first stage). The controller's first step costs no evaluation (diffrax picks a fixed
    initial step for a wrapped term). For other (implicit) solvers this is a lower bound that
    ignores nonlinear-solver iterations.
    """
    if isinstance(solver, diffrax.Euler):
        return num_steps
    tableau = getattr(solver, "tableau", None)
    if isinstance(tableau, diffrax.ButcherTableau):
        if tableau.fsal:
            return 1 + num_steps * (tableau.num_stages - 1)
        return num_steps * tableau.num_stages
    return num_steps


def _make_controller(stepsize_controller, rtol, atol):
    if stepsize_controller is None:
        return diffrax.PIDController(rtol=rtol, atol=atol)
    if not isinstance(stepsize_controller, diffrax.AbstractStepSizeController):
        raise TypeError(
            "stepsize_controller must be a diffrax step-size controller such as "
            f"diffrax.PIDController(rtol=1e-5, atol=1e-5), got {stepsize_controller!r}."
        )
    return stepsize_controller


def _solve(vector_field, y0, eps, T, solver, controller, max_steps, dt0):
    """One diffrax solve of ``vector_field`` from ``eps`` to ``T``; returns ``(y(T), nfe)``."""
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        solver,
        t0=float(eps),
        t1=T,
        dt0=dt0,
        y0=y0,
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=controller,
        max_steps=max_steps,
    )
    y1 = jax.tree.map(lambda a: a[-1], sol.ys)
    nfe = _evals_per_solve(solver, sol.stats["num_steps"])
    return y1, nfe


def _likelihood_batch(sde, score_fn, x, probes, eps, solver, controller, max_steps, dt0):
    """Shared solve of a batch: returns ``(delta_logp (B,), z, nfe scalar)``."""

    def vector_field(t, y, args):
        del args
        xt, _ = y
        tt = jnp.full((xt.shape[0],), t, xt.dtype)
        return _drift_and_divergence(_flow_drift_fn(sde, score_fn, tt), xt, probes)

    y0 = (x, jnp.zeros((x.shape[0],), x.dtype))
    (z, delta_logp), nfe = _solve(vector_field, y0, eps, sde.T, solver, controller, max_steps, dt0)
    return delta_logp, z, nfe


def _encode_batch(sde, score_fn, x, eps, solver, controller, max_steps, dt0):
    def vector_field(t, xt, args):
        del args
        tt = jnp.full((xt.shape[0],), t, xt.dtype)
        return _flow_drift_fn(sde, score_fn, tt)(xt)

    return _solve(vector_field, x, eps, sde.T, solver, controller, max_steps, dt0)


def _per_sample(fn, x, probes):
    """``jax.vmap`` of ``fn`` over batch-of-one slices of ``x`` (and of ``probes``)."""
    if probes is None:
        return jax.vmap(lambda xi: fn(xi[None], None))(x)
    return jax.vmap(lambda xi, pi: fn(xi[None], pi[:, None]), in_axes=(0, 1))(x, probes)


def log_likelihood_per_sample_nfe(
    key: jax.Array | None,
    sde: SDE,
    score_fn: ScoreFn,
    x: jax.Array,
    divergence: str = "rademacher",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    eps: float = DEFAULT_EPS,
    solver: diffrax.AbstractSolver | None = None,
    noise: jax.Array | None = None,
    *,
    n_probes: int = 1,
    per_sample: bool = True,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    dt0: float | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`log_likelihood`, with the evaluation count of each sample's own solve ``(B,)``.

    With ``per_sample=False`` every entry is the shared solve's count.

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> x = jnp.array([[0.1, -0.2], [1.0, 0.5]])
      >>> logp, z, nfe = sd.likelihood.log_likelihood_per_sample_nfe(
      ...     None, sd.VPSDE(), lambda x, t: -x, x, divergence="exact")
      >>> nfe.shape
      (2,)
    """
    _check_sde(sde)
    _check_x(x)
    _check_divergence(divergence)
    _check_tolerances(rtol, atol, eps, sde.T, max_steps)
    solver = diffrax.Dopri5() if solver is None else solver
    _check_solver(solver)
    controller = _make_controller(stepsize_controller, rtol, atol)
    x = jnp.asarray(x)
    probes = _probes(key, divergence, x.shape, x.dtype, n_probes, noise)

    def solve(xb, pb):
        return _likelihood_batch(sde, score_fn, xb, pb, eps, solver, controller, max_steps, dt0)

    if per_sample:
        delta_logp, z, nfe = _per_sample(solve, x, probes)
        delta_logp, z = delta_logp[:, 0], z[:, 0]
    else:
        delta_logp, z, nfe = solve(x, probes)
        nfe = jnp.full((x.shape[0],), nfe)
    logp = sde.prior_logp(z) + delta_logp
    return logp, z, nfe


def log_likelihood(
    key: jax.Array | None,
    sde: SDE,
    score_fn: ScoreFn,
    x: jax.Array,
    divergence: str = "rademacher",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    eps: float = DEFAULT_EPS,
    solver: diffrax.AbstractSolver | None = None,
    noise: jax.Array | None = None,
    *,
    n_probes: int = 1,
    per_sample: bool = True,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    dt0: float | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Log-density of continuous data under the probability-flow ODE, in nats per sample.

    Solves the ODE augmented with the divergence from ``eps`` to ``T``,

    .. math::
        \frac{d}{dt}\begin{pmatrix}x\\ \delta\end{pmatrix} =
        \begin{pmatrix}\tilde f(x, t)\\ \nabla\cdot\tilde f(x, t)\end{pmatrix},\qquad
        \log p_\epsilon(x) \approx \log p_T^{\text{prior}}(z) + \delta(T),\quad z = x(T),

    where :math:`\tilde f = f - \tfrac12 g^2 s` (see :func:`drift_and_divergence`).

    Args:
      key: PRNG key for the Hutchinson probes; may be None with ``noise`` or
        ``divergence="exact"``.
      sde: the forward SDE (its ``prior_logp`` closes the formula).
      score_fn: ``score_fn(x, t)``; must treat samples independently (no batch statistics).
      x: data ``(B, *dims)`` in the model's space (e.g. dequantized and scaled images).
      divergence: ``"rademacher"`` or ``"gaussian"`` (Hutchinson-Skilling, one Jacobian-vector
        product per evaluation) or ``"exact"`` (``D`` products: low dimensions only).
      rtol: relative tolerance of the default step-size controller.
      atol: absolute tolerance of the default step-size controller.
      eps: lower integration limit, ``0 < eps < T``.
      solver: any diffrax ODE solver; default :class:`diffrax.Dopri5`.
      noise: the probe vectors, shaped like ``x`` (or ``(n_probes, *x.shape)``), for common
        random numbers; drawn from ``key`` when None.
      n_probes: number of probes averaged per sample and evaluation.
      per_sample: independent adaptive solve per sample (default) or one shared solve of the
        whole batch (as the reference); see the module docstring.
      stepsize_controller: a diffrax controller; default ``PIDController(rtol, atol)``.
      max_steps: cap on the number of steps; exceeding it raises an error.
      dt0: initial step; None lets the controller pick it.

    Returns:
      ``(logp, z, nfe)``: ``logp`` ``(B,)`` in nats; ``z`` the latent ``x(T)`` shaped like
      ``x``; ``nfe`` the number of drift evaluations made on the batch (for per-sample
      solves, those of the slowest sample: the vmapped loop runs that long). One evaluation
      is one forward pass of ``score_fn`` with a tangent.

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> gm = sd.GaussianMixture.isotropic(jnp.ones(1), jnp.zeros((1, 2)), 1.0)
      >>> sde = sd.VPSDE()   # N(0, I) data is stationary under VP: log p = prior log p
      >>> x = jnp.array([[0.3, -1.0]])
      >>> logp, z, nfe = sd.log_likelihood(None, sde, gm.score_fn(sde), x, divergence="exact")
      >>> bool(jnp.allclose(logp, gm.log_prob(x), atol=1e-4))
      True

    Reference: Song et al. 2021, Sec. 4.3, Eq. (13) and App. D.2.
    """
    logp, z, nfe = log_likelihood_per_sample_nfe(
        key,
        sde,
        score_fn,
        x,
        divergence,
        rtol,
        atol,
        eps,
        solver,
        noise,
        n_probes=n_probes,
        per_sample=per_sample,
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
        dt0=dt0,
    )
    return logp, z, jnp.max(nfe)


def encode(
    sde: SDE,
    score_fn: ScoreFn,
    x: jax.Array,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    eps: float = DEFAULT_EPS,
    solver: diffrax.AbstractSolver | None = None,
    *,
    per_sample: bool = True,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    dt0: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""Encodes data into latents, :math:`z = x(T)`, along the probability-flow ODE.

    The same solve as :func:`log_likelihood` without the divergence (cheaper). Decode with
    ``sample_ode(..., z=z)``, which integrates the same ODE from ``T`` back to ``eps``.

    Args:
      sde: the forward SDE.
      score_fn: ``score_fn(x, t)``.
      x: data ``(B, *dims)`` in the model's space.
      rtol: relative tolerance of the default step-size controller.
      atol: absolute tolerance of the default step-size controller.
      eps: lower integration limit, ``0 < eps < T``.
      solver: any diffrax ODE solver; default :class:`diffrax.Dopri5`.
      per_sample: independent solve per sample (default) or one shared solve.
      stepsize_controller: a diffrax controller; default ``PIDController(rtol, atol)``.
      max_steps: cap on the number of steps.
      dt0: initial step; None lets the controller pick it.

    Returns:
      ``(z, nfe)``: latents shaped like ``x`` and the number of drift evaluations.

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> sde = sd.VPSDE()   # N(0, I) is stationary under VP and the flow is the identity
      >>> z, nfe = sd.encode(sde, lambda x, t: -x, jnp.array([[0.5, -1.0]]))
      >>> bool(jnp.allclose(z, jnp.array([[0.5, -1.0]]), atol=1e-5))
      True

    Reference: Song et al. 2021, Sec. 4.3 ("uniquely identifiable encoding").
    """
    _check_sde(sde)
    _check_x(x)
    _check_tolerances(rtol, atol, eps, sde.T, max_steps)
    solver = diffrax.Dopri5() if solver is None else solver
    _check_solver(solver)
    controller = _make_controller(stepsize_controller, rtol, atol)
    x = jnp.asarray(x)

    def solve(xb, _):
        return _encode_batch(sde, score_fn, xb, eps, solver, controller, max_steps, dt0)

    if per_sample:
        z, nfe = _per_sample(solve, x, None)
        return z[:, 0], jnp.max(nfe)
    return solve(x, None)


# --------------------------------------------------------------------------------------------
# Bits per dimension of 8-bit images


def _check_images(images) -> None:
    if isinstance(images, jax.core.Tracer):
        if images.dtype != jnp.uint8:
            raise ValueError(
                "images must be uint8 (8-bit pixel values in [0, 255]); under jit only a uint8 "
                f"array can be checked, got a traced array of dtype {images.dtype}."
            )
    else:
        arr = np.asarray(images)
        if arr.dtype != np.uint8:
            if arr.dtype == bool or not (
                np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
            ):
                raise ValueError(f"images must be uint8-valued in [0, 255], got dtype {arr.dtype}.")
            finite = np.all(np.isfinite(arr))
            if not finite or np.any(arr != np.round(arr)) or arr.min() < 0 or arr.max() > 255:
                raise ValueError(
                    "images must hold 8-bit pixel values: integers in [0, 255] (uint8 images, not "
                    f"data scaled to [0, 1] or [-1, 1]); got dtype {arr.dtype} with values in "
                    f"[{arr.min()}, {arr.max()}]"
                    + ("" if finite else " and non-finite entries")
                    + "."
                )
    if np.ndim(images) < 2:
        raise ValueError(
            f"images must be batched (B, H, W, C) (or (B, *dims)), got shape {np.shape(images)}."
        )


def _check_uniform_noise(uniform_noise, shape) -> None:
    if tuple(np.shape(uniform_noise)) != tuple(shape):
        raise ValueError(
            f"uniform_noise must have the shape of images {tuple(shape)}, got "
            f"{tuple(np.shape(uniform_noise))}."
        )
    if not isinstance(uniform_noise, jax.core.Tracer):
        u = np.asarray(uniform_noise)
        if u.size and (not np.all(np.isfinite(u)) or u.min() < 0 or u.max() >= 1):
            raise ValueError(
                f"uniform_noise must lie in [0, 1), got values in [{u.min()}, {u.max()}]."
            )


def images_to_data(
    images: jax.Array,
    uniform_noise: jax.Array | None = None,
    centered: bool = False,
    dtype=None,
) -> jax.Array:
    r"""8-bit images to the model's continuous data space.

    Dequantized: :math:`y = (k + u)/256` with :math:`u \in [0, 1)`; otherwise (``uniform_noise``
    None) :math:`y = k/255`, the reference's scaling. Centered data is :math:`2y - 1`.

    Args:
      images: uint8 pixel values ``(B, *dims)``.
      uniform_noise: dequantization noise in ``[0, 1)`` shaped like ``images``, or None.
      centered: scale to ``[-1, 1]`` instead of ``[0, 1]``.
      dtype: float dtype of the result (default: JAX's default float).

    Returns:
      The data, shaped like ``images``.

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> k = jnp.array([[0, 255]], jnp.uint8)
      >>> sd.likelihood.images_to_data(k, jnp.full((1, 2), 0.5), centered=True)
      Array([[-0.99609375,  0.99609375]], dtype=float32)
    """
    dtype = jnp.result_type(float) if dtype is None else dtype
    k = jnp.asarray(images).astype(dtype)
    if uniform_noise is None:
        y = k / PIXEL_MAX
    else:
        y = (k + jnp.asarray(uniform_noise, dtype)) / PIXEL_LEVELS
    return 2.0 * y - 1.0 if centered else y


def bits_per_dim(
    key: jax.Array | None,
    sde: SDE,
    score_fn: ScoreFn,
    images: jax.Array,
    centered: bool = False,
    dequantize: bool = True,
    uniform_noise: jax.Array | None = None,
    **likelihood_kwargs: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Bits per dimension of 8-bit images under the probability-flow ODE.

    Pixels :math:`k \in \{0,\dots,255\}^D` are dequantized to :math:`y = (k + u)/256`,
    :math:`u \sim U[0,1)^D` (or the given ``uniform_noise``), and mapped to the model's space
    :math:`x = y` or, when centered, :math:`x = 2y - 1`. With the model density
    :math:`p(x)` from :func:`log_likelihood`, the density of :math:`k + u` on :math:`[0, 256)^D`
    is :math:`p(x)\,(s/256)^D` with :math:`s = 1` or 2, so

    .. math::
        \text{bpd} = -\frac{\log p(x)}{D\ln 2} + 8 - \log_2 s \quad(\text{offset 8, or 7 centered}),

    whose expectation over ``u`` upper-bounds the discrete negative log-likelihood per pixel in
    bits (uniform dequantization, Theis et al. 2016). With ``dequantize=False`` the density is
    evaluated at :math:`k/255` (the reference's undequantized scaling) with the same offset; that
    is not a bound on the discrete likelihood.

    Args:
      key: PRNG key for the dequantization noise and the probes (may be None when both are
        given or not needed).
      sde: the forward SDE.
      score_fn: ``score_fn(x, t)`` of a model trained on data in the same space.
      images: uint8 pixel values ``(B, H, W, C)`` (any ``(B, *dims)`` works). Non-uint8 arrays
        must hold integers in [0, 255].
      centered: whether the model's data space is ``[-1, 1]`` (the reference's
        ``data.centered``).
      dequantize: add uniform noise (default) or evaluate at ``k/255``.
      uniform_noise: the dequantization noise in ``[0, 1)`` shaped like ``images``; drawn from
        ``key`` when None.
      **likelihood_kwargs: passed to :func:`log_likelihood` (``divergence``, ``rtol``,
        ``atol``, ``eps``, ``solver``, ``noise``, ``n_probes``, ``per_sample``, ...).

    Returns:
      ``(bpd, z, nfe)``: bits/dim ``(B,)``, the latents and the number of drift evaluations.

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> images = jnp.full((1, 2, 2, 1), 128, jnp.uint8)
      >>> bpd, z, nfe = sd.bits_per_dim(jax.random.key(0), sd.VPSDE(), lambda x, t: -x, images,
      ...                               divergence="exact")
      >>> bpd.shape
      (1,)

    Reference: Song et al. 2021, App. D.2; the offset follows the reference's ``bpd`` code.
    """
    _check_images(images)
    for name in ("key", "sde", "score_fn", "x"):
        if name in likelihood_kwargs:
            raise TypeError(f"bits_per_dim got an unexpected keyword argument {name!r}.")
    dtype = jnp.result_type(float)
    divergence = likelihood_kwargs.get("divergence", "rademacher")
    needs_probes = divergence != "exact" and likelihood_kwargs.get("noise") is None
    if dequantize:
        if uniform_noise is None:
            if key is None:
                raise ValueError(
                    "key is required to draw the dequantization noise; pass a jax.random key "
                    "or uniform_noise=..."
                )
            key, u_key = jax.random.split(key)
            uniform_noise = jax.random.uniform(u_key, np.shape(images), dtype=dtype)
        else:
            _check_uniform_noise(uniform_noise, np.shape(images))
    elif uniform_noise is not None:
        raise ValueError("uniform_noise was given but dequantize=False; drop one of the two.")
    x = images_to_data(images, uniform_noise if dequantize else None, centered, dtype)
    logp, z, nfe = log_likelihood(
        key if needs_probes else None, sde, score_fn, x, **likelihood_kwargs
    )
    bpd = bits_per_dim_from_logp(logp, math.prod(np.shape(images)[1:]), centered)
    return bpd, z, nfe


def bits_per_dim_from_logp(logp: jax.Array, dim: int, centered: bool = False) -> jax.Array:
    r"""Converts a model log-density in nats to bits per 8-bit pixel: :math:`-\log p/(D\ln 2) + c`.

    ``c = 8`` for data in ``[0, 1]`` and ``7`` for centered data in ``[-1, 1]``, the log-volume
    of one pixel cell in bits (see :func:`bits_per_dim`).

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> sd.likelihood.bits_per_dim_from_logp(jnp.zeros(1), 3)   # uniform on [0, 1]^3
      Array([8.], dtype=float32)
    """
    offset = math.log2(PIXEL_LEVELS) - (1.0 if centered else 0.0)
    return -logp / (dim * math.log(2.0)) + offset


__all__ = [
    "DIVERGENCES",
    "bits_per_dim",
    "bits_per_dim_from_logp",
    "drift_and_divergence",
    "encode",
    "images_to_data",
    "log_likelihood",
    "log_likelihood_per_sample_nfe",
]
