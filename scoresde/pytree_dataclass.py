r"""Immutable PyTree dataclasses whose PyTree structure names their class.

``flax.struct.dataclass`` registers a class through ``jax.tree_util.register_dataclass``. With
the jax 0.10 tested here, two structures of that kind compare equal whenever they have the same
number of leaves and the same static values, whatever their classes:
``jax.tree.structure(VPSDE()) == jax.tree.structure(SubVPSDE())`` was ``True`` (their hashes
differ). A cache keyed by structures, such as ``jax.jit``'s, can then hand out the entry of
the other class when the two keys meet in one hash bucket, so that the program traced for VP
runs for a sub-VP SDE. A run of this project's CI script showed it once: a sub-VP
Euler-Maruyama test drew VP's marginal variance (0.9288; VP's is 0.9280, sub-VP's 0.8552).

:func:`dataclass` makes the same frozen dataclass, with fields declared as for
``flax.struct`` (``flax.struct.field(pytree_node=False)`` for static fields), but registers it
with its class in the structure's static data, so that structures of different classes never
compare equal. Unflattening calls the constructor, as ``register_dataclass`` does.

Example:
  >>> import jax
  >>> from flax import struct
  >>> @dataclass
  ... class A:
  ...     x: float = 1.0
  ...     n: int = struct.field(pytree_node=False, default=3)
  >>> @dataclass
  ... class B:
  ...     y: float = 1.0
  ...     n: int = struct.field(pytree_node=False, default=3)
  >>> jax.tree.structure(A()) == jax.tree.structure(B())
  False
  >>> jax.tree.map(lambda v: 2 * v, A()).replace(n=4)
  A(x=2.0, n=4)
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import jax

T = TypeVar("T", bound=type)


def dataclass(cls: T) -> T:
    """``cls`` as a frozen dataclass and PyTree node whose structure holds ``cls`` itself.

    Fields whose metadata has ``pytree_node=False`` (``flax.struct.field``) are static: part of
    the structure, compared and hashed with it; the others are leaves. Instances get
    ``replace(**changes)``. Every field must be an ``__init__`` argument, since unflattening
    calls the constructor.

    Raises:
      TypeError: a field of ``cls`` is not an ``__init__`` argument.

    Example:
      >>> import jax, scoresde as sd
      >>> jax.tree.leaves(sd.VPSDE()), jax.tree.structure(sd.VPSDE()) == jax.tree.structure(sd.SubVPSDE())
      ([0.1, 20.0], False)
    """
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    no_init = [f.name for f in fields if not f.init]
    if no_init:
        raise TypeError(
            f"pytree_dataclass.dataclass({cls.__name__}): every field must be an __init__ "
            f"argument (unflattening calls the constructor), got init=False fields {no_init}."
        )
    data = tuple(f.name for f in fields if f.metadata.get("pytree_node", True))
    meta = tuple(f.name for f in fields if not f.metadata.get("pytree_node", True))

    def static(x) -> tuple:
        return (cls, tuple(getattr(x, name) for name in meta))

    def flatten(x):
        return [getattr(x, name) for name in data], static(x)

    def flatten_with_keys(x):
        keys = [(jax.tree_util.GetAttrKey(name), getattr(x, name)) for name in data]
        return keys, static(x)

    def unflatten(aux, children):
        _, meta_values = aux
        return cls(
            **dict(zip(data, children, strict=True)), **dict(zip(meta, meta_values, strict=True))
        )

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)

    def replace(self, **changes):
        """A copy with the given fields changed."""
        return dataclasses.replace(self, **changes)

    cls.replace = replace
    return cls
