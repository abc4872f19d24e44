"""Small shape helpers shared by the library (private)."""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np


def batch_broadcast(v: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes a per-sample vector ``v`` of shape ``(B,)`` to broadcast against ``x: (B, ...)``."""
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def check_batch_time(x: jax.Array, t: jax.Array, *, where: str) -> None:
    """Raises at trace time unless ``x`` is batched ``(B, ...)`` and ``t`` has shape ``(B,)``."""
    x_shape = np.shape(x)
    t_shape = np.shape(t)
    if len(x_shape) < 1:
        raise ValueError(
            f"{where}: x must have a leading batch axis (B, ...), got shape {x_shape}."
        )
    if t_shape != x_shape[:1]:
        raise ValueError(
            f"{where}: t must have shape (B,) = {x_shape[:1]} to match x of shape {x_shape}, "
            f"got t of shape {t_shape}. Pass one time per sample, e.g. jnp.full((B,), t)."
        )


def is_concrete_number(v) -> bool:
    """True for a Python/NumPy scalar or a concrete 0-d array; False for tracers and placeholders."""
    if isinstance(v, jax.core.Tracer):
        return False
    if isinstance(v, numbers.Number) and not isinstance(v, bool):
        return True
    return isinstance(v, np.ndarray | jax.Array) and np.ndim(v) == 0


def check_finite_positive(name: str, value, *, owner: str) -> None:
    """Validates a concrete hyperparameter: finite and > 0 (tracers are not checked)."""
    if not is_concrete_number(value):
        return
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{owner}: {name} must be finite and > 0, got {name}={value!r}.")
