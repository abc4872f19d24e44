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

import math

import jax
import jax.numpy as jnp
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

    def __post_init__(self):
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

    def _component_logpdf(self, x_flat, means, covs):
        # x_flat (B, D); means (B, K, D); covs (B, K, D, D) -> (B, K)
        return self._component_logpdf_chol(x_flat, means, jnp.linalg.cholesky(covs))

    def _component_logpdf_chol(self, x_flat, means, chol):
        # chol: the lower Cholesky factors of the covariances, (B, K, D, D)
        diff = x_flat[:, None, :] - means
        sol = jax.scipy.linalg.solve_triangular(chol, diff[..., None], lower=True)[..., 0]
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        return -0.5 * (self.dim * _LOG_2PI + logdet + jnp.sum(sol**2, axis=-1))

    def _marginal_params(self, sde: SDE | None, t: jax.Array | None, batch: int):
        if sde is None:
            means = jnp.broadcast_to(self.means, (batch, *self.means.shape))
            covs = jnp.broadcast_to(self.covs, (batch, *self.covs.shape))
            return means, covs
        ones = jnp.ones((t.shape[0], 1), dtype=self.means.dtype)
        mean_coeff, std = sde.marginal_prob(ones, t)
        a = mean_coeff[:, 0]
        means = a[:, None, None] * self.means[None]
        eye = jnp.eye(self.dim, dtype=self.means.dtype)
        covs = (a**2)[:, None, None, None] * self.covs[None] + (std**2)[:, None, None, None] * eye
        return means, covs

    def log_prob(
        self, x: jax.Array, sde: SDE | None = None, t: jax.Array | None = None
    ) -> jax.Array:
        """Log-density ``(B,)`` of the mixture, or of its marginal ``p_t`` under ``sde`` at ``t``."""
        x_flat = x.reshape((x.shape[0], -1))
        if sde is not None:
            check_batch_time(x, t, where="GaussianMixture.log_prob")
        means, covs = self._marginal_params(sde, t, x.shape[0])
        logpdf = self._component_logpdf(x_flat, means, covs)
        return jax.nn.logsumexp(logpdf + jnp.log(self.weights), axis=-1)

    def score(self, x: jax.Array, sde: SDE | None = None, t: jax.Array | None = None) -> jax.Array:
        r"""Exact score :math:`\nabla_x \log p_t(x) = \sum_k r_k(x)\,C_k^{-1}(m_k - x)`."""
        x_flat = x.reshape((x.shape[0], -1))
        means, covs = self._marginal_params(sde, t, x.shape[0])
        # One Cholesky factorization serves the densities and the solve (a second, LU-based
        # solve next to it could deadlock XLA's CPU thread pool on 2-core machines).
        chol = jnp.linalg.cholesky(covs)
        logpdf = self._component_logpdf_chol(x_flat, means, chol)
        resp = jax.nn.softmax(logpdf + jnp.log(self.weights), axis=-1)  # (B, K)
        diff = means - x_flat[:, None, :]
        precision_diff = jax.scipy.linalg.cho_solve((chol, True), diff[..., None])[..., 0]
        s = jnp.sum(resp[..., None] * precision_diff, axis=1)
        return s.reshape(x.shape)

    def score_fn(self, sde: SDE) -> ScoreFn:
        """The exact ``score_fn(x, t)`` of the mixture diffused by ``sde``."""

        def score_fn(x, t):
            check_batch_time(x, t, where="GaussianMixture.score_fn")
            return self.score(x, sde, t)

        return score_fn
