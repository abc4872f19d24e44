r"""Controllable generation on the predictor-corrector machinery.

- **Inpainting** (:func:`sample_inpaint`): after every predictor and corrector step at time
  :math:`t` the known entries are replaced by the forward-diffused data
  :math:`a(t)\,y + \sigma(t)z`; the unknown entries follow the unconditional sampler.
- **Colorization** (:func:`sample_colorize`): the same, in the orthogonal colour basis of
  :func:`colorization_matrix` whose first axis is the gray level: the gray channel is known,
  the two chroma channels are sampled. Because the basis is orthogonal, isotropic Gaussian
  noise stays isotropic in it, so imposing the diffused gray component is exact.
- **Class-conditional sampling** (:func:`sample_class_conditional`): the score of
  :math:`p_t(x \mid y) \propto p_t(y \mid x)^{w} p_t(x)` is
  :math:`s(x, t) + w\,\nabla_x \log p_t(y\mid x)` with a user-supplied gradient.

Every sampler returns the real denoised output: the final Tweedie step (``denoise=True``)
is applied to the whole sample, and the known entries are then set to the data itself
(the reference returns the last step's noisy values in the unknown pixels).

Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential
Equations", ICLR 2021, Section 5 and Appendix I.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from scoresde._utils import batch_broadcast
from scoresde.sampling._count import CallCounter
from scoresde.sampling.base import AbstractCorrector, batch_time, time_key
from scoresde.sampling.correctors import DEFAULT_SNR
from scoresde.sampling.denoise import tweedie_denoise
from scoresde.sampling.pc import (
    DEFAULT_EPS,
    PredictorCorrector,
    check_eps,
    check_num_steps,
    resolve_corrector,
    resolve_predictor,
    run_pc,
    sample_pc,
    sde_on_grid,
)
from scoresde.sde import SDE, ScoreFn


def colorization_matrix(dtype=jnp.float32) -> jax.Array:
    r"""An orthogonal :math:`3\times3` matrix whose first column is :math:`(1,1,1)/\sqrt3`.

    Columns: :math:`(1,1,1)/\sqrt3` (gray), :math:`(1,-1,0)/\sqrt2`, :math:`(1,1,-2)/\sqrt6`
    (chroma). For an RGB pixel :math:`x` (a row), :math:`xM` has first component
    :math:`\sqrt3\,\bar x`, with :math:`\bar x` the mean of the channels (the gray level),
    and :math:`M^{-1} = M^\top`.

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> M = sd.colorization_matrix()
      >>> bool(jnp.allclose(M @ M.T, jnp.eye(3), atol=1e-6))
      True
    """
    m = np.array(
        [
            [1 / math.sqrt(3), 1 / math.sqrt(2), 1 / math.sqrt(6)],
            [1 / math.sqrt(3), -1 / math.sqrt(2), 1 / math.sqrt(6)],
            [1 / math.sqrt(3), 0.0, -2 / math.sqrt(6)],
        ]
    )
    return jnp.asarray(m, dtype=dtype)


class KnownComponents(eqx.Module):
    r"""Imposes known components of the sample, optionally in an orthogonal channel basis.

    With :math:`M` the basis (identity when ``None``) acting on the last axis, the
    components where ``mask == 1`` of :math:`y = xM` are replaced by the forward-diffused
    data :math:`a(t)\,d + \sigma(t)\,z` (:meth:`__call__`) or by the data :math:`d` itself
    (:meth:`finalize`); then :math:`x = yM^\top`.

    Attributes:
      sde: the forward SDE.
      data: the known values in the basis, ``(B, *dims)``.
      mask: 1 where known, 0 where sampled; broadcastable to ``data``.
      key: PRNG key of the diffusion noise.
      basis: ``None`` or an orthogonal ``(C, C)`` matrix on the last axis.
    """

    sde: SDE
    data: jax.Array
    mask: jax.Array
    key: jax.Array
    basis: jax.Array | None = None

    def _to_basis(self, x):
        return x if self.basis is None else x @ self.basis

    def _from_basis(self, y):
        return y if self.basis is None else y @ self.basis.T

    def __call__(self, x: jax.Array, t: jax.Array, stream: int) -> jax.Array:
        mean, std = self.sde.marginal_prob(self.data, batch_time(x, t))
        z = jax.random.normal(time_key(jax.random.fold_in(self.key, stream), t), x.shape, x.dtype)
        known = mean + batch_broadcast(std, x) * z
        y = self._to_basis(x)
        return self._from_basis(self.mask * known + (1 - self.mask) * y)

    def finalize(self, x: jax.Array) -> jax.Array:
        """``x`` with the known components set to the data exactly."""
        y = self._to_basis(x)
        return self._from_basis(self.mask * self.data + (1 - self.mask) * y)


def _sample_known(
    key,
    sde,
    score_fn,
    shape,
    make_constraint,
    predictor,
    corrector,
    snr,
    n_corrector_steps,
    num_steps,
    eps,
    denoise,
    probability_flow,
    where,
):
    num_steps = check_num_steps(num_steps, sde, where)
    check_eps(eps, sde, where)
    sde = sde_on_grid(sde, num_steps)
    key_prior, key_noise, key_known = jax.random.split(key, 3)
    constraint = make_constraint(sde, key_known)
    solver = PredictorCorrector(
        resolve_predictor(predictor),
        resolve_corrector(corrector, snr),
        n_corrector_steps,
        constraint,
    )
    counter = CallCounter()
    score = counter.wrap(score_fn)
    x = constraint(sde.prior_sampling(key_prior, shape), jnp.asarray(sde.T), 0)
    x = run_pc(key_noise, sde, score, x, solver, num_steps, eps, probability_flow)
    if denoise:
        x = tweedie_denoise(sde, score, x, eps)
    return constraint.finalize(x), counter.value


@eqx.filter_jit
def sample_inpaint(
    key: jax.Array,
    sde: SDE,
    score_fn: ScoreFn,
    data: jax.Array,
    mask: jax.Array,
    predictor: str | diffrax.AbstractSolver = "reverse_diffusion",
    corrector: str | AbstractCorrector = "langevin",
    snr: float = DEFAULT_SNR,
    n_corrector_steps: int = 1,
    num_steps: int | None = None,
    eps: float = DEFAULT_EPS,
    denoise: bool = True,
    probability_flow: bool = False,
) -> tuple[jax.Array, jax.Array]:
    r"""Inpainting: samples the entries where ``mask == 0`` given ``data`` where ``mask == 1``.

    Args:
      key: PRNG key.
      sde: the forward SDE.
      score_fn: the unconditional ``score_fn(x, t)``.
      data: ``(B, *dims)``; only the known entries are used.
      mask: 1 (known) / 0 (to sample), broadcastable to ``data`` (e.g. ``(B, H, W, 1)``).
      predictor: the predictor, as in :func:`scoresde.sample_pc`.
      corrector: the corrector, as in :func:`scoresde.sample_pc`.
      snr: the corrector's signal-to-noise ratio, as in :func:`scoresde.sample_pc`.
      n_corrector_steps: corrector steps per time step, as in :func:`scoresde.sample_pc`.
      num_steps: grid points from ``T`` to ``eps``; ``None`` means ``sde.N``.
      eps: the last time of the grid.
      denoise: end with Tweedie's denoising step at ``eps`` (before the known entries are reset).
      probability_flow: predict with the probability-flow ODE instead of the reverse SDE.

    Returns:
      ``(x, nfe)``: the completed samples (known entries equal to ``data``) and the number
      of score evaluations.

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> gm = sd.GaussianMixture.isotropic(jnp.array([0.5, 0.5]),
      ...                                   jnp.array([[-3.0, -1.0], [3.0, 1.0]]), 0.2)
      >>> sde = sd.VPSDE(N=100)
      >>> data = jnp.full((8, 2), 3.0); mask = jnp.array([[1.0, 0.0]])
      >>> x, nfe = sd.sample_inpaint(jax.random.key(0), sde, gm.score_fn(sde), data, mask,
      ...                            corrector="ald")
      >>> bool((x[:, 0] == 3.0).all()), bool(jnp.abs(jnp.median(x[:, 1]) - 1.0) < 0.3)
      (True, True)
    """
    data = jnp.asarray(data)
    mask = jnp.asarray(mask, data.dtype)
    try:
        jnp.broadcast_shapes(mask.shape, data.shape)
    except ValueError:
        raise ValueError(
            f"sample_inpaint: mask of shape {mask.shape} does not broadcast to data of shape "
            f"{data.shape}."
        ) from None
    mask = jnp.broadcast_to(mask, data.shape)
    return _sample_known(
        key,
        sde,
        score_fn,
        data.shape,
        lambda sde, k: KnownComponents(sde, data, mask, k),
        predictor,
        corrector,
        snr,
        n_corrector_steps,
        num_steps,
        eps,
        denoise,
        probability_flow,
        "sample_inpaint",
    )


@eqx.filter_jit
def sample_colorize(
    key: jax.Array,
    sde: SDE,
    score_fn: ScoreFn,
    gray: jax.Array,
    predictor: str | diffrax.AbstractSolver = "reverse_diffusion",
    corrector: str | AbstractCorrector = "langevin",
    snr: float = DEFAULT_SNR,
    n_corrector_steps: int = 1,
    num_steps: int | None = None,
    eps: float = DEFAULT_EPS,
    denoise: bool = True,
    probability_flow: bool = False,
) -> tuple[jax.Array, jax.Array]:
    r"""Colorization: samples RGB images whose channel mean equals the given gray level.

    Args:
      key: PRNG key.
      sde: the forward SDE.
      score_fn: the unconditional score of RGB images ``(B, ..., 3)``.
      gray: gray levels ``(B, ..., 1)``, or RGB ``(B, ..., 3)`` whose channel mean is used.
      predictor: the predictor, as in :func:`scoresde.sample_pc`.
      corrector: the corrector, as in :func:`scoresde.sample_pc`.
      snr: the corrector's signal-to-noise ratio, as in :func:`scoresde.sample_pc`.
      n_corrector_steps: corrector steps per time step, as in :func:`scoresde.sample_pc`.
      num_steps: grid points from ``T`` to ``eps``; ``None`` means ``sde.N``.
      eps: the last time of the grid.
      denoise: end with Tweedie's denoising step at ``eps`` (before the known entries are reset).
      probability_flow: predict with the probability-flow ODE instead of the reverse SDE.

    Returns:
      ``(x, nfe)``: RGB samples ``(B, ..., 3)`` with ``x.mean(-1) == gray`` and the number
      of score evaluations.

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> gm = sd.GaussianMixture.isotropic(jnp.array([1.0]), jnp.array([[0.5, 0.0, -0.5]]),
      ...                                   0.1, event_shape=(1, 1, 3))
      >>> sde = sd.VESDE(sigma_max=5.0, N=100)
      >>> x, _ = sd.sample_colorize(jax.random.key(0), sde, gm.score_fn(sde),
      ...                           jnp.zeros((4, 1, 1, 1)))
      >>> bool(jnp.allclose(x.mean(-1), 0.0, atol=1e-5))
      True
    """
    gray = jnp.asarray(gray)
    if gray.ndim < 2 or gray.shape[-1] not in (1, 3):
        raise ValueError(
            "sample_colorize: gray must have shape (B, ..., 1) (gray levels) or (B, ..., 3) "
            f"(RGB, averaged over channels), got {gray.shape}."
        )
    gray = jnp.mean(gray, axis=-1, keepdims=True)
    basis = colorization_matrix(gray.dtype)
    shape = (*gray.shape[:-1], 3)
    # In the basis the first component of an RGB pixel is sqrt(3) * its gray level.
    data = jnp.concatenate(
        [math.sqrt(3.0) * gray, jnp.zeros((*gray.shape[:-1], 2), gray.dtype)], -1
    )
    mask = jnp.broadcast_to(jnp.array([1.0, 0.0, 0.0], gray.dtype), shape)
    return _sample_known(
        key,
        sde,
        score_fn,
        shape,
        lambda sde, k: KnownComponents(sde, data, mask, k, basis),
        predictor,
        corrector,
        snr,
        n_corrector_steps,
        num_steps,
        eps,
        denoise,
        probability_flow,
        "sample_colorize",
    )


def _guided_score(score_fn, grad_log_likelihood, labels, guidance_scale, x, t):
    return score_fn(x, t) + guidance_scale * grad_log_likelihood(x, t, labels)


def classifier_guided_score(
    score_fn: ScoreFn,
    grad_log_likelihood: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    labels: jax.Array,
    guidance_scale: float = 1.0,
) -> ScoreFn:
    r"""The guided score :math:`s(x, t) + w\,\nabla_x \log p_t(y \mid x)`.

    With :math:`w = 1` this is the score of :math:`p_t(x \mid y)`; :math:`w > 1` sharpens
    the conditional. Works with every sampler (PC, ODE, reverse SDE).

    Args:
      score_fn: the unconditional ``score_fn(x, t)``.
      grad_log_likelihood: ``(x, t, labels) -> grad_x log p_t(labels | x)`` shaped like ``x``
        (e.g. ``jax.grad`` of a noise-conditional classifier's log-softmax).
      labels: the conditioning labels, e.g. ``(B,)`` class indices.
      guidance_scale: :math:`w \ge 0`.

    Returns:
      A ``score_fn(x, t)`` (a ``jax.tree_util.Partial``: ``labels`` stays a traced array).

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> s = sd.classifier_guided_score(lambda x, t: -x, lambda x, t, y: jnp.ones_like(x),
      ...                                jnp.zeros(2), guidance_scale=2.0)
      >>> s(jnp.zeros((2, 1)), jnp.ones(2))[:, 0]
      Array([2., 2.], dtype=float32)
    """
    if isinstance(guidance_scale, int | float) and guidance_scale < 0:
        raise ValueError(
            f"classifier_guided_score: guidance_scale must be >= 0, got {guidance_scale!r}."
        )
    return jax.tree_util.Partial(
        _guided_score, score_fn, grad_log_likelihood, jnp.asarray(labels), guidance_scale
    )


def sample_class_conditional(
    key: jax.Array,
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int],
    grad_log_likelihood: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    labels: jax.Array,
    guidance_scale: float = 1.0,
    **pc_kwargs,
) -> tuple[jax.Array, jax.Array]:
    r"""Class-conditional predictor-corrector sampling with classifier guidance.

    :func:`scoresde.sample_pc` on :func:`classifier_guided_score`; ``nfe`` counts the
    guided-score evaluations (each is one score and one classifier-gradient evaluation).

    Args:
      key: PRNG key.
      sde: the forward SDE.
      score_fn: the unconditional ``score_fn(x, t)``.
      shape: ``(B, *dims)``.
      grad_log_likelihood: ``(x, t, labels) -> grad_x log p_t(labels | x)``.
      labels: one label per sample, ``(B,)``.
      guidance_scale: the weight :math:`w` of the classifier gradient.
      **pc_kwargs: the keyword arguments of :func:`scoresde.sample_pc`.

    Returns:
      ``(x, nfe)`` as :func:`scoresde.sample_pc`.

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> sde = sd.VPSDE(N=50)
      >>> x, nfe = sd.sample_class_conditional(
      ...     jax.random.key(0), sde, lambda x, t: -x, (4, 2),
      ...     lambda x, t, y: jnp.zeros_like(x), jnp.zeros(4, jnp.int32), corrector="none")
      >>> int(nfe)
      50
    """
    guided = classifier_guided_score(score_fn, grad_log_likelihood, labels, guidance_scale)
    return sample_pc(key, sde, guided, shape, **pc_kwargs)
