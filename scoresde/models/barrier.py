r"""``forward_barrier``: an identity that XLA may not fuse across, on the value only.

XLA fuses elementwise producers into their consumers, and sometimes that is the slower
choice: a fused producer is recomputed once per read (a FIR filter reads each pixel 16
times), or an add is folded into a convolution as a full-size side input. Putting the value
behind ``lax.optimization_barrier`` makes XLA write it out where it stands. Differentiating
``lax.optimization_barrier`` itself would put barriers on the tangents and cotangents too,
and constrain the derivative programs' fusions for nothing; here derivatives pass through
untouched (a custom JVP, which reverse mode transposes), so ``jax.jvp`` and ``jax.grad``
see the identity.
"""

from __future__ import annotations

import jax
from jax import lax

__all__ = ["forward_barrier"]


@jax.custom_jvp
def forward_barrier(x: jax.Array) -> jax.Array:
    """Returns ``x``, materialized: XLA fuses neither its producer nor its consumers across it.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> float(jax.grad(lambda v: forward_barrier(v) ** 2)(3.0))
      6.0
    """
    return lax.optimization_barrier(x)


@forward_barrier.defjvp
def _forward_barrier_jvp(primals, tangents):
    return forward_barrier(primals[0]), tangents[0]
