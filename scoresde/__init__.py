"""scoresde: score-based generative modeling through stochastic differential equations, in JAX.

The public surface, by concept:

- SDEs: :class:`VPSDE`, :class:`SubVPSDE`, :class:`VESDE`, :class:`ReverseSDE`.
- Scores: :func:`get_score_fn`.
- Toy data with exact scores: :class:`GaussianMixture`.
"""

from scoresde.mixture import GaussianMixture
from scoresde.score import get_score_fn
from scoresde.sde import SDE, T_FINAL, ReverseSDE, ScoreFn, SubVPSDE, VESDE, VPSDE

__version__ = "0.1.0.dev0"

__all__ = [
    "SDE",
    "T_FINAL",
    "ReverseSDE",
    "GaussianMixture",
    "ScoreFn",
    "SubVPSDE",
    "VESDE",
    "VPSDE",
    "get_score_fn",
]
