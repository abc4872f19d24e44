"""Tests for scoresde.losses: DSM against closed forms and quadrature, SMLD, DDPM.

Data are Gaussian, x0 ~ N(mu, s^2 I), so the diffused density is Gaussian with exact score
-(x - a mu) / (a^2 s^2 + sigma^2) (taken from ``GaussianMixture``), and for that score the
per-dimension expectation of ||sigma s + z||^2 at time t is a^2 s^2 / (a^2 s^2 + sigma^2).
Monte Carlo averages are compared with these closed forms (integrated over t by
quadrature) to within 5 standard errors (a false failure has probability ~ 6e-7).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

import scoresde as sd
from scoresde import losses

MU = np.array([0.5, -1.0])
S0 = 0.7
EPS = losses.DEFAULT_EPS
N_MC = 50_000
N_MC_WEIGHTED = 200_000  # the likelihood weight ~1/t has a heavy tail: more samples
Z_TOL = 5.0  # standard errors allowed for Monte Carlo estimates

SDES = {
    "vp": sd.VPSDE(),
    "subvp": sd.SubVPSDE(),
    "ve": sd.VESDE(sigma_min=0.01, sigma_max=50.0),
}


def gaussian(dtype=jnp.float32):
    return sd.GaussianMixture.isotropic(
        jnp.ones((1,), dtype), jnp.asarray(MU[None], dtype), jnp.asarray(S0, dtype)
    )


def _coeffs(sde, t):
    """a(t), sigma(t), g(t)^2 in float64 numpy."""
    with jax.enable_x64(True):
        t = jnp.asarray(t, jnp.float64)
        mean, std = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)
        g = sde.sde(jnp.zeros((t.shape[0], 1)), t)[1]
        return np.asarray(mean[:, 0]), np.asarray(std), np.asarray(g) ** 2


def _time_average(sde, integrand):
    """(1/(T - eps)) int_eps^T integrand(t) dt on a log-spaced grid (the integrand ~ 1/t near 0)."""
    u = np.linspace(np.log(EPS), np.log(sde.T), 40_001)
    t = np.exp(u)
    a, sigma, g2 = _coeffs(sde, t)
    return integrate.simpson(integrand(a, sigma, g2) * t, x=u) / (sde.T - EPS)


def _optimal_per_dim(a, sigma):
    return a**2 * S0**2 / (a**2 * S0**2 + sigma**2)


def _mc(values):
    values = np.asarray(values, np.float64)
    return values.mean(), values.std() / np.sqrt(values.size)


@pytest.mark.parametrize("name, reduce_mean", [("vp", True), ("ve", False)])
def test_dsm_exact_score_attains_analytic_minimum(name, reduce_mean, key):
    sde = SDES[name]
    gm = gaussian()
    kx, kl = jax.random.split(key)
    x = gm.sample(kx, N_MC)
    per_sample = jax.jit(
        lambda k, x: sd.dsm_loss(k, sde, gm.score_fn(sde), x, reduce_mean=reduce_mean)
    )(kl, x)
    mean, se = _mc(per_sample)
    factor = 1.0 if reduce_mean else MU.size / 2.0  # mean over D dims, or half the sum
    expected = factor * _time_average(sde, lambda a, s, g2: _optimal_per_dim(a, s))
    assert abs(mean - expected) < Z_TOL * se, (mean, expected, se)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_likelihood_weighting_and_importance_sampling_unbiased(name, key):
    """Both estimate (1/(T-eps)) int g^2/sigma^2 * a^2 s^2/(a^2 s^2 + sigma^2) dt * D/2."""
    sde = SDES[name]
    gm = gaussian()
    kx, kl = jax.random.split(key)
    x = gm.sample(kx, N_MC)
    x = gm.sample(kx, N_MC_WEIGHTED)
    expected = (MU.size / 2.0) * _time_average(
        sde, lambda a, s, g2: g2 / s**2 * _optimal_per_dim(a, s)
    )
    results = {}
    for importance in (False, True):
        per_sample = jax.jit(
            lambda k, x, imp=importance: sd.dsm_loss(
                k, sde, gm.score_fn(sde), x, likelihood_weighting=True, importance_sampling=imp
            )
        )(kl, x)
        mean, se = _mc(per_sample)
        assert abs(mean - expected) < Z_TOL * se, (importance, mean, expected, se)
        results[importance] = se
    if name != "ve":  # for VE, g^2/sigma^2 is constant: importance sampling is uniform
        assert results[True] < 0.5 * results[False], results  # the point of the sampler


def test_wrong_score_gives_larger_loss_by_the_fisher_excess(key):
    """E||sigma(s* + d) + z||^2 - E||sigma s* + z||^2 = E[sigma^2] |d|^2 / D per dim."""
    sde = SDES["vp"]
    gm = gaussian()
    kx, kl = jax.random.split(key)
    x = gm.sample(kx, N_MC)
    shift = jnp.array([0.3, -0.2])
    exact = gm.score_fn(sde)
    good, bad = jax.jit(
        lambda k, x: (
            sd.dsm_loss(k, sde, exact, x, reduce_mean=True),
            sd.dsm_loss(k, sde, lambda y, t: exact(y, t) + shift, x, reduce_mean=True),
        )
    )(kl, x)
    diff_mean, diff_se = _mc(np.asarray(bad) - np.asarray(good))  # common random numbers
    excess = float(jnp.mean(shift**2)) * _time_average(sde, lambda a, s, g2: s**2)
    assert diff_mean > Z_TOL * diff_se
    assert abs(diff_mean - excess) < Z_TOL * diff_se, (diff_mean, excess, diff_se)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_importance_time_distribution_matches_quadrature(name, key):
    """KS test of the sampled t against the CDF of g^2/sigma^2 integrated numerically."""
    sde = SDES[name]
    t = np.asarray(jax.jit(lambda k: losses.sample_importance_time(k, sde, 20_000))(key))
    assert t.min() >= EPS and t.max() <= sde.T
    grid = np.exp(np.linspace(np.log(EPS), 0.0, 20_001))
    a, sigma, g2 = _coeffs(sde, grid)
    cdf = integrate.cumulative_trapezoid(g2 / sigma**2, grid, initial=0.0)
    z_quad = cdf[-1]
    # the normalizer lambda(T) - lambda(eps) equals the quadrature (trapezoid error ~1e-6)
    np.testing.assert_allclose(float(losses.importance_weight_normalizer(sde)), z_quad, rtol=1e-4)
    result = stats.kstest(t, lambda v: np.interp(v, grid, cdf / z_quad))
    assert result.pvalue > 1e-4, result  # fails by chance with probability 1e-4


def test_importance_inverse_matches_vp_closed_form():
    """For VP, lambda(t) = log(exp(-2 m(t)) - 1) inverts by a quadratic (the reference ISSM)."""
    sde = SDES["vp"]
    u = jnp.linspace(0.0, 1.0, 101)
    t = np.asarray(losses._invert_log_inverse_snr(sde, u, EPS), np.float64)
    lam = np.asarray(losses.log_inverse_snr(sde, jnp.array([EPS, 1.0])), np.float64)
    y = lam[0] + np.asarray(u, np.float64) * (lam[1] - lam[0])
    minus_2m = np.logaddexp(0.0, y)  # -2 m(t) = log(1 + e^y)
    db, b0 = sde.beta_max - sde.beta_min, sde.beta_min
    closed = (-0.5 * b0 + np.sqrt(0.25 * b0**2 + 0.5 * db * minus_2m)) / (0.5 * db)
    # float32 lambda near t=eps and t=1 limits the agreement to ~1e-5 relative
    np.testing.assert_allclose(t, closed, rtol=2e-5, atol=1e-7)


def test_smld_loss_exact_score_closed_form(key):
    sde = sd.VESDE(sigma_min=0.01, sigma_max=5.0, N=10)
    sigmas_desc = np.asarray(sde.discrete_sigmas)[::-1]
    kx, kl = jax.random.split(key)
    x = gaussian().sample(kx, N_MC)

    def model_fn(y, labels):
        var = S0**2 + jnp.asarray(sigmas_desc)[labels] ** 2
        return -(y - MU) / var[:, None]

    mean, se = _mc(jax.jit(lambda k, x: sd.smld_loss(k, sde, model_fn, x))(kl, x))
    expected = (MU.size / 2.0) * np.mean(S0**2 / (S0**2 + sigmas_desc**2))
    assert abs(mean - expected) < Z_TOL * se, (mean, expected, se)


def test_ddpm_loss_exact_noise_prediction_closed_form(key):
    sde = sd.VPSDE(N=100)  # N >= beta_max keeps DDPM's betas below 1
    abar = np.asarray(sde.alphas_cumprod, np.float64)
    kx, kl = jax.random.split(key)
    x = gaussian().sample(kx, N_MC)
    seen = []

    def model_fn(y, labels):
        seen.append(labels.dtype)
        a, s2 = jnp.sqrt(jnp.asarray(abar)[labels]), 1.0 - jnp.asarray(abar)[labels]
        score = -(y - a[:, None] * MU) / (a**2 * S0**2 + s2)[:, None]
        return -jnp.sqrt(s2)[:, None] * score  # eps* = -sigma * score*

    mean, se = _mc(jax.jit(lambda k, x: sd.ddpm_loss(k, sde, model_fn, x, reduce_mean=True))(kl, x))
    expected = np.mean(abar * S0**2 / (abar * S0**2 + 1.0 - abar))
    assert abs(mean - expected) < Z_TOL * se, (mean, expected, se)
    assert jnp.issubdtype(seen[0], jnp.integer)  # DDPM calls the network with integer labels


@pytest.mark.parametrize(
    "loss",
    [
        lambda k, x, f: sd.dsm_loss(k, SDES["vp"], f, x, likelihood_weighting=True),
        lambda k, x, f: sd.dsm_loss(
            k, SDES["vp"], f, x, likelihood_weighting=True, importance_sampling=True
        ),
        lambda k, x, f: sd.smld_loss(k, sd.VESDE(N=10), f, x),
        lambda k, x, f: sd.ddpm_loss(k, sd.VPSDE(N=100), f, x),
    ],
)
def test_per_example_keys_make_losses_independent_of_batch_split(loss, key):
    """What data parallelism relies on: a batch split in two sees the same per-example draws."""
    x = jax.random.normal(key, (8, 3))
    keys = jax.random.split(jax.random.fold_in(key, 1), 8)
    f = lambda y, t: -0.5 * y  # noqa: E731

    @jax.jit
    def run(keys, x, one_key):
        whole = loss(keys, x, f)
        halves = jnp.concatenate([loss(keys[:4], x[:4], f), loss(keys[4:], x[4:], f)])
        return whole, halves, loss(one_key, x, f)

    whole, halves, from_one_key = run(keys, x, jax.random.fold_in(key, 1))
    np.testing.assert_array_equal(np.asarray(whole), np.asarray(halves))
    # a single key is split into per-example keys (the same split as `keys`)
    np.testing.assert_array_equal(np.asarray(from_one_key), np.asarray(whole))


class _Net(nn.Module):
    use_batch_stats: bool = False

    @nn.compact
    def __call__(self, x, labels, train=False):
        h = jnp.concatenate([x, jnp.log1p(jnp.abs(labels.astype(x.dtype)))[:, None]], -1)
        h = nn.Dense(8)(h)
        if self.use_batch_stats:
            h = nn.BatchNorm(use_running_average=not train)(h)
        h = nn.Dropout(0.1, deterministic=not train)(nn.swish(h))
        return nn.Dense(x.shape[-1])(h)


@pytest.mark.parametrize(
    "sde, continuous", [(sd.VPSDE(N=20), True), (sd.VESDE(N=20), False), (sd.VPSDE(N=20), False)]
)
def test_model_loss_fn_is_differentiable_and_updates_model_state(sde, continuous, key):
    net = _Net(use_batch_stats=True)
    x = jax.random.normal(key, (6, 2))
    variables = net.init(jax.random.key(0), x, jnp.ones(6))
    params, model_state = variables["params"], {"batch_stats": variables["batch_stats"]}
    loss_fn = sd.get_model_loss_fn(sde, net, continuous=continuous)
    keys = jax.random.split(key, 6)
    (loss, new_state), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, model_state, {"image": x}, keys
    )
    assert loss.shape == () and np.isfinite(loss)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    mean_before = model_state["batch_stats"]["BatchNorm_0"]["mean"]
    assert not np.allclose(new_state["batch_stats"]["BatchNorm_0"]["mean"], mean_before)


def test_loss_argument_errors(key):
    x = jnp.zeros((4, 2))
    f = lambda y, t: y  # noqa: E731
    with pytest.raises(ValueError, match="likelihood_weighting=True"):
        sd.dsm_loss(key, SDES["vp"], f, x, importance_sampling=True)
    with pytest.raises(ValueError, match="eps"):
        sd.dsm_loss(key, SDES["vp"], f, x, eps=1.5)
    with pytest.raises(ValueError, match="B=4"):
        sd.dsm_loss(jax.random.split(key, 3), SDES["vp"], f, x)
    with pytest.raises(ValueError, match=r"\(B, \*dims\)"):
        sd.dsm_loss(key, SDES["vp"], f, jnp.zeros(4))
    with pytest.raises(TypeError, match="VESDE"):
        sd.smld_loss(key, SDES["vp"], f, x)
    with pytest.raises(TypeError, match="VPSDE"):
        sd.ddpm_loss(key, SDES["ve"], f, x)
    with pytest.raises(ValueError, match="SubVPSDE"):
        sd.get_model_loss_fn(SDES["subvp"], _Net(), continuous=False)
    with pytest.raises(ValueError, match="continuous loss only"):
        sd.get_model_loss_fn(SDES["vp"], _Net(), continuous=False, likelihood_weighting=True)
    with pytest.raises(TypeError, match="pair"):
        sd.dsm_loss(key, SDES["vp"], f, x, has_aux=True)
