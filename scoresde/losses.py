r"""Training objectives: denoising score matching in continuous time, SMLD and DDPM.

All losses here return **per-example** losses of shape ``(B,)``; a training step averages
them. Their randomness is drawn per example: ``key`` may be a single key (split into one
key per example) or an array of ``B`` keys, one per example. With one key per example the
draws of an example depend only on its own key, so a batch split across devices (each
device passing its slice of the keys) sees exactly the noise the unsplit batch would.

Every loss accepts ``has_aux``: when true, the score/model function returns
``(value, aux)`` (for instance the updated mutable model state) and the loss returns
``(losses, aux)``, as in :func:`jax.grad`.

References:
  Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, "Score-Based Generative Modeling
  through Stochastic Differential Equations", ICLR 2021.
  Song, Durkan, Murray, Ermon, "Maximum Likelihood Training of Score-Based Diffusion
  Models", NeurIPS 2021.
  Song, Ermon, "Generative Modeling by Estimating Gradients of the Data Distribution"
  (SMLD), NeurIPS 2019. Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", 2020.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from scoresde._utils import batch_broadcast
from scoresde.sde import SDE, VESDE, VPSDE

#: The smallest diffusion time of the continuous losses (the reference's ``eps``).
DEFAULT_EPS = 1e-5

#: Bisection iterations when inverting the importance-sampling CDF: each halves the
#: interval in ``t``, so 40 of them resolve ``t`` far below float32 spacing on ``[0, 1]``.
_IS_BISECTION_STEPS = 40

# Stream tags folded into an example's key; fixed so that draws never change between runs.
_T_STREAM, _Z_STREAM, _DROPOUT_STREAM = 0, 1, 2


# --------------------------------------------------------------------------------------
# keys and reductions
# --------------------------------------------------------------------------------------


def _example_keys(key: jax.Array, batch_size: int, where: str) -> jax.Array:
    """One typed key per example, from a single key or a ``(B,)`` array of keys."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        # raw uint32 key data: (2,) for one threefry key, (B, 2) for B of them
        key = jax.random.wrap_key_data(key)
    if key.shape == ():
        return jax.random.split(key, batch_size)
    if key.shape == (batch_size,):
        return key
    raise ValueError(
        f"{where}: key must be one PRNG key or an array of B={batch_size} keys (one per "
        f"example), got keys of shape {key.shape}."
    )


def _stream(keys: jax.Array, tag: int) -> jax.Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, tag))(keys)


def _normal_like(keys: jax.Array, x: jax.Array) -> jax.Array:
    return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(_stream(keys, _Z_STREAM))


def _reduce(sq: jax.Array, reduce_mean: bool) -> jax.Array:
    """Mean over all non-batch dimensions, or half their sum (the reference's two options)."""
    sq = jnp.reshape(sq, (sq.shape[0], -1))
    return jnp.mean(sq, axis=-1) if reduce_mean else 0.5 * jnp.sum(sq, axis=-1)


def _split_aux(out, has_aux: bool):
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                "has_aux=True: the score/model function must return a pair (value, aux), got "
                f"{type(out).__name__}."
            )
        return out
    return out, None


def _check_x(x: jax.Array, where: str) -> None:
    if jnp.ndim(x) < 2:
        raise ValueError(
            f"{where}: x must be a batch (B, *dims) with at least one data dimension, got shape "
            f"{jnp.shape(x)}."
        )


def _check_eps(eps: float, T: float, where: str) -> None:
    if not (isinstance(eps, int | float) and 0.0 <= eps < T):
        raise ValueError(f"{where}: eps must be a number in [0, T={T}), got eps={eps!r}.")


# --------------------------------------------------------------------------------------
# importance sampling of t (Song, Durkan, Murray, Ermon 2021)
# --------------------------------------------------------------------------------------


def log_inverse_snr(sde: SDE, t: jax.Array) -> jax.Array:
    r"""The log inverse signal-to-noise ratio :math:`\lambda(t) = \log(\sigma(t)^2 / a(t)^2)`.

    For a linear SDE with perturbation kernel :math:`\mathcal N(a(t)x_0, \sigma(t)^2 I)` the
    marginal variance obeys :math:`\tfrac{d}{dt}\sigma^2 = 2\tfrac{a'}{a}\sigma^2 + g^2`, so

    .. math:: \frac{d\lambda}{dt} = \frac{g(t)^2}{\sigma(t)^2},

    the density (up to normalization) of the likelihood-weighting importance sampler.
    This holds for :class:`~scoresde.VPSDE`, :class:`~scoresde.SubVPSDE` and
    :class:`~scoresde.VESDE` (whose :math:`a = 1` and :math:`g^2 = d\sigma^2/dt`).

    Args:
      sde: the forward SDE.
      t: times, shape ``(B,)``.

    Returns:
      :math:`\lambda(t)`, shape ``(B,)``.

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> sde = sd.VESDE(sigma_min=0.01, sigma_max=50.0)
      >>> lam = sd.losses.log_inverse_snr(sde, jnp.array([0.0, 1.0]))
      >>> [round(float(v), 3) for v in jnp.exp(lam / 2)]
      [0.01, 50.0]
    """
    ones = jnp.ones((jnp.shape(t)[0], 1), jnp.result_type(t))
    mean, std = sde.marginal_prob(ones, t)
    return 2.0 * (jnp.log(std) - jnp.log(mean[:, 0]))


def importance_weight_normalizer(sde: SDE, eps: float = DEFAULT_EPS) -> jax.Array:
    r""":math:`Z = \int_\epsilon^T g(t)^2/\sigma(t)^2\,dt = \lambda(T) - \lambda(\epsilon)`.

    Args:
      sde: the forward SDE.
      eps: the smallest time.

    Returns:
      ``Z``, a scalar.

    Example:
      >>> import scoresde as sd
      >>> z = sd.losses.importance_weight_normalizer(sd.VPSDE())
      >>> bool(z > 0)
      True
    """
    ends = jnp.array([eps, sde.T], jnp.result_type(float))
    lam = log_inverse_snr(sde, ends)
    return lam[1] - lam[0]


def sample_importance_time(
    key: jax.Array, sde: SDE, batch_size: int, eps: float = DEFAULT_EPS
) -> jax.Array:
    r"""Draws ``t`` with density :math:`p(t) \propto g(t)^2/\sigma(t)^2` on :math:`[\epsilon, T]`.

    Inverse-CDF sampling: with :math:`\lambda` of :func:`log_inverse_snr`, the CDF is
    :math:`F(t) = (\lambda(t) - \lambda(\epsilon)) / (\lambda(T) - \lambda(\epsilon))`, so
    :math:`t = \lambda^{-1}(\lambda(\epsilon) + u(\lambda(T) - \lambda(\epsilon)))` with
    :math:`u \sim U(0, 1)`. :math:`\lambda` is increasing; it is inverted by bisection on
    the device (for the VP SDE this is the reference likelihood-weighting sampler of Song et
    al. 2021, whose quadratic closed form it reproduces; for VE it is uniform).

    Args:
      key: a PRNG key, or ``(batch_size,)`` keys (one per draw).
      sde: the forward SDE.
      batch_size: number of times to draw.
      eps: the smallest time.

    Returns:
      ``t``, shape ``(batch_size,)``.

    Example:
      >>> import jax, scoresde as sd
      >>> t = sd.losses.sample_importance_time(jax.random.key(0), sd.VPSDE(), 4)
      >>> t.shape, bool((t >= 1e-5).all() and (t <= 1.0).all())
      ((4,), True)
    """
    _check_eps(eps, sde.T, "sample_importance_time")
    keys = _example_keys(key, batch_size, "sample_importance_time")
    u = jax.vmap(lambda k: jax.random.uniform(k, ()))(keys)
    return _invert_log_inverse_snr(sde, u, eps)


def _invert_log_inverse_snr(sde: SDE, u: jax.Array, eps: float) -> jax.Array:
    dtype = u.dtype
    ends = jnp.array([eps, sde.T], dtype)
    lam_lo, lam_hi = log_inverse_snr(sde, ends)
    target = lam_lo + u * (lam_hi - lam_lo)
    lo = jnp.full_like(u, eps)
    hi = jnp.full_like(u, sde.T)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = log_inverse_snr(sde, mid) < target
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _IS_BISECTION_STEPS, body, (lo, hi))
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------


def dsm_loss(
    key: jax.Array,
    sde: SDE,
    score_fn: Callable,
    x: jax.Array,
    *,
    reduce_mean: bool = False,
    likelihood_weighting: bool = False,
    importance_sampling: bool = False,
    eps: float = DEFAULT_EPS,
    has_aux: bool = False,
):
    r"""Continuous-time denoising score matching, per example.

    With :math:`x_t = a(t)x_0 + \sigma(t)z`, :math:`z\sim\mathcal N(0, I)`:

    - default (:math:`\lambda(t) = \sigma(t)^2`):
      :math:`\ell = \|\sigma(t)s_\theta(x_t, t) + z\|^2`, :math:`t\sim U(\epsilon, T)`;
    - ``likelihood_weighting`` (:math:`\lambda = g^2`, Song et al. 2021):
      :math:`\ell = g(t)^2\|s_\theta(x_t, t) + z/\sigma(t)\|^2`, :math:`t\sim U(\epsilon, T)`;
    - ``importance_sampling`` (with ``likelihood_weighting``): :math:`t\sim p(t)\propto
      g^2/\sigma^2` (:func:`sample_importance_time`) and
      :math:`\ell = \tfrac{Z}{T-\epsilon}\|\sigma(t)s_\theta + z\|^2`,
      :math:`Z = \int_\epsilon^T g^2/\sigma^2\,dt`, an unbiased, lower-variance estimate of
      the same objective as ``likelihood_weighting`` alone.

    ``\|\cdot\|^2`` is the mean over data dimensions (``reduce_mean``) or half their sum.

    Args:
      key: a PRNG key, or ``(B,)`` keys (one per example).
      sde: the forward SDE.
      score_fn: ``score_fn(x, t)`` with ``x: (B, *dims)``, ``t: (B,)``; returns the score
        (or ``(score, aux)`` when ``has_aux``).
      x: data batch ``(B, *dims)``.
      reduce_mean: mean over dimensions instead of half the sum.
      likelihood_weighting: weight by :math:`g(t)^2`.
      importance_sampling: draw ``t`` by importance (needs ``likelihood_weighting``).
      eps: the smallest time (the reference's 1e-5).
      has_aux: ``score_fn`` returns ``(score, aux)``.

    Returns:
      Per-example losses ``(B,)`` (and ``aux`` when ``has_aux``).

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> x = jnp.zeros((8, 2))
      >>> losses = sd.dsm_loss(jax.random.key(0), sd.VPSDE(), lambda x, t: -x, x)
      >>> losses.shape
      (8,)
    """
    where = "dsm_loss"
    _check_x(x, where)
    _check_eps(eps, sde.T, where)
    if importance_sampling and not likelihood_weighting:
        raise ValueError(
            f"{where}: importance_sampling=True samples t for the likelihood-weighted loss; "
            "set likelihood_weighting=True as well."
        )
    batch_size = x.shape[0]
    keys = _example_keys(key, batch_size, where)
    t_keys = _stream(keys, _T_STREAM)
    if importance_sampling:
        t = sample_importance_time(t_keys, sde, batch_size, eps).astype(x.dtype)
    else:
        t = jax.vmap(lambda k: jax.random.uniform(k, (), x.dtype, eps, sde.T))(t_keys)
    z = _normal_like(keys, x)
    mean, std = sde.marginal_prob(x, t)
    x_t = mean + batch_broadcast(std, x) * z
    score, aux = _split_aux(score_fn(x_t, t), has_aux)
    if likelihood_weighting and not importance_sampling:
        g2 = sde.sde(jnp.zeros_like(x), t)[1] ** 2
        losses = _reduce((score + z / batch_broadcast(std, x)) ** 2, reduce_mean) * g2
    else:
        losses = _reduce((batch_broadcast(std, x) * score + z) ** 2, reduce_mean)
        if importance_sampling:
            losses = losses * (importance_weight_normalizer(sde, eps) / (sde.T - eps))
    return (losses, aux) if has_aux else losses


def smld_loss(
    key: jax.Array,
    sde: VESDE,
    model_fn: Callable,
    x: jax.Array,
    *,
    reduce_mean: bool = False,
    has_aux: bool = False,
):
    r"""The discrete SMLD (NCSN) loss of the reference, per example.

    A level :math:`i\sim U\{0, \dots, N-1\}` indexes the noise scales in *descending* order,
    :math:`\sigma = \sigma_{N-1-i}` of :attr:`VESDE.discrete_sigmas`; with
    :math:`\tilde x = x + \sigma z`, the network (which outputs the score) sees the integer
    label :math:`i`:

    .. math:: \ell = \sigma^2\,\|s_\theta(\tilde x, i) + z/\sigma\|^2.

    Args:
      key: a PRNG key, or ``(B,)`` keys.
      sde: a :class:`~scoresde.VESDE` (its ``N`` and noise scales).
      model_fn: ``model_fn(x, labels) -> score`` with integer ``labels: (B,)`` (or
        ``(score, aux)`` when ``has_aux``).
      x: data batch ``(B, *dims)``.
      reduce_mean: mean over dimensions instead of half the sum (reference default: sum).
      has_aux: ``model_fn`` returns ``(score, aux)``.

    Returns:
      Per-example losses ``(B,)`` (and ``aux`` when ``has_aux``).

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> sde = sd.VESDE(N=10)
      >>> sd.smld_loss(jax.random.key(0), sde, lambda x, i: -x, jnp.zeros((4, 3))).shape
      (4,)
    """
    where = "smld_loss"
    if not isinstance(sde, VESDE):
        raise TypeError(f"{where}: sde must be a VESDE, got {type(sde).__name__}.")
    _check_x(x, where)
    keys = _example_keys(key, x.shape[0], where)
    labels = jax.vmap(lambda k: jax.random.randint(k, (), 0, sde.N))(_stream(keys, _T_STREAM))
    sigmas = sde.discrete_sigmas[::-1][labels].astype(x.dtype)
    z = _normal_like(keys, x)
    sigma_b = batch_broadcast(sigmas, x)
    score, aux = _split_aux(model_fn(x + sigma_b * z, labels), has_aux)
    losses = _reduce((score + z / sigma_b) ** 2, reduce_mean) * sigmas**2
    return (losses, aux) if has_aux else losses


def ddpm_loss(
    key: jax.Array,
    sde: VPSDE,
    model_fn: Callable,
    x: jax.Array,
    *,
    reduce_mean: bool = True,
    has_aux: bool = False,
):
    r"""The discrete DDPM loss of the reference (noise prediction), per example.

    With :math:`i\sim U\{0,\dots,N-1\}`, :math:`\bar\alpha_i` of
    :attr:`VPSDE.alphas_cumprod` and :math:`x_i = \sqrt{\bar\alpha_i}x + \sqrt{1-\bar\alpha_i}z`,
    the network sees the integer label :math:`i` and predicts :math:`z`:

    .. math:: \ell = \|\epsilon_\theta(x_i, i) - z\|^2.

    Args:
      key: a PRNG key, or ``(B,)`` keys.
      sde: a :class:`~scoresde.VPSDE` (its ``N`` and discrete betas).
      model_fn: ``model_fn(x, labels) -> eps_pred`` with integer ``labels: (B,)`` (or
        ``(eps_pred, aux)`` when ``has_aux``).
      x: data batch ``(B, *dims)``.
      reduce_mean: mean over dimensions instead of half the sum.
      has_aux: ``model_fn`` returns ``(eps_pred, aux)``.

    Returns:
      Per-example losses ``(B,)`` (and ``aux`` when ``has_aux``).

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> sd.ddpm_loss(jax.random.key(0), sd.VPSDE(N=10), lambda x, i: 0 * x,
      ...              jnp.zeros((4, 3))).shape
      (4,)
    """
    where = "ddpm_loss"
    if not isinstance(sde, VPSDE):
        raise TypeError(f"{where}: sde must be a VPSDE, got {type(sde).__name__}.")
    _check_x(x, where)
    keys = _example_keys(key, x.shape[0], where)
    labels = jax.vmap(lambda k: jax.random.randint(k, (), 0, sde.N))(_stream(keys, _T_STREAM))
    abar = sde.alphas_cumprod[labels].astype(x.dtype)
    z = _normal_like(keys, x)
    x_i = batch_broadcast(jnp.sqrt(abar), x) * x + batch_broadcast(jnp.sqrt(1.0 - abar), x) * z
    eps_pred, aux = _split_aux(model_fn(x_i, labels), has_aux)
    losses = _reduce((eps_pred - z) ** 2, reduce_mean)
    return (losses, aux) if has_aux else losses


# --------------------------------------------------------------------------------------
# network losses for the train step
# --------------------------------------------------------------------------------------

ModelLossFn = Callable[[Any, Mapping[str, Any], Any, jax.Array], tuple[jax.Array, Mapping]]
"""``loss_fn(params, model_state, batch, keys) -> (loss, new_model_state)``: what the train
step differentiates. ``keys`` holds one PRNG key per example of ``batch``."""


def batch_data(batch: Any) -> jax.Array:
    """The data array of a batch: the batch itself, or ``batch["image"]`` for a mapping."""
    if isinstance(batch, Mapping):
        if "image" not in batch:
            raise ValueError(
                f"a batch mapping must hold the data under 'image', got keys {sorted(batch)}."
            )
        return batch["image"]
    return batch


def get_model_loss_fn(
    sde: SDE,
    model: nn.Module,
    *,
    continuous: bool = True,
    reduce_mean: bool = False,
    likelihood_weighting: bool = False,
    importance_sampling: bool = False,
    eps: float = DEFAULT_EPS,
    train: bool = True,
) -> ModelLossFn:
    r"""The mean training loss of a flax score network, as the train step wants it.

    Continuous time: :func:`dsm_loss` on ``get_score_fn``'s conventions (the SDE's network
    labels and output-to-score map). Discrete time (the reference's ``continuous=False``):
    :func:`smld_loss` for a :class:`~scoresde.VESDE`, :func:`ddpm_loss` for a
    :class:`~scoresde.VPSDE` (the network receives integer labels).

    The network is applied as ``model.apply({"params": params, **model_state}, x, labels,
    train=train, rngs={"dropout": key})``; mutable collections in ``model_state`` (e.g.
    ``batch_stats``) are updated and returned. The dropout key is derived from the first
    example's key.

    Args:
      sde: the forward SDE.
      model: a flax module called as above.
      continuous: continuous-time DSM, or the discrete SMLD/DDPM losses.
      reduce_mean: mean over data dimensions instead of half the sum.
      likelihood_weighting: weight by :math:`g^2` (continuous only).
      importance_sampling: importance-sample ``t`` (with ``likelihood_weighting``).
      eps: smallest time of the continuous loss.
      train: run the network in training mode (dropout on).

    Returns:
      ``loss_fn(params, model_state, batch, keys) -> (mean_loss, new_model_state)``.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, scoresde as sd
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, labels, train=False):
      ...         return nn.Dense(x.shape[-1])(x)
      >>> x = jnp.ones((4, 2)); net = Net()
      >>> params = net.init(jax.random.key(0), x, jnp.ones(4))["params"]
      >>> loss_fn = sd.get_model_loss_fn(sd.VPSDE(), net)
      >>> loss, _ = loss_fn(params, {}, x, jax.random.split(jax.random.key(1), 4))
      >>> loss.shape
      ()
    """
    where = "get_model_loss_fn"
    if not continuous:
        if likelihood_weighting or importance_sampling:
            raise ValueError(
                f"{where}: likelihood_weighting/importance_sampling apply to the continuous loss "
                "only; the discrete SMLD/DDPM losses have fixed weights."
            )
        if not isinstance(sde, VESDE | VPSDE):
            raise ValueError(
                f"{where}: continuous=False needs a VESDE (SMLD loss) or a VPSDE (DDPM loss), got "
                f"{type(sde).__name__}; use continuous=True for it."
            )

    def loss_fn(params, model_state, batch, keys):
        x = batch_data(batch)
        keys = _example_keys(keys, x.shape[0], "loss_fn")
        dropout_key = jax.random.fold_in(keys[0], _DROPOUT_STREAM + 1)
        mutable = list(model_state.keys())
        variables = {"params": params, **model_state}

        def network(x_in, labels):
            kwargs = {"rngs": {"dropout": dropout_key}} if train else {}
            if mutable:
                out, new_state = model.apply(
                    variables, x_in, labels, train=train, mutable=mutable, **kwargs
                )
                return out, dict(new_state)
            return model.apply(variables, x_in, labels, train=train, **kwargs), {}

        if continuous:

            def score_fn(x_t, t):
                out, new_state = network(x_t, sde.network_labels(t, True))
                return sde.output_to_score(out, t, True), new_state

            losses, new_state = dsm_loss(
                keys,
                sde,
                score_fn,
                x,
                reduce_mean=reduce_mean,
                likelihood_weighting=likelihood_weighting,
                importance_sampling=importance_sampling,
                eps=eps,
                has_aux=True,
            )
        elif isinstance(sde, VESDE):
            losses, new_state = smld_loss(
                keys, sde, network, x, reduce_mean=reduce_mean, has_aux=True
            )
        else:
            losses, new_state = ddpm_loss(
                keys, sde, network, x, reduce_mean=reduce_mean, has_aux=True
            )
        return jnp.mean(losses), new_state

    return loss_fn


__all__ = [
    "DEFAULT_EPS",
    "ModelLossFn",
    "batch_data",
    "ddpm_loss",
    "dsm_loss",
    "get_model_loss_fn",
    "importance_weight_normalizer",
    "log_inverse_snr",
    "sample_importance_time",
    "smld_loss",
]
