"""A small residual MLP score network for low-dimensional data (the 2-D toy experiments)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from scoresde.models.embeddings import get_timestep_embedding
from scoresde.models.initializers import default_init
from scoresde.models.layers import GaussianFourierProjection

#: Time-label embeddings :class:`ScoreMLP` accepts.
EMBEDDING_TYPES = ("positional", "fourier")
#: Nonlinearities :class:`ScoreMLP` accepts.
NONLINEARITIES = {"swish": jax.nn.silu, "relu": jax.nn.relu, "elu": jax.nn.elu}


class ScoreMLP(nn.Module):
    r"""Residual MLP :math:`s_\theta(x, \lambda)` for flat data ``(B, D)`` (or ``(B, *dims)``).

    The time label :math:`\lambda` (what ``sde.network_labels`` gives: :math:`999t` for VP
    and sub-VP, :math:`\sigma(t)` for VE) is embedded, sinusoidally (``"positional"``) or by
    random Fourier features of :math:`\log\lambda` (``"fourier"``, as NCSN++ does for VE),
    then mapped by a 2-layer MLP to :math:`e`. With :math:`h_0 = W_{in}x`,

    .. math::
        h_{k+1} = h_k + W_k\,\mathrm{act}(h_k + e), \qquad
        \text{out} = W_{out}\,\mathrm{act}(h_L),

    divided by :math:`\lambda` when ``scale_by_sigma`` (VE, Song et al., 2021). The output
    layer starts near zero, so the initial score model is near zero.

    Attributes:
      nf: hidden width (``model.nf``).
      num_layers: residual blocks :math:`L` (``model.num_layers``).
      embedding_type: ``"positional"`` or ``"fourier"`` (``model.embedding_type``).
      fourier_scale: std of the Fourier features (``model.fourier_scale``).
      scale_by_sigma: divide the output by the label (``model.scale_by_sigma``).
      nonlinearity: ``"swish"``, ``"relu"`` or ``"elu"`` (``model.nonlinearity``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = ScoreMLP(nf=32, num_layers=2)
      >>> x, labels = jnp.ones((4, 2)), jnp.full((4,), 500.0)
      >>> variables = model.init(jax.random.key(0), x, labels, train=False)
      >>> model.apply(variables, x, labels, train=False).shape
      (4, 2)
    """

    nf: int = 128
    num_layers: int = 3
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    scale_by_sigma: bool = False
    nonlinearity: str = "swish"

    def __post_init__(self):
        if self.embedding_type not in EMBEDDING_TYPES:
            raise ValueError(
                f"ScoreMLP: embedding_type must be one of {EMBEDDING_TYPES}, got "
                f"{self.embedding_type!r}."
            )
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"ScoreMLP: nonlinearity must be one of {tuple(NONLINEARITIES)}, got "
                f"{self.nonlinearity!r}."
            )
        if self.nf < 4 or self.num_layers < 0:
            raise ValueError(
                f"ScoreMLP: need nf >= 4 and num_layers >= 0, got nf={self.nf}, "
                f"num_layers={self.num_layers}."
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout or batch statistics
        if labels.shape != x.shape[:1]:
            raise ValueError(
                f"ScoreMLP: labels must have shape {x.shape[:1]} (one per example), got "
                f"{labels.shape}."
            )
        act = NONLINEARITIES[self.nonlinearity]
        if self.embedding_type == "fourier":
            emb = GaussianFourierProjection(self.nf // 2, self.fourier_scale)(jnp.log(labels))
        else:
            emb = get_timestep_embedding(labels, self.nf)
        emb = nn.Dense(self.nf, kernel_init=default_init())(emb)
        emb = nn.Dense(self.nf, kernel_init=default_init())(act(emb))
        flat = x.reshape(x.shape[0], -1)
        h = nn.Dense(self.nf, kernel_init=default_init())(flat)
        for _ in range(self.num_layers):
            h = h + nn.Dense(self.nf, kernel_init=default_init())(act(h + emb))
        out = nn.Dense(flat.shape[1], kernel_init=default_init(0.0))(act(h))
        if self.scale_by_sigma:
            out = out / labels[:, None]
        return out.reshape(x.shape)
