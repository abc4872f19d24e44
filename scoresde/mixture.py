"""Gaussian mixtures with exact scores under any forward SDE of this library.

For the linear SDEs here the perturbation kernel is
:math:`p_{0t}(x_t\\mid x_0) = \\mathcal N(a(t)x_0, \\sigma(t)^2 I)`, so a mixture
:math:`\\sum_k w_k\\,\\mathcal N(\\mu_k, \\Sigma_k)` diffuses into the mixture

.. math::
    p_t = \\sum_k w_k\\,\\mathcal N\\big(a(t)\\mu_k,\\; a(t)^2\\Sigma_k + \\sigma(t)^2 I\\big),

whose score is known in closed form. That makes it the ground truth for testing samplers,
the likelihood and the losses, and a handy toy problem for research code.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from scoresde._utils import check_batch_time
from scoresde.sde import SDE, ScoreFn

_LOG_2PI = math.log(2.0 * math.pi)


@struct.dataclass
class GaussianMixture:
    r"""A mixture :math:`\sum_k w_k \mathcal N(\mu_k, \Sigma_k)` on :math:`\mathbb R^D`.

    Samples and points are batched ``(B, *event_shape)``; ``event_shape`` flattens to ``D``.

    Attributes:
      weights: ``(K,)`` mixture weights, positive, summing to one.
      means: ``(K, D)`` component means.
      covs: ``(K, D, D)`` component covariances (symmetric positive definite).
      event_shape: shape of one sample, e.g. ``(2,)`` or ``(4, 4, 1)``; its size is ``D``.
      eigvals, eigvecs: the eigendecomposition :math:`\Sigma_k = U_k \Lambda_k U_k^\top`,
        ``(K, D)`` and ``(K, D, D)``; computed on the host at construction when ``covs`` is
        concrete, else traced (leave them out; ``replace(covs=...)`` recomputes them). The
        diffused covariance :math:`a^2\Sigma_k + \sigma^2 I`
        has the same eigenvectors, so scores and densities need only matrix products: no
        per-sample factorization, and no LAPACK call under ``jit`` (two batched LAPACK calls
        running at once can deadlock XLA's CPU thread pool on a 2-core machine).

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> gm = sd.GaussianMixture.isotropic(jnp.array([0.5, 0.5]),
      ...                                   jnp.array([[-2.0, 0.0], [2.0, 0.0]]), 0.1)
      >>> x = gm.sample(jax.random.key(0), 4)
      >>> gm.score_fn(sd.VPSDE())(x, jnp.full((4,), 0.5)).shape
      (4, 2)
    """

    weights: jax.Array
    means: jax.Array
    covs: jax.Array
    event_shape: tuple[int, ...] = struct.field(pytree_node=False, default=None)
    eigvals: jax.Array | None = None
    eigvecs: jax.Array | None = None

    def __post_init__(self):
        if self.eigvals is None or self.eigvecs is None:
            try:
                covs = np.asarray(self.covs)
            except jax.errors.TracerArrayConversionError:  # built inside jit / vmap
                lam, u = jnp.linalg.eigh(self.covs)
            else:
                lam, u = np.linalg.eigh(covs.astype(np.float64))
                lam, u = jnp.asarray(lam.astype(covs.dtype)), jnp.asarray(u.astype(covs.dtype))
            object.__setattr__(self, "eigvals", lam)
            object.__setattr__(self, "eigvecs", u)
        if self.event_shape is None:
            object.__setattr__(self, "event_shape", (int(jnp.shape(self.means)[-1]),))
        k, d = jnp.shape(self.means)
        if jnp.shape(self.weights) != (k,):
            raise ValueError(
                f"GaussianMixture: weights must have shape ({k},), got {jnp.shape(self.weights)}."
            )
        if jnp.shape(self.covs) != (k, d, d):
            raise ValueError(
                f"GaussianMixture: covs must have shape ({k}, {d}, {d}), got {jnp.shape(self.covs)}."
            )
        if math.prod(self.event_shape) != d:
            raise ValueError(
                f"GaussianMixture: event_shape {self.event_shape} has {math.prod(self.event_shape)} "
                f"elements but the means have dimension {d}."
            )

    @classmethod
    def isotropic(cls, weights, means, std, event_shape=None) -> GaussianMixture:
        """A mixture whose components all have covariance ``std**2 * I``."""
        means = jnp.asarray(means)
        k, d = means.shape
        covs = jnp.broadcast_to(jnp.eye(d, dtype=means.dtype) * jnp.asarray(std) ** 2, (k, d, d))
        return cls(jnp.asarray(weights), means, covs, event_shape=event_shape)

    @property
    def dim(self) -> int:
        return int(self.means.shape[-1])

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """Draws ``n`` samples, shape ``(n, *event_shape)``."""
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.choice(k_comp, self.weights.shape[0], (n,), p=self.weights)
        chol = jnp.linalg.cholesky(self.covs)
        z = jax.random.normal(k_noise, (n, self.dim), dtype=self.means.dtype)
        x = self.means[comp] + jnp.einsum("nij,nj->ni", chol[comp], z)
        return x.reshape((n, *self.event_shape))

    def _marginal(self, x_flat, sde: SDE | None, t: jax.Array | None):
        """Per sample and component: the eigenbasis coordinates of ``mean - x`` and the
        variances along them, ``(B, K, D)`` each, of the mixture or of its marginal ``p_t``."""
        if sde is None:
            a = jnp.ones((x_flat.shape[0],), x_flat.dtype)
            std = jnp.zeros_like(a)
        else:
            mean_coeff, std = sde.marginal_prob(jnp.ones((t.shape[0], 1), x_flat.dtype), t)
            a = mean_coeff[:, 0]
        var = (a**2)[:, None, None] * self.eigvals[None] + (std**2)[:, None, None]
        diff = a[:, None, None] * self.means[None] - x_flat[:, None, :]
        coords = jnp.einsum("kji,bkj->bki", self.eigvecs, diff)
        return coords, var

    def _log_resp(self, coords, var):
        """(B, K): log w_k + log N_k(x)."""
        quad = jnp.sum(coords**2 / var, axis=-1)
        logdet = jnp.sum(jnp.log(var), axis=-1)
        return jnp.log(self.weights) - 0.5 * (self.dim * _LOG_2PI + logdet + quad)

    def log_prob(
        self, x: jax.Array, sde: SDE | None = None, t: jax.Array | None = None
    ) -> jax.Array:
        """Log-density ``(B,)`` of the mixture, or of its marginal ``p_t`` under ``sde`` at ``t``."""
        x_flat = x.reshape((x.shape[0], -1))
        if sde is not None:
            check_batch_time(x, t, where="GaussianMixture.log_prob")
        return jax.nn.logsumexp(self._log_resp(*self._marginal(x_flat, sde, t)), axis=-1)

    def score(self, x: jax.Array, sde: SDE | None = None, t: jax.Array | None = None) -> jax.Array:
        r"""Exact score :math:`\nabla_x \log p_t(x) = \sum_k r_k(x)\,C_k^{-1}(m_k - x)`."""
        x_flat = x.reshape((x.shape[0], -1))
        coords, var = self._marginal(x_flat, sde, t)
        resp = jax.nn.softmax(self._log_resp(coords, var), axis=-1)  # (B, K)
        precision_diff = jnp.einsum("kij,bkj->bki", self.eigvecs, coords / var)
        s = jnp.sum(resp[..., None] * precision_diff, axis=1)
        return s.reshape(x.shape)

    def score_fn(self, sde: SDE) -> ScoreFn:
        """The exact ``score_fn(x, t)`` of the mixture diffused by ``sde``."""

        def score_fn(x, t):
            check_batch_time(x, t, where="GaussianMixture.score_fn")
            return self.score(x, sde, t)

        return score_fn


def _replace(self: GaussianMixture, **updates) -> GaussianMixture:
    """A copy with fields replaced; new ``covs`` without a new decomposition get a fresh one
    (flax's ``replace`` would carry the old ``eigvals`` / ``eigvecs`` over)."""
    if "covs" in updates:
        updates.setdefault("eigvals", None)
        updates.setdefault("eigvecs", None)
    return dataclasses.replace(self, **updates)


GaussianMixture.replace = _replace
