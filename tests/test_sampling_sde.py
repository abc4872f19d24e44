"""Reverse-time SDE sampling with diffrax solvers: mixtures, strong order, counted calls."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_helpers import (
    EPS,
    ScoreCallCounter,
    check_mixture,
    isotropic_score_fn,
    mixture_2d,
    mixture_16d,
    sdes,
)

import scoresde as sd


@pytest.mark.parametrize(
    "name,dim,solver",
    [("vp", 2, None), ("subvp", 16, None), ("ve", 16, diffrax.SRA1())],
)
def test_sample_sde_reproduces_mixture(key, name, dim, solver):
    # 200 grid points; tolerances as in test_sampling_pc (Monte Carlo 5 SE + 10% std).
    sde = sdes(200)[name]
    gm = mixture_2d() if dim == 2 else mixture_16d()
    x, nfe = sd.sample_sde(key, sde, isotropic_score_fn(gm, sde), (2000, dim), solver=solver)
    check_mixture(x, gm, sde, denoise=True)


def test_sample_sde_adaptive_virtual_brownian_tree(key):
    sde = sdes(100)["vp"]
    gm = mixture_2d()
    x, nfe = sd.sample_sde(
        key,
        sde,
        isotropic_score_fn(gm, sde),
        (2000, 2),
        solver=diffrax.SPaRK(),
        stepsize_controller=diffrax.PIDController(rtol=1e-2, atol=1e-2),
    )
    check_mixture(x, gm, sde, denoise=True)


@pytest.mark.parametrize("solver,per_step", [(diffrax.Euler(), 1), (diffrax.SRA1(), 2)])
def test_sde_nfe_equals_counted_calls(key, solver, per_step):
    sde = sd.VPSDE(N=15)
    counter = ScoreCallCounter(isotropic_score_fn(mixture_2d(), sde))
    _, nfe = sd.sample_sde(key, sde, counter, (4, 2), solver=solver)
    assert int(nfe) == counter.count() == 14 * per_step + 1


def test_euler_maruyama_strong_order(key, x64):
    """Strong error E|x_h - x_ref| at eps on one Brownian path per sample, h -> h/2.

    The reverse SDE of N(0, s^2 I) data under VE is linear with additive noise; its solution
    on a Virtual Brownian Tree path is approximated by Euler-Maruyama with 2^11 steps (error
    ~ 16x below the finest tested step). For additive noise Euler-Maruyama's strong order is
    1 (it coincides with Milstein), above the general 1/2: the fitted order must be >= 0.5
    and close to 1.
    """
    sde = sd.VESDE(sigma_min=0.01, sigma_max=5.0)
    gm = sd.GaussianMixture.isotropic(jnp.array([1.0]), jnp.zeros((1, 2)), 0.5)
    batch = 256
    x_T = sde.prior_sampling(jax.random.fold_in(key, 1), (batch, 2))
    t0, t1 = -sde.T, -EPS
    path = diffrax.VirtualBrownianTree(t0, t1, tol=1e-6, shape=(batch, 2), key=key)
    terms = sd.sampling.reverse_sde_terms(sde, isotropic_score_fn(gm, sde), path)

    @jax.jit
    def solve_dt(dt):  # one compilation for every step size: dt is traced
        sol = diffrax.diffeqsolve(terms, diffrax.Euler(), t0, t1, dt, x_T, max_steps=2048)
        return sol.ys[0]

    def solve(n):
        return solve_dt(jnp.asarray((t1 - t0) / n))

    ref = solve(2048)
    ns = (32, 64, 128)
    errors = [float(jnp.mean(jnp.linalg.norm(solve(n) - ref, axis=-1))) for n in ns]
    slope = np.polyfit(np.log([1 / n for n in ns]), np.log(errors), 1)[0]
    # 256 paths: the error means have ~6% relative MC error, so the slope is good to ~0.15
    assert 0.8 < slope < 1.3, (slope, errors)


def test_bad_solver_for_fixed_grid_errors():
    sde = sd.VPSDE(N=10)
    with pytest.raises(ValueError, match="num_steps"):
        sd.sample_sde(jax.random.key(0), sde, lambda x, t: -x, (2, 2), num_steps=0)
