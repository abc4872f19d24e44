"""GaussianMixture: densities against scipy, the score against autodiff of the density, and
the eigendecomposition it carries (host at construction, traced under jit, fresh on replace)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

import scoresde as sd


def full_cov_mixture(rng, k=3, d=4):
    a = rng.standard_normal((k, d, d))
    covs = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(d)
    weights = rng.uniform(0.5, 1.5, k)
    return sd.GaussianMixture(
        jnp.asarray(weights / weights.sum()),
        jnp.asarray(rng.standard_normal((k, d))),
        jnp.asarray(covs),
    )


def test_log_prob_of_the_diffused_mixture_is_scipys(x64, np_rng):
    # p_t = sum_k w_k N(a mu_k, a^2 Sigma_k + s^2 I): float64, so agreement to 1e-10.
    gm, sde = full_cov_mixture(np_rng), sd.VPSDE()
    x, t = np_rng.standard_normal((5, 4)), np.linspace(0.05, 1.0, 5)
    a, s = (np.asarray(v) for v in sde.marginal_prob(jnp.ones((5, 1)), jnp.asarray(t)))
    want = [
        np.log(
            sum(
                w
                * scipy.stats.multivariate_normal(
                    a[i, 0] * m, a[i, 0] ** 2 * c + s[i] ** 2 * np.eye(4)
                ).pdf(x[i])
                for w, m, c in zip(
                    np.asarray(gm.weights), np.asarray(gm.means), np.asarray(gm.covs), strict=True
                )
            )
        )
        for i in range(5)
    ]
    got = jax.jit(lambda g, x, t: g.log_prob(x, sde, t))(gm, jnp.asarray(x), jnp.asarray(t))
    np.testing.assert_allclose(got, want, rtol=1e-10)
    undiffused = [
        np.log(
            sum(
                w * scipy.stats.multivariate_normal(m, c).pdf(xi)
                for w, m, c in zip(
                    np.asarray(gm.weights), np.asarray(gm.means), np.asarray(gm.covs), strict=True
                )
            )
        )
        for xi in x
    ]
    np.testing.assert_allclose(gm.log_prob(jnp.asarray(x)), undiffused, rtol=1e-10)


def test_score_is_the_gradient_of_log_prob(x64, np_rng):
    gm, sde = full_cov_mixture(np_rng), sd.VESDE()
    x, t = jnp.asarray(np_rng.standard_normal((6, 4))), jnp.linspace(0.01, 1.0, 6)
    grad = jax.vmap(jax.grad(lambda xi, ti: gm.log_prob(xi[None], sde, ti[None])[0]))(x, t)
    np.testing.assert_allclose(jax.jit(gm.score_fn(sde))(x, t), grad, rtol=1e-9, atol=1e-12)


def test_decomposition_is_fresh_after_replace_and_traced_under_jit(x64, np_rng):
    gm = full_cov_mixture(np_rng)
    x = jnp.asarray(np_rng.standard_normal((3, 4)))
    wider = gm.replace(covs=4.0 * gm.covs)
    np.testing.assert_allclose(wider.eigvals, 4.0 * gm.eigvals, rtol=1e-12)
    built_in_jit = jax.jit(lambda c: sd.GaussianMixture(gm.weights, gm.means, c).log_prob(x))
    np.testing.assert_allclose(built_in_jit(4.0 * gm.covs), wider.log_prob(x), rtol=1e-10)
