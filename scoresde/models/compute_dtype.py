r"""``cast_to_compute_dtype``: parameters stored in the dtype a function computes them in.

A network with ``dtype=jnp.bfloat16`` keeps float32 parameters (flax's ``param_dtype``) and
converts each convolution's and dense layer's weights to bfloat16 on every call. Training
needs the float32 copy; inference can convert once. Which leaves may be converted is read off
``fn``'s jaxpr: a leaf :math:`p` whose every use is a conversion to one dtype :math:`d` is
replaced by :math:`\mathrm{cast}_d(p)`. Converting to :math:`d` twice is converting once, so
``fn`` returns the same value, bit for bit; in its compiled program the conversions are
no-ops. Leaves used in any other way (the networks' GroupNorm scale and bias, which they use
in float32; anything passed into a nested ``jax.jit``) keep their dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex

__all__ = ["cast_to_compute_dtype"]

_ANY_OTHER_USE = object()


def cast_to_compute_dtype(fn: Callable[..., Any], variables: Any, *args: Any) -> Any:
    """``variables`` with each leaf that ``fn(variables, *args)`` only converts to one dtype
    converted to it once, here.

    Args:
      fn: the function, not jitted (a jitted ``fn`` hides its uses: nothing is converted).
      variables: its first argument, a pytree of arrays.
      *args: its other arguments (arrays or ``jax.ShapeDtypeStruct``: ``fn`` is traced, not
        run).

    Returns:
      A pytree of ``variables``' structure: converted leaves, and the others as they were.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> conv = nn.Conv(4, (3, 3), dtype=jnp.bfloat16)
      >>> x = jnp.ones((1, 8, 8, 2))
      >>> variables = conv.init(jax.random.key(0), x)
      >>> cast = cast_to_compute_dtype(conv.apply, variables, x)
      >>> cast["params"]["kernel"].dtype
      dtype(bfloat16)
      >>> bool((conv.apply(cast, x) == conv.apply(variables, x)).all())
      True
    """
    leaves, treedef = jax.tree.flatten(variables)
    jaxpr = jax.make_jaxpr(fn)(variables, *args).jaxpr
    uses: dict[jex.Var, set] = {v: set() for v in jaxpr.invars[: len(leaves)]}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if isinstance(v, jex.Var) and v in uses:
                convert = eqn.primitive.name == "convert_element_type"
                uses[v].add(eqn.params["new_dtype"] if convert else _ANY_OTHER_USE)
    for v in jaxpr.outvars:
        if isinstance(v, jex.Var) and v in uses:
            uses[v].add(_ANY_OTHER_USE)
    cast = []
    for leaf, var in zip(leaves, jaxpr.invars, strict=False):
        (dtype,) = uses[var] if len(uses[var]) == 1 else (_ANY_OTHER_USE,)
        cast.append(leaf if dtype is _ANY_OTHER_USE else leaf.astype(dtype))
    return jax.tree.unflatten(treedef, cast)
