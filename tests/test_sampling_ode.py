"""Probability-flow ODE: sampling, encode/decode, convergence order, counted evaluations."""

from __future__ import annotations

import math

import diffrax
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


@pytest.mark.parametrize("name,dim", [("vp", 2), ("subvp", 16), ("ve", 2)])
def test_sample_ode_reproduces_mixture(key, name, dim):
    # rtol = atol = 1e-5: the solver error (~1e-4 in x) is far below the Monte Carlo error
    # (5 SE of the mean ~ 0.03); the ODE needs no other allowance.
    sde = sdes(1000)[name]
    gm = mixture_2d() if dim == 2 else mixture_16d()
    x, nfe = sd.sample_ode(key, sde, isotropic_score_fn(gm, sde), (2000, dim))
    check_mixture(x, gm, sde, denoise=False)
    assert int(nfe) > 0


def test_decode_encode_is_identity(key, x64):
    """decode(encode(x)) == x to 1e-4 at rtol = atol = 1e-6 (float64)."""
    sde = sd.VPSDE()
    gm = mixture_2d()
    score_fn = isotropic_score_fn(gm, sde)
    x = gm.sample(key, 16)
    z, nfe_enc = sd.solve_probability_flow(sde, score_fn, x, EPS, sde.T, rtol=1e-6, atol=1e-6)
    x_back, nfe_dec = sd.sample_ode(key, sde, score_fn, x.shape, rtol=1e-6, atol=1e-6, z=z)
    np.testing.assert_allclose(x_back, x, atol=1e-4)
    # the latents are prior-like (not the data): the map is non-trivial
    assert float(jnp.abs(z - x).max()) > 0.5
    assert int(nfe_enc) > 0 and int(nfe_dec) > 0


def _gaussian_flow_error(sde, solver, n_steps):
    """|x_h(eps) - x(eps)| for N(0, s^2 I) data, whose flow is x(t) = x(T) sqrt(v(t) / v(T))."""
    s = 0.5
    gm = sd.GaussianMixture.isotropic(jnp.array([1.0]), jnp.zeros((1, 3)), s)
    x_T = jnp.array([[1.0, -2.0, 0.5]])

    def v(t):
        mean_coeff, std = sde.marginal_prob(jnp.ones((1, 1)), jnp.array([t]))
        return float(mean_coeff[0, 0]) ** 2 * s**2 + float(std[0]) ** 2

    exact = x_T * math.sqrt(v(EPS) / v(sde.T))
    x, nfe = sd.solve_probability_flow(
        sde,
        isotropic_score_fn(gm, sde),
        x_T,
        sde.T,
        EPS,
        solver=solver,
        stepsize_controller=diffrax.ConstantStepSize(),
        dt0=-(sde.T - EPS) / n_steps,
    )
    return float(jnp.max(jnp.abs(x - exact))), int(nfe)


@pytest.mark.parametrize("solver,order,stages", [(diffrax.Euler(), 1, 1), (diffrax.Heun(), 2, 2)])
def test_ode_solver_order(x64, solver, order, stages):
    """Halving the step divides the global error by 2^order (VP, known Gaussian flow)."""
    sde = sd.VPSDE()
    errors = []
    for n in (64, 128, 256):
        err, nfe = _gaussian_flow_error(sde, solver, n)
        errors.append(err)
        assert nfe == stages * n  # fixed steps: `stages` evaluations per step
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    # asymptotic regime: observed rates within 0.15 of the theoretical order
    assert all(abs(r - order) < 0.15 for r in rates), rates


def test_ode_nfe_equals_counted_calls_adaptive(key):
    sde = sd.VESDE(sigma_max=20.0)
    counter = ScoreCallCounter(isotropic_score_fn(mixture_2d(), sde))
    _, nfe = sd.sample_ode(key, sde, counter, (8, 2), denoise=True)
    # every executed evaluation: initial step selection, all stages, rejected steps, denoising
    assert int(nfe) == counter.count()


def test_sample_ode_z_shape_error(key):
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="z must have the sampling shape"):
        sd.sample_ode(key, sde, lambda x, t: -x, (4, 2), z=jnp.zeros((3, 2)))


def test_solve_ode_counts_any_vector_field():
    y1, nfe = sd.sampling.solve_ode(
        lambda t, y: -y,
        jnp.ones(3),
        0.0,
        1.0,
        solver=diffrax.Euler(),
        dt0=0.01,
        stepsize_controller=diffrax.ConstantStepSize(),
    )
    assert int(nfe) == 100
    np.testing.assert_allclose(y1, 0.99**100, rtol=1e-5)
