r"""Single-head self-attention of NCSN++/DDPM++: cuDNN's fused kernel at inference.

:math:`\mathrm{softmax}(q k^\top / \sqrt{C})\, v`, the softmax over the key positions. XLA
computes it as two batched matmuls around a softmax pass (the logits and the probabilities
are written out and read back). cuDNN's fused (flash) attention keeps them on chip.
:func:`attention` takes the fused kernel with ``train=False`` where JAX's default backend is
a CUDA GPU (decided at trace time, as :func:`~scoresde.models.group_norm.group_norm`'s
``auto``), for bfloat16 or float16 inputs of a shape cuDNN covers (JAX checks it: a head dim
of at most 256 on Hopper, 128 before), and XLA's computation otherwise. ``train=True`` keeps
XLA's, so the training step's program is unchanged. JAX gives the fused kernel a custom VJP
only; here it carries a custom JVP that differentiates XLA's computation (value and tangent:
the tangent needs XLA's softmax anyway), so forward mode (the likelihood's ``jax.jvp`` through
the network) and reverse mode both work, through XLA's attention. A bfloat16 program
traced where the default backend is a CUDA GPU but run elsewhere (the host's CPU devices, or
exported for other platforms) needs :data:`FUSED_AT_INFERENCE` set to ``False`` while tracing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from scoresde.models.group_norm import default_backend_is_cuda

__all__ = ["attention"]

#: Whether :func:`attention` with ``train=False`` takes cuDNN's fused kernel where it applies.
#: Benchmarks set it to ``False`` for the comparison (``docs/benchmarks.md``, twelfth round).
FUSED_AT_INFERENCE = True

_FUSED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_xla_attention = functools.partial(jax.nn.dot_product_attention, implementation="xla")


def _cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")


@jax.custom_jvp
def _fused_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    return _cudnn_attention(q, k, v)


@_fused_attention.defjvp
def _fused_attention_jvp(primals, tangents):
    # The tangent needs XLA's softmax probabilities, so XLA's computation gives the value too
    # (running the fused kernel as well would compute the attention twice).
    return jax.jvp(_xla_attention, primals, tangents)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, train: bool = False) -> jax.Array:
    r"""Self-attention of ``(B, T, N, H)`` queries, keys and values (``jax.nn`` layout).

    Args:
      q, k, v: ``(batch, positions, heads, head dim)``.
      train: ``True`` for XLA's computation always (the training step); ``False`` for the
        fused kernel where it applies (module docstring).

    Returns:
      ``softmax(q k^T / sqrt(H)) v`` per head, shaped like ``q``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> q = jax.random.normal(jax.random.key(0), (2, 16, 1, 8))
      >>> out = attention(q, q, q)
      >>> bool(jnp.allclose(out, jax.nn.dot_product_attention(q, q, q), atol=1e-6))
      True
    """
    if not train and FUSED_AT_INFERENCE and q.dtype in _FUSED_DTYPES and default_backend_is_cuda():
        try:
            return _fused_attention(q, k, v)
        except NotImplementedError:  # a shape or a GPU that cuDNN's kernel does not cover
            pass
    return _xla_attention(q, k, v)
