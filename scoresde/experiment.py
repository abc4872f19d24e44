r"""The one place where an experiment config becomes objects: SDE, optimizer, loss, sampler.

The ``scoresde`` command line reads a reference-style ``ml_collections`` config (field names
of Song et al.'s score_sde: ``training.sde``, ``model.beta_min``, ``sampling.predictor``
...) and turns it into the explicit objects the library takes. Networks come from
:func:`scoresde.models.from_config` and data from :mod:`scoresde.data`; everything else is
built here, and nothing downstream sees the config.

=================== =====================================================================
config fields        object
=================== =====================================================================
``training.sde``     :class:`~scoresde.VPSDE` (``model.beta_min``, ``model.beta_max``,
                     ``model.num_scales``), :class:`~scoresde.SubVPSDE` (same fields) or
                     :class:`~scoresde.VESDE` (``model.sigma_min``, ``model.sigma_max``,
                     ``model.num_scales``)
``optim.*``          :func:`~scoresde.make_optimizer` (Adam, warm-up, clipping)
``training.*``       :func:`~scoresde.get_model_loss_fn` (``continuous``, ``reduce_mean``,
                     ``likelihood_weighting``, ``importance_sampling``)
``sampling.*``       :class:`SamplerSettings`: :func:`~scoresde.sample_pc` or
                     :func:`~scoresde.sample_ode`
=================== =====================================================================

Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential
Equations", ICLR 2021.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from scoresde.losses import ModelLossFn, get_model_loss_fn
from scoresde.models.factory import config_field
from scoresde.sampling import sample_ode, sample_pc
from scoresde.sampling.pc import DEFAULT_EPS
from scoresde.score import get_score_fn
from scoresde.sde import SDE, VESDE, VPSDE, ScoreFn, SubVPSDE
from scoresde.train import make_optimizer

#: ``training.sde`` values and the SDE each names.
SDE_CLASSES = {"vpsde": VPSDE, "subvpsde": SubVPSDE, "vesde": VESDE}
#: The reference's predictor names that differ from ours.
PREDICTOR_ALIASES = {"ancestral_sampling": "ancestral"}
#: Optimizers ``optim.optimizer`` may name (the reference's only one).
OPTIMIZERS = ("adam",)


#: Reads ``config.<section>.<field>`` (one implementation for the library: see
#: :func:`scoresde.models.factory.config_field`).
field = config_field


def sde_from_config(config: Any) -> SDE:
    """The forward SDE named by ``training.sde``.

    Args:
      config: a ConfigDict or nested dict with ``training.sde`` and the SDE's ``model``
        fields (``beta_min``/``beta_max`` or ``sigma_min``/``sigma_max``, and
        ``num_scales``, the number of discretization steps ``N``).

    Returns:
      A :class:`~scoresde.VPSDE`, :class:`~scoresde.SubVPSDE` or :class:`~scoresde.VESDE`.

    Example:
      >>> sde_from_config({"training": {"sde": "vesde"},
      ...                  "model": {"sigma_min": 0.01, "sigma_max": 50.0, "num_scales": 100}})
      VESDE(sigma_min=0.01, sigma_max=50.0, N=100)
    """
    name = str(field(config, "training.sde")).lower()
    if name not in SDE_CLASSES:
        raise ValueError(f"config: training.sde must be one of {tuple(SDE_CLASSES)}, got {name!r}.")
    n = int(field(config, "model.num_scales"))
    if name == "vesde":
        return VESDE(
            sigma_min=float(field(config, "model.sigma_min")),
            sigma_max=float(field(config, "model.sigma_max")),
            N=n,
        )
    return SDE_CLASSES[name](
        beta_min=float(field(config, "model.beta_min")),
        beta_max=float(field(config, "model.beta_max")),
        N=n,
    )


def data_shape_from_config(config: Any) -> tuple[int, ...]:
    """Shape of one example: ``(image_size, image_size, num_channels)``, or ``(2,)`` for TOY2D.

    Example:
      >>> data_shape_from_config({"data": {"dataset": "DIGITS", "image_size": 8,
      ...                                  "num_channels": 1}})
      (8, 8, 1)
    """
    if str(field(config, "data.dataset")).upper() == "TOY2D":
        return (2,)
    size = int(field(config, "data.image_size"))
    return (size, size, int(field(config, "data.num_channels")))


def is_image_data(config: Any) -> bool:
    """Whether the config's examples are images (everything but TOY2D)."""
    return len(data_shape_from_config(config)) == 3


def init_variables(
    model: nn.Module,
    key: jax.Array,
    data_shape: tuple[int, ...],
    device: jax.Device | None = None,
) -> dict:
    """Initializes a score network on a batch of one example (``train=False``).

    ``model.init`` runs jitted on the host's CPU unless ``device`` says otherwise, and the
    variables are returned on the default device. Only the parameter initializers are
    computed (JAX drops the unused forward pass), but every leaf's key derivation and random
    draw is its own few hundred instructions: for a full-size NCSN++ or DDPM++ the program
    takes 8-9 s to compile for an H200 host's CPU against 44-48 s for the GPU, for the same
    values (the random bits do not depend on the platform; 1 of NCSN++'s 571 leaves differs
    in the last bit). Computing them on the CPU also gives a seed the same initial weights
    on every accelerator.

    Args:
      model: a score network applied as ``model.apply(variables, x, labels, train=...)``.
      key: PRNG key for the initial parameters.
      data_shape: shape of one example.
      device: where to compute the initializers; ``None``: the first CPU device, or the
        default device when JAX runs without its CPU backend (``JAX_PLATFORMS``).

    Returns:
      The variables, ``{"params": ..., **other_collections}``, as a plain dict of arrays on
      the default device (uncommitted, as ``jnp.asarray`` places them).

    Example:
      >>> import jax, flax.linen as nn
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, labels, train=False):
      ...         return nn.Dense(x.shape[-1])(x)
      >>> v = init_variables(Net(), jax.random.key(0), (2,))
      >>> v["params"]["Dense_0"]["kernel"].shape
      (2, 2)
    """
    if device is None:
        device = _host_cpu() or jax.devices()[0]
    elif not isinstance(device, jax.Device):
        raise TypeError(
            f"init_variables: device must be a jax.Device or None, got {device!r} "
            f"({type(device).__name__})."
        )

    init = functools.partial(_init_on_one_example, model, data_shape=tuple(data_shape))
    variables = jax.jit(init)(jax.device_put(key, device))
    # Through the host: uncommitted arrays on the default device, as jnp.asarray makes them.
    return {k: jax.tree.map(jnp.asarray, jax.device_get(v)) for k, v in dict(variables).items()}


def abstract_variables(model: nn.Module, data_shape: tuple[int, ...]) -> dict:
    """The structure, shapes and dtypes of :func:`init_variables`' result, computing nothing.

    What a checkpoint restore or a parameter count needs; tracing ``model.init`` takes a
    second where compiling it takes seconds to a minute.

    Args:
      model: a score network.
      data_shape: shape of one example.

    Returns:
      ``{"params": ..., **other_collections}`` with :class:`jax.ShapeDtypeStruct` leaves.

    Example:
      >>> import jax, flax.linen as nn
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, labels, train=False):
      ...         return nn.Dense(x.shape[-1])(x)
      >>> abstract_variables(Net(), (2,))["params"]["Dense_0"]["kernel"]
      ShapeDtypeStruct(shape=(2, 2), dtype=float32)
    """
    init = functools.partial(_init_on_one_example, model, data_shape=tuple(data_shape))
    return dict(jax.eval_shape(init, jax.random.key(0)))


def _init_on_one_example(model: nn.Module, key: jax.Array, data_shape: tuple[int, ...]):
    x = jnp.zeros((1, *data_shape), jnp.float32)
    # Integer labels: every family accepts them (discrete VE networks, NCSN and NCSNv2, take
    # nothing else), and parameter shapes do not depend on the label's dtype.
    labels = jnp.zeros((1,), jnp.int32)
    return model.init({"params": key, "dropout": key}, x, labels, train=False)


def _host_cpu() -> jax.Device | None:
    """The first CPU device, or ``None`` when JAX runs without its CPU backend."""
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        return None


def optimizer_from_config(config: Any) -> optax.GradientTransformation:
    """Adam with warm-up and clipping from ``optim.{optimizer, lr, beta1, eps, warmup,
    grad_clip, weight_decay}`` (and ``optim.beta2``, 0.999 when absent).

    Example:
      >>> opt = optimizer_from_config({"optim": {"optimizer": "Adam", "lr": 2e-4,
      ...     "beta1": 0.9, "eps": 1e-8, "warmup": 5000, "grad_clip": 1.0,
      ...     "weight_decay": 0.0}})
    """
    name = str(field(config, "optim.optimizer", "Adam"))
    if name.lower() not in OPTIMIZERS:
        raise ValueError(f"config: optim.optimizer must be 'Adam' (the reference's), got {name!r}.")
    return make_optimizer(
        lr=float(field(config, "optim.lr")),
        beta1=float(field(config, "optim.beta1", 0.9)),
        beta2=float(field(config, "optim.beta2", 0.999)),
        eps=float(field(config, "optim.eps", 1e-8)),
        warmup=int(field(config, "optim.warmup", 0)),
        grad_clip=float(field(config, "optim.grad_clip", 1.0)),
        weight_decay=float(field(config, "optim.weight_decay", 0.0)),
    )


def loss_fn_from_config(config: Any, sde: SDE, model: nn.Module, train: bool = True) -> ModelLossFn:
    """The model loss of ``training.{continuous, reduce_mean, likelihood_weighting,
    importance_sampling}`` (see :func:`scoresde.get_model_loss_fn`).

    Args:
      config: the experiment config.
      sde: its SDE (:func:`sde_from_config`).
      model: its network.
      train: dropout on (training) or off (evaluation loss).

    Returns:
      ``loss_fn(params, model_state, batch, keys) -> (mean_loss, new_model_state)``.
    """
    return get_model_loss_fn(
        sde,
        model,
        continuous=bool(field(config, "training.continuous", True)),
        reduce_mean=bool(field(config, "training.reduce_mean", False)),
        likelihood_weighting=bool(field(config, "training.likelihood_weighting", False)),
        importance_sampling=bool(field(config, "training.importance_sampling", False)),
        train=train,
    )


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """How to sample, from the config's ``sampling`` section.

    Attributes:
      method: ``"pc"`` (predictor-corrector) or ``"ode"`` (probability flow).
      predictor: PC predictor name (the reference's ``ancestral_sampling`` is
        ``"ancestral"``).
      corrector: PC corrector name.
      snr: corrector signal-to-noise ratio.
      n_steps_each: corrector steps per predictor step.
      num_steps: PC grid size (``sampling.num_steps`` if set, else the SDE's ``N``,
        ``model.num_scales``, as the reference).
      noise_removal: end with the denoising step.
      probability_flow: deterministic PC predictor.
      eps: last time of the sampling grid.
    """

    method: str = "pc"
    predictor: str = "reverse_diffusion"
    corrector: str = "langevin"
    snr: float = 0.16
    n_steps_each: int = 1
    num_steps: int | None = None
    noise_removal: bool = True
    probability_flow: bool = False
    eps: float = DEFAULT_EPS

    @classmethod
    def from_config(cls, config: Any) -> SamplerSettings:
        """Reads ``sampling.{method, predictor, corrector, snr, n_steps_each, noise_removal,
        probability_flow}`` and the optional ``sampling.num_steps`` / ``sampling.eps``.

        Example:
          >>> s = SamplerSettings.from_config({"sampling": {"method": "pc",
          ...     "predictor": "ancestral_sampling", "corrector": "none", "snr": 0.16}})
          >>> s.predictor
          'ancestral'
        """
        method = str(field(config, "sampling.method", "pc")).lower()
        if method not in ("pc", "ode"):
            raise ValueError(f"config: sampling.method must be 'pc' or 'ode', got {method!r}.")
        predictor = str(field(config, "sampling.predictor", "reverse_diffusion")).lower()
        num_steps = field(config, "sampling.num_steps", None)
        return cls(
            method=method,
            predictor=PREDICTOR_ALIASES.get(predictor, predictor),
            corrector=str(field(config, "sampling.corrector", "none")).lower(),
            snr=float(field(config, "sampling.snr", 0.16)),
            n_steps_each=int(field(config, "sampling.n_steps_each", 1)),
            num_steps=None if num_steps is None else int(num_steps),
            noise_removal=bool(field(config, "sampling.noise_removal", True)),
            probability_flow=bool(field(config, "sampling.probability_flow", False)),
            eps=float(field(config, "sampling.eps", DEFAULT_EPS)),
        )

    def sampler(self):
        """``sampler(key, sde, score_fn, shape) -> (x, nfe)`` with these settings bound.

        Example:
          >>> import jax, scoresde as sd
          >>> s = SamplerSettings(corrector="none", num_steps=10)
          >>> x, nfe = s.sampler()(jax.random.key(0), sd.VPSDE(), lambda x, t: -x, (4, 2))
          >>> x.shape, int(nfe)
          ((4, 2), 10)
        """
        if self.method == "ode":

            def ode(key, sde, score_fn, shape):
                return sample_ode(
                    key, sde, score_fn, shape, eps=self.eps, denoise=self.noise_removal
                )

            return ode

        def pc(key, sde, score_fn, shape):
            return sample_pc(
                key,
                sde,
                score_fn,
                shape,
                predictor=self.predictor,
                corrector=self.corrector,
                snr=self.snr,
                n_corrector_steps=self.n_steps_each,
                num_steps=self.num_steps,
                eps=self.eps,
                denoise=self.noise_removal,
                probability_flow=self.probability_flow,
            )

        return pc


def _apply_score(static, variables, x, t):
    sde, model, continuous = static.value
    return get_score_fn(sde, model, variables, continuous=continuous)(x, t)


class _Static:
    """Hashable-by-identity holder, so that jit treats (sde, model, continuous) as static."""

    def __init__(self, value):
        self.value = value


def score_fn_factory(
    sde: SDE, model: nn.Module, continuous: bool = True
) -> Callable[[Mapping[str, Any]], ScoreFn]:
    """``make(variables) -> score_fn(x, t)`` whose network weights are traced, not constants.

    Each ``score_fn`` is a :class:`jax.tree_util.Partial` over ``variables`` around one
    function made here, so samplers jitted with ``equinox.filter_jit`` compile once per
    factory and reuse the program for new weights (each snapshot, each checkpoint)
    instead of baking the weights into a new program.

    Args:
      sde: the forward SDE.
      model: the score network.
      continuous: continuous-time labels (``training.continuous``).

    Returns:
      ``make(variables)`` returning ``score_fn(x, t)`` as :func:`scoresde.get_score_fn`.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, scoresde as sd
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, labels, train=False):
      ...         return nn.Dense(x.shape[-1])(x)
      >>> v = init_variables(Net(), jax.random.key(0), (2,))
      >>> make = score_fn_factory(sd.VPSDE(), Net())
      >>> make(v)(jnp.ones((3, 2)), jnp.full((3,), 0.5)).shape
      (3, 2)
    """
    static = _Static((sde, model, bool(continuous)))
    func = functools.partial(_apply_score, static)

    def make(variables: Mapping[str, Any]) -> ScoreFn:
        return jax.tree_util.Partial(func, dict(variables))

    return make


__all__ = [
    "SDE_CLASSES",
    "SamplerSettings",
    "abstract_variables",
    "data_shape_from_config",
    "field",
    "init_variables",
    "is_image_data",
    "loss_fn_from_config",
    "optimizer_from_config",
    "sde_from_config",
    "score_fn_factory",
]
