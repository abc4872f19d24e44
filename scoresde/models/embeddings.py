"""Time embeddings shared by the networks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

#: The transformer-style maximum period of the sinusoidal embedding.
MAX_POSITIONS = 10000


def get_timestep_embedding(
    timesteps: jax.Array, embedding_dim: int, max_positions: int = MAX_POSITIONS
) -> jax.Array:
    r"""Sinusoidal embedding of (float) time labels, sine block first.

    With ``half = embedding_dim // 2`` and :math:`f_k = \exp(-k \ln(\text{max\_positions})/(\text{half}-1))`,
    returns :math:`[\sin(t f_0), \dots, \sin(t f_{half-1}), \cos(t f_0), \dots]`, zero-padded to
    ``embedding_dim`` when it is odd.

    Args:
      timesteps: labels of shape ``(B,)`` (integers or floats).
      embedding_dim: output width (>= 4).
      max_positions: the longest period, 10000 in DDPM.

    Returns:
      ``(B, embedding_dim)`` float array.

    Example:
      >>> import jax.numpy as jnp
      >>> get_timestep_embedding(jnp.array([0.0, 49.95]), 16).shape
      (2, 16)
    """
    if timesteps.ndim != 1:
        raise ValueError(
            f"get_timestep_embedding: timesteps must have shape (B,), got {timesteps.shape}."
        )
    if embedding_dim < 4:
        raise ValueError(
            f"get_timestep_embedding: embedding_dim must be >= 4, got {embedding_dim}."
        )
    half = embedding_dim // 2
    freq = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(max_positions) / (half - 1)))
    args = timesteps.astype(jnp.float32)[:, None] * freq[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
    if embedding_dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb
