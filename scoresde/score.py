"""From a network to a score function ``score_fn(x, t)``.

The conventions (which label the network sees, how its output becomes a score) are
methods of the SDE: :meth:`scoresde.sde.SDE.network_labels` and
:meth:`scoresde.sde.SDE.output_to_score`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from flax import linen as nn

from scoresde._utils import check_batch_time
from scoresde.sde import SDE, ScoreFn


def get_score_fn(
    sde: SDE,
    model: nn.Module,
    variables: Mapping[str, Any],
    continuous: bool = True,
    train: bool = False,
    dropout_rng: jax.Array | None = None,
) -> ScoreFn:
    """Wraps ``model.apply(variables, x, labels, train=...)`` as ``score_fn(x, t)``.

    Args:
      sde: the forward SDE; it decides the time labels and the output-to-score map.
      model: a score network, applied as ``model.apply(variables, x, labels, train=train)``.
      variables: the model's variables (``{"params": ...}``).
      continuous: the reference's ``training.continuous``: continuous-time labels or
        discrete indices.
      train: run the network in training mode (dropout on).
      dropout_rng: PRNG key for dropout, required when ``train=True``.

    Returns:
      ``score_fn(x, t)`` with ``x: (B, *dims)``, ``t: (B,)`` returning an array like ``x``.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, scoresde as sd
      >>> class Zero(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, labels, train=False):
      ...         return nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(x)
      >>> model = Zero(); x = jnp.ones((2, 3)); t = jnp.full((2,), 0.5)
      >>> variables = model.init(jax.random.key(0), x, t)
      >>> sd.get_score_fn(sd.VPSDE(), model, variables)(x, t).shape
      (2, 3)
    """
    if train and dropout_rng is None:
        raise ValueError("get_score_fn: train=True needs dropout_rng (a jax.random key).")

    def score_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        check_batch_time(x, t, where="score_fn")
        labels = sde.network_labels(t, continuous)
        if train:
            output = model.apply(variables, x, labels, train=True, rngs={"dropout": dropout_rng})
        else:
            output = model.apply(variables, x, labels, train=False)
        return sde.output_to_score(output, t, continuous)

    return score_fn
