"""Counting score evaluations at run time, under ``jit`` (private).

A score function is wrapped so that each *executed* call adds one to a JAX mutable
reference (``jax.new_ref``). Unlike counting traced calls, this is exact inside the while
loops of diffrax (Runge-Kutta stages, rejected adaptive steps, initial step-size selection,
stochastic Runge-Kutta scans). Mutable references cannot cross ``jax.custom_vjp``, so
solves that count run with ``diffrax.ForwardMode()`` (a plain ``lax.while_loop``), which is
also the cheapest adjoint for sampling.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def _new_ref(value: jax.Array):
    make = getattr(jax, "new_ref", None)
    if make is None:  # older jax spelled it jax.experimental.mutable_array
        from jax.experimental import mutable_array as make
    return make(value)


class CallCounter:
    """A run-time counter of calls; create it inside the traced function that reads it."""

    def __init__(self):
        self._ref = _new_ref(jnp.zeros((), jnp.int32))

    def wrap(self, fn: Callable) -> Callable:
        """``fn`` with one count added per executed call."""

        def counted(*args, **kwargs):
            self._ref[...] += 1
            return fn(*args, **kwargs)

        return counted

    def add(self, n) -> None:
        self._ref[...] += jnp.asarray(n, jnp.int32)

    @property
    def value(self) -> jax.Array:
        return self._ref[...]
