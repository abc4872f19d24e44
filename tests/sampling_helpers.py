"""Shared helpers of the sampler tests: mixtures, their exact statistics at ``eps``, counters.

For well-separated modes every sample belongs to one mode (the other responsibilities are
below ``exp(-separation^2 / (8 s^2))``, negligible here), so each mode's statistics are those
of one Gaussian component:

- without denoising the samples follow the mixture diffused to ``eps``: mode ``k`` has mean
  ``a mu_k`` and per-coordinate std ``sqrt(a^2 s^2 + sigma^2)``;
- with Tweedie denoising ``x0 = E[x_0 | x_eps]`` is the affine map
  ``mu_k + a s^2 / (a^2 s^2 + sigma^2) (x_eps - a mu_k)`` of that Gaussian: mean ``mu_k``,
  std ``a s^2 / sqrt(a^2 s^2 + sigma^2)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import scoresde as sd

EPS = 1e-3
#: Monte Carlo error multiplier: 5 standard errors, two-sided p ~ 6e-7 per check.
N_SE = 5.0


def mixture_2d():
    """Two modes at (-2, -2) and (2, 2), std 0.2, weights 0.3 / 0.7 (separation 28 stds)."""
    return sd.GaussianMixture.isotropic(
        jnp.array([0.3, 0.7]), jnp.array([[-2.0, -2.0], [2.0, 2.0]]), 0.2
    )


def mixture_16d():
    """Two modes at -/+ 0.5 * ones(16) (distance 4), std 0.3, weights 0.4 / 0.6."""
    d = 16
    means = jnp.stack([-0.5 * jnp.ones(d), 0.5 * jnp.ones(d)])
    return sd.GaussianMixture.isotropic(jnp.array([0.4, 0.6]), means, 0.3)


def sdes(n: int):
    """VP, sub-VP and VE (sigma_max = 20 covers the data's spread) with N = n."""
    return {
        "vp": sd.VPSDE(N=n),
        "subvp": sd.SubVPSDE(N=n),
        "ve": sd.VESDE(sigma_min=0.01, sigma_max=20.0, N=n),
    }


def isotropic_score_fn(gm, sde):
    """The exact score of an isotropic mixture diffused by ``sde``, without linear algebra.

    Component ``k`` of ``p_t`` is ``N(a mu_k, v I)`` with ``v = a^2 s^2 + sigma^2``, so the score
    is ``sum_k r_k (a mu_k - x) / v`` with softmax responsibilities ``r_k``. Equal to
    ``gm.score_fn(sde)`` (checked in ``test_isotropic_score_matches_mixture``) and much cheaper
    on CPU than its batched Cholesky factorizations.
    """
    s2 = gm.covs[0, 0, 0]

    def score_fn(x, t):
        x_flat = x.reshape(x.shape[0], -1)
        mean_coeff, std = sde.marginal_prob(jnp.ones((x.shape[0], 1), x.dtype), t)
        a = mean_coeff[:, :1]
        v = (a**2 * s2 + std[:, None] ** 2)[:, :, None]  # (B, 1, 1)
        diff = a[:, :, None] * gm.means[None] - x_flat[:, None, :]  # (B, K, D)
        logits = jnp.log(gm.weights) - 0.5 * jnp.sum(diff**2, -1) / v[:, :, 0]
        resp = jax.nn.softmax(logits, axis=-1)
        return (jnp.sum(resp[..., None] * diff, axis=1) / v[:, 0]).reshape(x.shape)

    return score_fn


def expected_mode_stats(gm, sde, denoise: bool, eps: float = EPS):
    """Per-mode mean (K, D) and per-coordinate std at ``eps`` (see the module docstring)."""
    ones = jnp.ones((1, 1))
    mean_coeff, std = sde.marginal_prob(ones, jnp.array([eps]))
    a, sigma = float(mean_coeff[0, 0]), float(std[0])
    s = float(jnp.sqrt(gm.covs[0, 0, 0]))
    var_eps = a**2 * s**2 + sigma**2
    if denoise:
        return np.asarray(gm.means), a * s**2 / math.sqrt(var_eps)
    return a * np.asarray(gm.means), math.sqrt(var_eps)


def check_mixture(x, gm, sde, denoise, *, weight_allowance=0.0, rel_std_tol=0.1, mean_bias=0.0):
    """Asserts mode weights, means and spreads of samples ``x`` against the exact values.

    Modes are assigned by the sign of the projection on ``mu_1 - mu_0`` (the midpoint is 0).
    Tolerances: weights ``N_SE * sqrt(w (1 - w) / n) + weight_allowance``; means
    ``N_SE * std / sqrt(n_k) + mean_bias`` per coordinate; stds relative ``rel_std_tol``
    (the Monte Carlo part, ``N_SE / sqrt(2 n_k)``, is ~ 0.1 at n_k = 1000, the rest is the
    discretization bias allowance the caller states).
    """
    x = np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)
    n = x.shape[0]
    assert np.all(np.isfinite(x))
    direction = np.asarray(gm.means[1] - gm.means[0])
    label = (x @ direction > 0).astype(int)
    means, std = expected_mode_stats(gm, sde, denoise)
    weights = np.asarray(gm.weights)
    for k in range(2):
        w_hat = np.mean(label == k)
        tol_w = N_SE * math.sqrt(weights[k] * (1 - weights[k]) / n) + weight_allowance
        assert abs(w_hat - weights[k]) < tol_w, (k, w_hat, weights[k], tol_w)
        xk = x[label == k]
        nk = xk.shape[0]
        tol_m = N_SE * std / math.sqrt(nk) + mean_bias
        np.testing.assert_allclose(xk.mean(0), means[k], atol=tol_m, err_msg=f"mean of mode {k}")
        std_hat = xk.std(0).mean()  # averaging over coordinates only shrinks the MC error
        assert abs(std_hat / std - 1) < rel_std_tol, (k, std_hat, std)


class ScoreCallCounter:
    """Wraps a score function with a ``jax.debug.callback`` that counts executed calls."""

    def __init__(self, score_fn):
        self.calls = 0
        self._score_fn = score_fn

    def _tick(self):
        self.calls += 1

    def __call__(self, x, t):
        jax.debug.callback(self._tick)
        return self._score_fn(x, t)

    def count(self) -> int:
        jax.effects_barrier()
        return self.calls
