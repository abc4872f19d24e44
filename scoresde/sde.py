"""Forward SDEs of score-based generative modeling: VP, sub-VP and VE.

Each SDE is an immutable dataclass with `flax.struct` fields. Its hyperparameters are PyTree
leaves (so an SDE can be passed through `jax.jit` and `jax.vmap`), the number of
discretization steps ``N`` is static metadata. All methods are pure. The PyTree structure
holds the SDE's class (:mod:`scoresde.pytree_dataclass`), so a jitted function never mixes up
the programs it traced for VP, sub-VP and VE, whose structures would otherwise compare equal.

Everything that differs between the SDEs lives here as a method, so that samplers,
losses and the likelihood never branch on the SDE's class:

- :meth:`SDE.network_labels` — the conditioning label a network is fed at time ``t``;
- :meth:`SDE.output_to_score` — how a network output becomes a score;
- :meth:`SDE.ancestral_step` — the ancestral-sampling update from ``t`` to ``t_next``;
- :meth:`SDE.langevin_alpha` — the ``alpha`` of the (annealed) Langevin step size.

Reference: Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, "Score-Based Generative
Modeling through Stochastic Differential Equations", ICLR 2021.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from scoresde import pytree_dataclass
from scoresde._utils import (
    batch_broadcast,
    check_batch_time,
    check_finite_positive,
    is_concrete_number,
)

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
"""A score function ``score_fn(x, t) -> s`` with ``x: (B, *dims)``, ``t: (B,)``, ``s`` like ``x``."""

#: Final time of every forward SDE here.
T_FINAL = 1.0

_LOG_2PI = math.log(2.0 * math.pi)


def _check_N(N, owner: str) -> None:
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"{owner}: N must be an integer >= 1, got N={N!r}.")


def _discrete_index(t: jax.Array, N: int) -> jax.Array:
    """``floor(t (N - 1) / T)``, the reference's index of the discrete step at time ``t``."""
    index = (t * (N - 1) / T_FINAL).astype(jnp.int32)
    return jnp.clip(index, 0, N - 1)


def _standard_normal_logp(z: jax.Array, scale) -> jax.Array:
    """Per-sample log-density of ``N(0, scale^2 I)`` at ``z: (B, *dims)``, in nats."""
    d = math.prod(z.shape[1:])
    sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=-1)
    return -0.5 * d * (_LOG_2PI + 2.0 * jnp.log(scale)) - 0.5 * sq / scale**2


class SDE(abc.ABC):
    r"""Abstract forward SDE :math:`dx = f(x, t)\,dt + g(t)\,dw` on :math:`t \in [0, T]`.

    Concrete SDEs are :class:`VPSDE`, :class:`SubVPSDE` and :class:`VESDE`.

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> x, t = jnp.zeros((2, 3)), jnp.array([0.2, 0.8])
      >>> [type(s).__name__ for s in (sd.VPSDE(), sd.SubVPSDE(), sd.VESDE())
      ...  if isinstance(s, sd.SDE) and s.marginal_prob(x, t)[1].shape == (2,)]
      ['VPSDE', 'SubVPSDE', 'VESDE']
    """

    N: int

    @property
    def T(self) -> float:
        """End time of the forward SDE (always 1.0)."""
        return T_FINAL

    @abc.abstractmethod
    def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Drift ``f(x, t)`` (shaped like ``x``) and diffusion ``g(t)`` of shape ``(B,)``."""

    @abc.abstractmethod
    def marginal_prob(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean (like ``x``) and std ``(B,)`` of the perturbation kernel ``p_{0t}(x(t) | x(0)=x)``."""

    @abc.abstractmethod
    def prior_sampling(self, key: jax.Array, shape: Sequence[int], dtype=None) -> jax.Array:
        """Draws from the prior ``p_T`` with the given shape ``(B, *dims)``."""

    @abc.abstractmethod
    def prior_logp(self, z: jax.Array) -> jax.Array:
        """Log-density of the prior at ``z: (B, *dims)``, in nats, shape ``(B,)``."""

    def discretize(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        r"""One discrete step :math:`x_{i+1} = x_i + f_i(x_i) + G_i z_i`.

        The default is Euler-Maruyama with :math:`\Delta t = 1/N`:
        :math:`f = f(x, t)\Delta t`, :math:`G = g(t)\sqrt{\Delta t}`.

        Returns:
          ``(f, G)`` with ``f`` shaped like ``x`` and ``G`` of shape ``(B,)``.
        """
        drift, diffusion = self.sde(x, t)
        dt = 1.0 / self.N
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or probability-flow ODE) driven by ``score_fn``.

        Example:
          >>> import jax.numpy as jnp, scoresde as sd
          >>> sde = sd.VPSDE()
          >>> rsde = sde.reverse(lambda x, t: -x)
          >>> drift, diffusion = rsde.sde(jnp.ones((2, 3)), jnp.full((2,), 0.5))
          >>> drift.shape, diffusion.shape
          ((2, 3), (2,))
        """
        return ReverseSDE(forward=self, score_fn=score_fn, probability_flow=probability_flow)

    # --- what differs between SDE families -------------------------------------------------

    @abc.abstractmethod
    def network_labels(self, t: jax.Array, continuous: bool = True) -> jax.Array:
        """The conditioning label a score network is fed at time ``t`` (reference convention)."""

    @abc.abstractmethod
    def output_to_score(
        self, output: jax.Array, t: jax.Array, continuous: bool = True
    ) -> jax.Array:
        """Turns a network output at time ``t`` into a score (reference convention)."""

    @abc.abstractmethod
    def ancestral_step(
        self,
        x: jax.Array,
        t: jax.Array,
        t_next: jax.Array,
        score: jax.Array,
        noise: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """One ancestral-sampling step from ``t`` to ``t_next < t``.

        Returns:
          ``(x_next, x_next_mean)``: the sample and its noiseless mean.
        """

    @abc.abstractmethod
    def langevin_alpha(self, t: jax.Array) -> jax.Array:
        r"""The :math:`\alpha_i` of the Langevin step size :math:`2\alpha_i(r\|z\|/\|s\|)^2`, ``(B,)``."""


@pytree_dataclass.dataclass
class VPSDE(SDE):
    r"""Variance-preserving SDE, the continuous limit of DDPM.

    .. math::
        dx = -\tfrac12 \beta(t) x\,dt + \sqrt{\beta(t)}\,dw,\qquad
        \beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min}).

    Marginal: :math:`x(t) \mid x(0) \sim \mathcal N(e^{m(t)} x(0), (1 - e^{2m(t)}) I)` with
    :math:`m(t) = -\tfrac14 t^2 (\beta_{\max} - \beta_{\min}) - \tfrac12 t \beta_{\min}`.
    Prior :math:`\mathcal N(0, I)`.

    Args:
      beta_min: :math:`\beta_{\min} > 0`.
      beta_max: :math:`\beta_{\max} > \beta_{\min}`.
      N: number of discrete steps (DDPM's ``betas = linspace(beta_min/N, beta_max/N, N)``).

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> sde = sd.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
      >>> mean, std = sde.marginal_prob(jnp.ones((2, 4)), jnp.array([0.0, 0.5]))
      >>> [round(float(s), 4) for s in std]
      [0.0, 0.9597]
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = struct.field(pytree_node=False, default=1000)

    def __post_init__(self):
        _check_N(self.N, "VPSDE")
        check_finite_positive("beta_min", self.beta_min, owner="VPSDE")
        check_finite_positive("beta_max", self.beta_max, owner="VPSDE")
        if is_concrete_number(self.beta_min) and is_concrete_number(self.beta_max):
            if float(self.beta_max) <= float(self.beta_min):
                raise ValueError(
                    f"VPSDE: beta_max must be > beta_min, got beta_min={self.beta_min!r}, "
                    f"beta_max={self.beta_max!r}."
                )

    # DDPM tables -------------------------------------------------------------------------
    @property
    def discrete_betas(self) -> jax.Array:
        """DDPM's :math:`\\beta_i`, ``linspace(beta_min/N, beta_max/N, N)``."""
        return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @property
    def alphas(self) -> jax.Array:
        """:math:`\\alpha_i = 1 - \\beta_i`."""
        return 1.0 - self.discrete_betas

    @property
    def alphas_cumprod(self) -> jax.Array:
        """:math:`\\bar\\alpha_i = \\prod_{j \\le i} \\alpha_j`."""
        return jnp.cumprod(self.alphas)

    @property
    def sqrt_1m_alphas_cumprod(self) -> jax.Array:
        """:math:`\\sqrt{1 - \\bar\\alpha_i}`, the std of DDPM's discrete marginals."""
        return jnp.sqrt(1.0 - self.alphas_cumprod)

    def beta(self, t: jax.Array) -> jax.Array:
        """:math:`\\beta(t) = \\beta_{\\min} + t(\\beta_{\\max} - \\beta_{\\min})`."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: jax.Array) -> jax.Array:
        """:math:`m(t) = -\\tfrac14 t^2 (\\beta_{\\max} - \\beta_{\\min}) - \\tfrac12 t\\beta_{\\min}`."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    # SDE -----------------------------------------------------------------------------------
    def sde(self, x, t):
        check_batch_time(x, t, where="VPSDE.sde")
        beta_t = self.beta(t)
        return -0.5 * batch_broadcast(beta_t, x) * x, jnp.sqrt(beta_t)

    def marginal_prob(self, x, t):
        check_batch_time(x, t, where="VPSDE.marginal_prob")
        m = self.log_mean_coeff(t)
        mean = batch_broadcast(jnp.exp(m), x) * x
        std = jnp.sqrt(-jnp.expm1(2.0 * m))
        return mean, std

    def prior_sampling(self, key, shape, dtype=None):
        return jax.random.normal(key, tuple(shape), dtype=dtype or jnp.result_type(float))

    def prior_logp(self, z):
        return _standard_normal_logp(z, 1.0)

    def discretize(self, x, t):
        r"""DDPM: :math:`f = (\sqrt{1-\beta_i} - 1)x`, :math:`G = \sqrt{\beta_i}`, ``i = floor(t(N-1))``."""
        check_batch_time(x, t, where="VPSDE.discretize")
        beta = self.discrete_betas[_discrete_index(t, self.N)].astype(x.dtype)
        f = batch_broadcast(jnp.sqrt(1.0 - beta), x) * x - x
        return f, jnp.sqrt(beta)

    # family-specific behaviour --------------------------------------------------------------
    def network_labels(self, t, continuous=True):
        """``999 t`` when continuous (the reference's rescaling), else ``t (N - 1)``; floats."""
        return t * 999.0 if continuous else t * (self.N - 1)

    def output_to_score(self, output, t, continuous=True):
        r"""The network predicts :math:`\epsilon`: score :math:`= -\text{output}/\sigma(t)`.

        Continuous: :math:`\sigma(t)` of :meth:`marginal_prob`; discrete: DDPM's
        :math:`\sqrt{1-\bar\alpha_i}` at ``i = floor(t (N - 1))``.
        """
        if continuous:
            std = jnp.sqrt(-jnp.expm1(2.0 * self.log_mean_coeff(t)))
        else:
            std = self.sqrt_1m_alphas_cumprod[_discrete_index(t, self.N)]
        return -output / batch_broadcast(std.astype(output.dtype), output)

    def ancestral_step(self, x, t, t_next, score, noise):
        r"""DDPM ancestral step: :math:`\bar x = (x + \beta_i s)/\sqrt{1-\beta_i}`, :math:`x' = \bar x + \sqrt{\beta_i} z`.

        ``t_next`` is not used: the step size is DDPM's :math:`\beta_i` at ``i = floor(t(N-1))``.
        """
        del t_next
        if is_concrete_number(self.beta_max) and float(self.beta_max) / self.N >= 1.0:
            raise ValueError(
                f"VPSDE.ancestral_step: DDPM's discrete betas reach beta_max / N = "
                f"{float(self.beta_max)}/{self.N} >= 1, where the step divides by "
                f"sqrt(1 - beta) <= 0; use N > beta_max (e.g. N={int(self.beta_max) + 1} or more)."
            )
        beta = batch_broadcast(self.discrete_betas[_discrete_index(t, self.N)], x).astype(x.dtype)
        x_mean = (x + beta * score) / jnp.sqrt(1.0 - beta)
        return x_mean + jnp.sqrt(beta) * noise, x_mean

    def langevin_alpha(self, t):
        return self.alphas[_discrete_index(t, self.N)]


@pytree_dataclass.dataclass
class SubVPSDE(SDE):
    r"""Sub-variance-preserving SDE.

    .. math::
        dx = -\tfrac12\beta(t)x\,dt + \sqrt{\beta(t)\left(1 - e^{-2\int_0^t\beta(s)ds}\right)}\,dw.

    Marginal: :math:`x(t)\mid x(0) \sim \mathcal N(e^{m(t)}x(0), (1 - e^{2m(t)})^2 I)` with the
    same :math:`m(t)` as :class:`VPSDE`; its variance is never larger than VP's. Prior
    :math:`\mathcal N(0, I)`.

    Args:
      beta_min: :math:`\beta_{\min} > 0`.
      beta_max: :math:`\beta_{\max} > \beta_{\min}`.
      N: number of discretization steps (Euler-Maruyama with :math:`\Delta t = 1/N`).

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> sde = sd.SubVPSDE()
      >>> _, std = sde.marginal_prob(jnp.zeros((1, 2)), jnp.array([0.5]))
      >>> round(float(std[0]), 4)
      0.9209
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = struct.field(pytree_node=False, default=1000)

    def __post_init__(self):
        _check_N(self.N, "SubVPSDE")
        check_finite_positive("beta_min", self.beta_min, owner="SubVPSDE")
        check_finite_positive("beta_max", self.beta_max, owner="SubVPSDE")
        if is_concrete_number(self.beta_min) and is_concrete_number(self.beta_max):
            if float(self.beta_max) <= float(self.beta_min):
                raise ValueError(
                    f"SubVPSDE: beta_max must be > beta_min, got beta_min={self.beta_min!r}, "
                    f"beta_max={self.beta_max!r}."
                )

    @property
    def discrete_betas(self) -> jax.Array:
        """The VP schedule's discrete :math:`\\beta_i` (used for the Langevin step's alpha)."""
        return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _std(self, t):
        return -jnp.expm1(2.0 * self.log_mean_coeff(t))

    def sde(self, x, t):
        check_batch_time(x, t, where="SubVPSDE.sde")
        beta_t = self.beta(t)
        # 1 - exp(-2 int_0^t beta) = 1 - exp(4 m(t))
        discount = -jnp.expm1(4.0 * self.log_mean_coeff(t))
        return -0.5 * batch_broadcast(beta_t, x) * x, jnp.sqrt(beta_t * discount)

    def marginal_prob(self, x, t):
        check_batch_time(x, t, where="SubVPSDE.marginal_prob")
        mean = batch_broadcast(jnp.exp(self.log_mean_coeff(t)), x) * x
        return mean, self._std(t)

    def prior_sampling(self, key, shape, dtype=None):
        return jax.random.normal(key, tuple(shape), dtype=dtype or jnp.result_type(float))

    def prior_logp(self, z):
        return _standard_normal_logp(z, 1.0)

    def network_labels(self, t, continuous=True):
        """``999 t`` (the reference has only the continuous convention for sub-VP)."""
        del continuous
        return t * 999.0

    def output_to_score(self, output, t, continuous=True):
        r"""score :math:`= -\text{output}/\sigma(t)`, :math:`\sigma(t) = 1 - e^{2m(t)}`."""
        del continuous
        return -output / batch_broadcast(self._std(t).astype(output.dtype), output)

    def ancestral_step(self, x, t, t_next, score, noise):
        r"""Ancestral step through the exact Gaussian posterior :math:`q(x_s \mid x_t, \hat x_0)`.

        With :math:`a(t) = e^{m(t)}`, :math:`\sigma_t` the marginal std and the transition
        variance :math:`v_{ts} = \sigma_t^2 - (a_t/a_s)^2\sigma_s^2`, the Tweedie estimate
        :math:`\hat x_0 = (x_t + \sigma_t^2 s)/a_t` gives mean
        :math:`(a_t/a_s)\sigma_s^2/\sigma_t^2\,x_t + a_s v_{ts}/\sigma_t^2\,\hat x_0` and variance
        :math:`v_{ts}\sigma_s^2/\sigma_t^2`. (For VE the same formula is the SMLD step.)
        """
        a_t = jnp.exp(self.log_mean_coeff(t))
        a_s = jnp.exp(self.log_mean_coeff(t_next))
        var_t = self._std(t) ** 2
        var_s = self._std(t_next) ** 2
        a_ts = a_t / a_s
        v_ts = jnp.maximum(var_t - a_ts**2 * var_s, 0.0)
        x0_hat = (x + batch_broadcast(var_t, x) * score) / batch_broadcast(a_t, x)
        c_x = batch_broadcast(a_ts * var_s / var_t, x)
        c_0 = batch_broadcast(a_s * v_ts / var_t, x)
        x_mean = c_x * x + c_0 * x0_hat
        std = batch_broadcast(jnp.sqrt(v_ts * var_s / var_t), x)
        return x_mean + std * noise, x_mean

    def langevin_alpha(self, t):
        """``1 - beta_i`` of the VP schedule (the reference crashes here; this is VP's rule)."""
        return 1.0 - self.discrete_betas[_discrete_index(t, self.N)]


@pytree_dataclass.dataclass
class VESDE(SDE):
    r"""Variance-exploding SDE, the continuous limit of SMLD/NCSN.

    .. math::
        dx = \sigma(t)\sqrt{2\log(\sigma_{\max}/\sigma_{\min})}\,dw,\qquad
        \sigma(t) = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^t.

    Marginal: :math:`x(t)\mid x(0)\sim\mathcal N(x(0), \sigma(t)^2 I)` (the reference's
    convention, which leaves out the tiny :math:`-\sigma_{\min}^2`). Prior
    :math:`\mathcal N(0, \sigma_{\max}^2 I)`.

    Args:
      sigma_min: :math:`0 < \sigma_{\min}`.
      sigma_max: :math:`\sigma_{\max} > \sigma_{\min}`.
      N: number of noise scales (SMLD's geometric :math:`\sigma_i`, smallest first).

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> sde = sd.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)
      >>> _, std = sde.marginal_prob(jnp.zeros((2, 3)), jnp.array([0.0, 1.0]))
      >>> [round(float(s), 4) for s in std]
      [0.01, 50.0]
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = struct.field(pytree_node=False, default=1000)

    def __post_init__(self):
        _check_N(self.N, "VESDE")
        check_finite_positive("sigma_min", self.sigma_min, owner="VESDE")
        check_finite_positive("sigma_max", self.sigma_max, owner="VESDE")
        if is_concrete_number(self.sigma_min) and is_concrete_number(self.sigma_max):
            if float(self.sigma_max) <= float(self.sigma_min):
                raise ValueError(
                    f"VESDE: sigma_max must be > sigma_min, got sigma_min={self.sigma_min!r}, "
                    f"sigma_max={self.sigma_max!r}."
                )

    @property
    def discrete_sigmas(self) -> jax.Array:
        """SMLD's noise scales ``exp(linspace(log sigma_min, log sigma_max, N))``, ascending."""
        return jnp.exp(jnp.linspace(jnp.log(self.sigma_min), jnp.log(self.sigma_max), self.N))

    def sigma(self, t: jax.Array) -> jax.Array:
        """:math:`\\sigma(t) = \\sigma_{\\min}(\\sigma_{\\max}/\\sigma_{\\min})^t`."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x, t):
        check_batch_time(x, t, where="VESDE.sde")
        sigma = self.sigma(t)
        diffusion = sigma * jnp.sqrt(2.0 * (jnp.log(self.sigma_max) - jnp.log(self.sigma_min)))
        return jnp.zeros_like(x), diffusion

    def marginal_prob(self, x, t):
        check_batch_time(x, t, where="VESDE.marginal_prob")
        return x, self.sigma(t)

    def prior_sampling(self, key, shape, dtype=None):
        z = jax.random.normal(key, tuple(shape), dtype=dtype or jnp.result_type(float))
        return z * self.sigma_max

    def prior_logp(self, z):
        return _standard_normal_logp(z, jnp.asarray(self.sigma_max, z.dtype))

    def _sigma_and_previous(self, t):
        index = _discrete_index(t, self.N)
        sigmas = self.discrete_sigmas
        sigma = sigmas[index]
        previous = jnp.where(index == 0, 0.0, sigmas[jnp.maximum(index - 1, 0)])
        return sigma, previous

    def discretize(self, x, t):
        r"""SMLD: :math:`f = 0`, :math:`G = \sqrt{\sigma_i^2 - \sigma_{i-1}^2}` with :math:`\sigma_{-1}=0`."""
        check_batch_time(x, t, where="VESDE.discretize")
        sigma, previous = self._sigma_and_previous(t)
        G = jnp.sqrt(sigma**2 - previous**2).astype(x.dtype)
        return jnp.zeros_like(x), G

    def network_labels(self, t, continuous=True):
        """``sigma(t)`` when continuous; else the integer level ``round((T - t)(N - 1))``."""
        if continuous:
            return self.sigma(t)
        return jnp.round((self.T - t) * (self.N - 1)).astype(jnp.int32)

    def output_to_score(self, output, t, continuous=True):
        """The network output is the score itself (NCSN models divide by sigma inside)."""
        del t, continuous
        return output

    def ancestral_step(self, x, t, t_next, score, noise):
        r"""SMLD ancestral step (paper, App. F): :math:`\bar x = x + (\sigma_i^2 - \sigma_{i-1}^2)s`,
        std :math:`\sqrt{\sigma_{i-1}^2(\sigma_i^2-\sigma_{i-1}^2)/\sigma_i^2}`.

        ``t_next`` is not used: the levels are SMLD's discrete :math:`\sigma_i` at ``floor(t(N-1))``.
        """
        del t_next
        sigma, previous = self._sigma_and_previous(t)
        dvar = batch_broadcast(sigma**2 - previous**2, x).astype(x.dtype)
        x_mean = x + dvar * score
        std = batch_broadcast(jnp.sqrt(previous**2 * (sigma**2 - previous**2) / sigma**2), x)
        return x_mean + std.astype(x.dtype) * noise, x_mean

    def langevin_alpha(self, t):
        return jnp.ones_like(t)


@pytree_dataclass.dataclass
class ReverseSDE:
    r"""The reverse-time SDE of a forward SDE, driven by a score function.

    .. math::
        dx = [f(x,t) - g(t)^2 \nabla_x\log p_t(x)]\,dt + g(t)\,d\bar w,

    or, with ``probability_flow=True``, the probability-flow ODE
    :math:`dx = [f(x,t) - \tfrac12 g(t)^2\nabla_x\log p_t(x)]\,dt`. Time runs from ``T``
    down to 0; the drift is the one to integrate with a negative ``dt``.

    Attributes:
      forward: the forward :class:`SDE`.
      score_fn: ``score_fn(x, t)`` approximating :math:`\nabla_x\log p_t(x)`.
      probability_flow: whether this is the probability-flow ODE (zero diffusion).

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> ode = sd.VESDE().reverse(lambda x, t: -x, probability_flow=True)
      >>> _, diffusion = ode.sde(jnp.ones((2, 3)), jnp.full((2,), 0.5))
      >>> [float(g) for g in diffusion]
      [0.0, 0.0]
    """

    forward: SDE
    score_fn: ScoreFn = struct.field(pytree_node=False)
    probability_flow: bool = struct.field(pytree_node=False, default=False)

    @property
    def T(self) -> float:
        return self.forward.T

    @property
    def N(self) -> int:
        return self.forward.N

    def _weight(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Reverse drift :math:`f - c\\,g^2 s` (``c = 1/2`` for the ODE) and diffusion ``(B,)``."""
        drift, diffusion = self.forward.sde(x, t)
        score = self.score_fn(x, t)
        drift = drift - batch_broadcast(diffusion**2, x) * score * self._weight()
        diffusion = jnp.zeros_like(diffusion) if self.probability_flow else diffusion
        return drift, diffusion

    def discretize(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Reverse discretization: :math:`f - c\\,G^2 s` and ``G`` (zero for the ODE)."""
        f, G = self.forward.discretize(x, t)
        score = self.score_fn(x, t)
        rev_f = f - batch_broadcast(G**2, x) * score * self._weight()
        rev_G = jnp.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G
