r"""NFE of the probability-flow likelihood solve against scipy's RK45 on exact mixture scores.

The issue's target: the likelihood solve makes no more function evaluations (NFE) than scipy
``solve_ivp(method="RK45")``, the solver of the reference code, at the same tolerances on the
same trained-like problem. A trained network is stood in for by a perfect one: the exact score
of a Gaussian mixture (:meth:`scoresde.GaussianMixture.score_fn`), with data drawn from that
mixture. The mixtures are image-like (``H x W x C``, by default ``D = 16`` and ``32``), with three
components of distinct smooth mean images and distinct per-pixel scales (0.05, 0.1 and 0.2 of
the data range, times a smooth per-pixel factor in [0.75, 1.25]), so the score is non-linear
and sharply peaked near ``t = 0`` as a real data score is. VP and sub-VP see centered data in
[-1, 1] (the reference's DDPM++ configs); VE sees data in [0, 1] (its NCSN++ configs).

**Apples to apples.** Both solvers integrate the same ODE on the same state:

- the state is ``[x; delta_logp]``, from ``t = eps = 1e-5`` to ``T = 1``, with right-hand side
  ``(f - g^2 s / 2, div(f - g^2 s / 2))``; both sides evaluate it with
  :func:`scoresde.drift_and_divergence`, the function our solve uses inside;
- the divergence is Hutchinson's estimate with one *fixed* Rademacher probe per sample, the
  same probe for both solvers (``divergence="rademacher", noise=probe``), or the exact trace
  (``divergence="exact"``, ``D`` Jacobian-vector products; low ``D`` only);
- the same ``rtol`` and ``atol`` (both use the RMS norm of the error over the whole state,
  scaled by ``atol + rtol * max(|y_old|, |y_new|)``, and Dormand-Prince 5(4));
- the same unit: one NFE is one call of the right-hand side (drift and divergence together).
  scipy's count is ``sol.nfev``, ours is the library's own output
  (``log_likelihood_per_sample_nfe``); both are checked on every row against a counter of the
  calls actually made (a Python counter in scipy's callback; a :func:`jax.debug.callback` in
  our score function, which under the per-sample ``vmap`` fires once per loop iteration, i.e.
  as often as the slowest sample evaluates);
- the same state per solve: mode ``per_sample`` solves each sample alone in both (our default
  ``per_sample=True``, a ``vmap`` of batch-of-one solves; scipy in a loop over samples) and
  compares per-sample NFE; mode ``batch`` solves the whole batch as one state in both (our
  ``per_sample=False``; scipy with the flattened batch, which is what the reference does), so
  the error norm covers the same numbers;
- scipy runs in float64 with a float64 right-hand side (the most favourable setting for it:
  no round-off in its error estimates; the reference keeps a float64 state but evaluates its
  network in float32); ours runs in float32 (the default) and in float64 (``jax_enable_x64``).

Reported per row: mean NFE over the samples for ours and scipy, their ratio, on how many
samples ours is at most scipy's, the largest log-likelihood difference between the two, and
each solver's largest error against the closed form. The solve computes
``log p_prior(z) + int div``, which equals ``log p_eps(x) - log p_T(z) + log p_prior(z)``
exactly; so the error is ``logp + log p_T(z) - log p_prior(z) - log p_eps(x)`` with the
mixture's exact marginals (:meth:`scoresde.GaussianMixture.log_prob`). With the exact trace it
is solver error only; with Hutchinson it also holds the estimator's deviation for that probe.
(``log p_eps`` is not ``log p_0``: VE has ``sigma(eps) = 0.01``, which moves it by up to
0.14 nats on these data, VP and sub-VP by less than 1e-3; and the prior is not ``p_T``: about
0.01-0.02 nats for VP and sub-VP, 0.07-0.12 for VE here. Both would otherwise hide solver
error.)

**Where the step-size controls differ.** Same pair, norm, safety factor (0.9), error exponent
(1/5) and factor limits (0.2, 10); but diffrax starts from a fixed first step of 0.01 (its
initial-step heuristic is skipped for the wrapped term ``diffeqsolve`` builds), where scipy
picks one with Hairer's heuristic (one extra evaluation), and diffrax may grow the step right
after a rejected one, where scipy may not. ``--diagnose`` reruns ours on the batch-mode rows
from scipy's first step (the library's ``dt0``), and from there with
:class:`NoGrowthAfterRejection` too (its ``stepsize_controller``).

**D > 32 on a small CPU.** The mixture's score factors ``(B, K, D, D)`` covariances with a
Cholesky and an LU decomposition that XLA runs concurrently; for ``D > 32`` jaxlib 0.10.2's CPU
LAPACK kernels split their batch over the intra-op thread pool and wait for it, and with two of
them in flight on a 2-core machine every pool thread waits: the process hangs (seen here at
``D = 64``, ``B = 8``). Hence the default ``D <= 32``; ``--shapes 8x8x1`` runs where the pool
has more threads than concurrent LAPACK calls (or on a GPU).

Full run (a few minutes on two CPU cores)::

    PYTHONPATH=. python experiments/benchmarks/likelihood_nfe_vs_scipy.py

Smoke run (VP and VE, ``D = 16``, ``rtol = 1e-5``, two samples; about a minute)::

    PYTHONPATH=. python experiments/benchmarks/likelihood_nfe_vs_scipy.py --smoke

Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential
Equations", ICLR 2021, Sec. 4.3 and App. D.2; Dormand and Prince (1980); Hairer, Norsett and
Wanner, "Solving Ordinary Differential Equations I", Sec. II.4 (step-size control).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import scipy.integrate

import scoresde as sd
from scoresde.likelihood import DEFAULT_EPS, drift_and_divergence, log_likelihood_per_sample_nfe

#: Component scales as fractions of the data range [0, 1] (doubled for centered data).
COMPONENT_SCALES = (0.05, 0.1, 0.2)
#: Mixture weights of the three components.
COMPONENT_WEIGHTS = (0.5, 0.3, 0.2)
#: Solve modes: one adaptive solve per sample, or the whole batch as one state.
MODES = ("per_sample", "batch")
#: Our solve's dtypes; scipy is always float64.
DTYPES = ("float32", "float64")


def make_sde(name: str) -> sd.SDE:
    """The paper's default SDE of a family: ``"vp"``, ``"subvp"`` or ``"ve"``."""
    if name == "vp":
        return sd.VPSDE()
    if name == "subvp":
        return sd.SubVPSDE()
    if name == "ve":
        return sd.VESDE()
    raise ValueError(f"sde must be one of 'vp', 'subvp', 've', got {name!r}.")


def parse_shape(text: str) -> tuple[int, ...]:
    """``"8x8x1"`` -> ``(8, 8, 1)``."""
    try:
        shape = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ValueError(f"shape must look like 8x8x1 (positive integers), got {text!r}.")
    return shape


def _smooth_image(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth pattern in [0, 1]: a few random low-frequency cosines over the pixel grid."""
    grids = np.meshgrid(*[np.linspace(0.0, 1.0, n) for n in shape], indexing="ij")
    out = np.zeros(shape)
    for _ in range(3):
        freq = rng.uniform(0.5, 2.0, len(shape))
        phase = rng.uniform(0.0, 2.0 * math.pi)
        out += np.cos(2.0 * math.pi * sum(f * g for f, g in zip(freq, grids, strict=True)) + phase)
    return (out - out.min()) / (out.max() - out.min() + 1e-12)


@dataclasses.dataclass(frozen=True)
class Problem:
    """A mixture likelihood problem: SDE, mixture parameters (float64), data and probes."""

    sde_name: str
    sde: sd.SDE
    shape: tuple[int, ...]
    weights: np.ndarray
    means: np.ndarray  # (K, D)
    variances: np.ndarray  # (K, D), diagonal covariances
    x: np.ndarray  # (B, *shape), drawn from the mixture
    probe: np.ndarray  # (B, *shape), fixed Rademacher probes

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def name(self) -> str:
        return "mixture3-" + "x".join(str(n) for n in self.shape)

    def mixture(self, dtype) -> sd.GaussianMixture:
        covs = self.variances[:, :, None] * np.eye(self.dim)[None]
        return sd.GaussianMixture(
            jnp.asarray(self.weights, dtype),
            jnp.asarray(self.means, dtype),
            jnp.asarray(covs, dtype),
            event_shape=self.shape,
        )


def make_problem(sde_name: str, shape: tuple[int, ...], batch: int, seed: int = 0) -> Problem:
    """Three-component image-like mixture for ``sde_name`` and ``batch`` samples drawn from it.

    Means are smooth images in [0.2, 0.8] of the data range; component ``k`` has per-pixel
    standard deviations ``COMPONENT_SCALES[k]`` times a smooth factor in [0.75, 1.25]. VE
    data live in [0, 1], VP and sub-VP data are centered to [-1, 1].
    """
    rng = np.random.default_rng(seed)
    dim = math.prod(shape)
    centered = sde_name != "ve"
    scale = 2.0 if centered else 1.0
    offset = -1.0 if centered else 0.0
    k = len(COMPONENT_SCALES)
    means = np.stack([offset + scale * (0.2 + 0.6 * _smooth_image(rng, shape)) for _ in range(k)])
    stds = np.stack(
        [s * scale * (0.75 + 0.5 * _smooth_image(rng, shape)) for s in COMPONENT_SCALES]
    )
    means, variances = means.reshape(k, dim), stds.reshape(k, dim) ** 2
    weights = np.asarray(COMPONENT_WEIGHTS, np.float64)
    comp = rng.choice(k, size=batch, p=weights)
    x = means[comp] + np.sqrt(variances[comp]) * rng.standard_normal((batch, dim))
    probe = rng.choice(np.array([-1.0, 1.0]), size=(batch, *shape))
    return Problem(
        sde_name,
        make_sde(sde_name),
        tuple(shape),
        weights,
        means,
        variances,
        x.reshape((batch, *shape)),
        probe,
    )


@dataclasses.dataclass(frozen=True)
class Solve:
    """Per-sample results of one solver: log-likelihood (nats), latents, NFE, wall time."""

    logp: np.ndarray  # (B,) float64
    z: np.ndarray  # (B, *shape) float64
    nfe: np.ndarray  # (B,) int; in batch mode every entry is the shared solve's NFE
    seconds: float
    calls: int  # right-hand-side evaluations counted while solving (all solves together)
    first_step: float | None = None  # scipy's initial step (batch mode, when asked for)


class NoGrowthAfterRejection(diffrax.AbstractAdaptiveStepSizeController):
    """Wraps a step-size controller: the step after a rejected one may not grow.

    The safeguard of Hairer, Norsett and Wanner (Sec. II.4) that scipy's RK45 applies and
    :class:`diffrax.PIDController` does not. Used only by ``--diagnose``.
    """

    controller: diffrax.PIDController
    rtol: float
    atol: float
    norm: object

    @classmethod
    def around(cls, controller: diffrax.PIDController) -> NoGrowthAfterRejection:
        return cls(controller, controller.rtol, controller.atol, controller.norm)

    def wrap(self, direction):
        return NoGrowthAfterRejection.around(self.controller.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        t_next, state = self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)
        return t_next, (state, jnp.array(False))

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, state):
        inner, rejected_before = state
        keep, next_t0, next_t1, jump, inner, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, inner
        )
        capped = jnp.minimum(next_t1, next_t0 + (t1 - t0))
        next_t1 = jnp.where(keep & rejected_before, capped, next_t1)
        return keep, next_t0, next_t1, jump, (inner, jnp.logical_not(keep)), result


def solve_ours(
    problem: Problem,
    rtol: float,
    atol: float,
    mode: str,
    dtype: str,
    divergence: str,
    dt0: float | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
) -> Solve:
    """Our solve (:func:`log_likelihood_per_sample_nfe`, default Dopri5 + PIDController).

    ``dt0`` and ``stepsize_controller`` are passed through (None: the library's defaults).
    """
    use_x64 = dtype == "float64"
    calls = [0]
    mixture_score_fn = None

    def score_fn(x, t):
        # Counts evaluations on the host; one call per evaluation of the (batched) score.
        jax.debug.callback(lambda: calls.__setitem__(0, calls[0] + 1))
        return mixture_score_fn(x, t)

    start = time.perf_counter()
    with jax.enable_x64(use_x64):
        jdtype = jnp.float64 if use_x64 else jnp.float32
        mixture_score_fn = problem.mixture(jdtype).score_fn(problem.sde)
        x = jnp.asarray(problem.x, jdtype)
        noise = None if divergence == "exact" else jnp.asarray(problem.probe, jdtype)
        logp, z, nfe = log_likelihood_per_sample_nfe(
            None,
            problem.sde,
            score_fn,
            x,
            divergence,
            rtol,
            atol,
            DEFAULT_EPS,
            noise=noise,
            per_sample=mode == "per_sample",
            stepsize_controller=stepsize_controller,
            dt0=dt0,
        )
        logp, z, nfe = jax.block_until_ready((logp, z, nfe))
        jax.effects_barrier()
    seconds = time.perf_counter() - start
    return Solve(
        np.asarray(logp, np.float64),
        np.asarray(z, np.float64),
        np.asarray(nfe),
        seconds,
        calls[0],
    )


def solve_scipy(
    problem: Problem,
    rtol: float,
    atol: float,
    mode: str,
    divergence: str,
    first_step: bool = False,
) -> Solve:
    """scipy ``solve_ivp(method="RK45")`` on the flattened state ``[x; delta_logp]``, float64.

    Mode ``per_sample``: one solve per sample (state of size ``D + 1``); mode ``batch``: one
    solve of the whole batch (size ``B (D + 1)``), as the reference does. With
    ``first_step`` (batch mode), also returns the initial step scipy picks (``RK45.h_abs``
    after construction; those two evaluations are not counted).
    """
    sde = problem.sde
    start = time.perf_counter()
    with jax.enable_x64(True):
        score_fn = problem.mixture(jnp.float64).score_fn(sde)

        @jax.jit
        def rhs(t, y, probe):
            batch = y.shape[0] // (problem.dim + 1)
            x = y[: batch * problem.dim].reshape((batch, *problem.shape))
            drift, div = drift_and_divergence(
                sde, score_fn, x, jnp.full((batch,), t), divergence, noise=probe
            )
            return jnp.concatenate([drift.reshape(-1), div])

        groups = [[i] for i in range(len(problem.x))] if mode == "per_sample" else [slice(None)]
        logp, zs, nfe, total_calls, h0 = [], [], [], 0, None
        for idx in groups:
            x = problem.x[idx]
            probe = None if divergence == "exact" else jnp.asarray(problem.probe[idx])
            calls = [0]

            def fun(t, y, probe=probe, calls=calls):
                calls[0] += 1
                return np.asarray(rhs(t, jnp.asarray(y), probe))

            y0 = np.concatenate([x.reshape(-1), np.zeros(len(x))])
            sol = scipy.integrate.solve_ivp(
                fun, (DEFAULT_EPS, sde.T), y0, method="RK45", rtol=rtol, atol=atol
            )
            if not sol.success:
                raise RuntimeError(f"scipy RK45 failed on {problem.name}: {sol.message}")
            if calls[0] != sol.nfev:
                raise RuntimeError(f"scipy nfev={sol.nfev} but the RHS ran {calls[0]} times.")
            total_calls += calls[0]
            if first_step and mode == "batch":
                h0 = scipy.integrate.RK45(
                    lambda t, y, probe=probe: np.asarray(rhs(t, jnp.asarray(y), probe)),
                    DEFAULT_EPS,
                    y0,
                    sde.T,
                    rtol=rtol,
                    atol=atol,
                ).h_abs
            z = sol.y[: x.size, -1].reshape(x.shape)
            delta = sol.y[x.size :, -1]
            logp.append(np.asarray(sde.prior_logp(jnp.asarray(z))) + delta)
            zs.append(z)
            nfe.extend([sol.nfev] * len(x))
    seconds = time.perf_counter() - start
    return Solve(
        np.concatenate(logp), np.concatenate(zs), np.asarray(nfe), seconds, total_calls, h0
    )


def exact_error(problem: Problem, solve: Solve) -> np.ndarray:
    """``logp + log p_T(z) - log p_prior(z) - log p_eps(x)`` per sample, exact marginals."""
    sde = problem.sde
    batch = len(problem.x)
    with jax.enable_x64(True):
        gm = problem.mixture(jnp.float64)
        x, z = jnp.asarray(problem.x), jnp.asarray(solve.z)
        logp_eps = gm.log_prob(x, sde, jnp.full((batch,), DEFAULT_EPS))
        prior_gap = gm.log_prob(z, sde, jnp.full((batch,), sde.T)) - sde.prior_logp(z)
        return np.asarray(solve.logp + prior_gap - logp_eps)


def delta_logp(problem: Problem, solve: Solve) -> np.ndarray:
    """The integrated divergence ``logp - log p_prior(z)`` per sample."""
    with jax.enable_x64(True):
        return solve.logp - np.asarray(problem.sde.prior_logp(jnp.asarray(solve.z)))


def compare(
    problem: Problem,
    rtol: float,
    atol: float,
    mode: str,
    dtype: str,
    divergence: str,
    scipy_cache: dict | None = None,
    diagnose: bool = False,
) -> dict:
    """One row: our solve and scipy's on ``problem``; NFE and log-likelihood agreement.

    With ``diagnose`` (batch mode only), also our NFE when started from scipy's initial step
    (``ours_nfe_scipy_h0``) and, in addition, with :class:`NoGrowthAfterRejection`
    (``ours_nfe_scipy_h0_no_growth``): the two places where scipy's step-size control differs
    from diffrax's default.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    diagnose = diagnose and mode == "batch"
    cache_key = (problem.name, problem.sde_name, rtol, atol, mode, divergence, diagnose)
    scipy_cache = {} if scipy_cache is None else scipy_cache
    if cache_key not in scipy_cache:
        scipy_cache[cache_key] = solve_scipy(problem, rtol, atol, mode, divergence, diagnose)
    ref = scipy_cache[cache_key]
    ours = solve_ours(problem, rtol, atol, mode, dtype, divergence)
    if ours.calls != int(np.max(ours.nfe)):
        raise RuntimeError(
            f"our reported NFE (max {int(np.max(ours.nfe))}) differs from the {ours.calls} "
            "score evaluations counted during the solve."
        )
    extra = {}
    if diagnose:
        h0 = float(ref.first_step)
        no_growth = NoGrowthAfterRejection.around(diffrax.PIDController(rtol=rtol, atol=atol))
        from_h0 = solve_ours(problem, rtol, atol, mode, dtype, divergence, dt0=h0)
        both = solve_ours(problem, rtol, atol, mode, dtype, divergence, h0, no_growth)
        extra = {
            "scipy_first_step": h0,
            "ours_nfe_scipy_h0": int(from_h0.nfe[0]),
            "ours_nfe_scipy_h0_no_growth": int(both.nfe[0]),
        }
    ours_mean, ref_mean = float(np.mean(ours.nfe)), float(np.mean(ref.nfe))
    return {
        "bench": "likelihood_nfe_vs_scipy",
        "problem": problem.name,
        "sde": problem.sde_name,
        "dim": problem.dim,
        "batch": len(problem.x),
        "rtol": rtol,
        "atol": atol,
        "eps": DEFAULT_EPS,
        "mode": mode,
        "dtype": dtype,
        "divergence": divergence,
        "ours_nfe": ours.nfe.tolist(),
        "scipy_nfe": ref.nfe.tolist(),
        "ours_nfe_mean": ours_mean,
        "scipy_nfe_mean": ref_mean,
        "nfe_ratio": ours_mean / ref_mean,
        "ours_le_scipy": int(np.sum(ours.nfe <= ref.nfe)),
        "max_abs_dlogp": float(np.max(np.abs(ours.logp - ref.logp))),
        "ours_max_abs_err": float(np.max(np.abs(exact_error(problem, ours)))),
        "scipy_max_abs_err": float(np.max(np.abs(exact_error(problem, ref)))),
        "max_abs_delta_logp": float(
            max(np.max(np.abs(delta_logp(problem, ours))), np.max(np.abs(delta_logp(problem, ref))))
        ),
        "ours_logp": ours.logp.tolist(),
        "scipy_logp": ref.logp.tolist(),
        "ours_s": ours.seconds,
        "scipy_s": ref.seconds,
        "device": jax.devices()[0].platform,
        **extra,
    }


def markdown_table(records: list[dict]) -> str:
    """The rows as a markdown table (NFE: mean over samples; ratio: ours / scipy).

    With ``--diagnose`` rows, a last column gives our NFE from scipy's initial step and, after
    the slash, with no step growth after a rejection as well.
    """
    diagnosed = any("ours_nfe_scipy_h0" in r for r in records)
    head = (
        "| problem | SDE | D | rtol=atol | mode | ours dtype | divergence | ours NFE | "
        "scipy NFE | ratio | ours <= scipy | max abs dlogp | max abs err ours / scipy |"
    )
    if diagnosed:
        head += " ours: scipy's h0 / + no growth after reject |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        line = (
            f"| {r['problem']} | {r['sde']} | {r['dim']} | {r['rtol']:g} | {r['mode']} | "
            f"{r['dtype']} | {r['divergence']} | {r['ours_nfe_mean']:.1f} | "
            f"{r['scipy_nfe_mean']:.1f} | {r['nfe_ratio']:.3f} | "
            f"{r['ours_le_scipy']}/{r['batch']} | {r['max_abs_dlogp']:.1e} | "
            f"{r['ours_max_abs_err']:.1e} / {r['scipy_max_abs_err']:.1e} |"
        )
        if diagnosed:
            if "ours_nfe_scipy_h0" in r:
                line += f" {r['ours_nfe_scipy_h0']} / {r['ours_nfe_scipy_h0_no_growth']} |"
            else:
                line += " |"
        lines.append(line)
    return "\n".join(lines)


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdes", default="vp,subvp,ve", help="comma list of vp, subvp, ve")
    parser.add_argument("--shapes", default="4x4x1,4x8x1", help="comma list of HxWxC")
    parser.add_argument("--tols", default="1e-5,1e-3", help="rtol = atol values")
    parser.add_argument("--modes", default="per_sample,batch")
    parser.add_argument("--dtypes", default="float32,float64", help="our solve's dtypes")
    parser.add_argument("--batch", type=int, default=8, help="samples per problem")
    parser.add_argument(
        "--exact-max-dim",
        type=int,
        default=16,
        help="also run divergence='exact' (D products per NFE) up to this D",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="VP + VE, 4x4x1, rtol 1e-5, B=2")
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="batch rows: also ours from scipy's initial step, and with no growth after a "
        "rejected step",
    )
    parser.add_argument("--out", default=None, help="append JSON lines here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sdes, args.shapes, args.tols = "vp,ve", "4x4x1", "1e-5"
        args.dtypes, args.batch = "float32", 2
    modes = _csv(args.modes)
    for m in modes:
        if m not in MODES:
            parser.error(f"--modes: {m!r} is not one of {MODES}")
    dtypes = _csv(args.dtypes)
    for d in dtypes:
        if d not in DTYPES:
            parser.error(f"--dtypes: {d!r} is not one of {DTYPES}")
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")

    records, scipy_cache = [], {}
    for sde_name in _csv(args.sdes):
        for shape in map(parse_shape, _csv(args.shapes)):
            problem = make_problem(sde_name, shape, args.batch, args.seed)
            divergences = ["rademacher"] + (["exact"] if problem.dim <= args.exact_max_dim else [])
            for tol in map(float, _csv(args.tols)):
                for mode in modes:
                    for divergence in divergences:
                        for dtype in dtypes:
                            record = compare(
                                problem,
                                tol,
                                tol,
                                mode,
                                dtype,
                                divergence,
                                scipy_cache,
                                args.diagnose,
                            )
                            records.append(record)
                            line = json.dumps(record)
                            print(line, flush=True)
                            if args.out:
                                with open(args.out, "a") as f:
                                    f.write(line + "\n")
    print()
    print(markdown_table(records))
    return records


if __name__ == "__main__":
    main()
