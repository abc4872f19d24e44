"""Samplers on diffrax: predictor-corrector, probability-flow ODE and reverse-time SDE.

- :func:`sample_pc` with the predictors (:class:`EulerMaruyamaPredictor`,
  :class:`ReverseDiffusionPredictor`, :class:`AncestralSamplingPredictor`,
  :class:`NonePredictor`) and correctors (:class:`LangevinCorrector`,
  :class:`AnnealedLangevinCorrector`, :class:`NoneCorrector`), all diffrax solvers on a
  :class:`ReverseSDETerm` combined by :class:`PredictorCorrector`;
- :func:`sample_ode` and :func:`solve_probability_flow` (encode/decode), :func:`solve_ode`;
- :func:`sample_sde` with any diffrax SDE solver;
- :func:`tweedie_denoise`;
- controllable generation: :func:`sample_inpaint`, :func:`sample_colorize`,
  :func:`sample_class_conditional`, :func:`classifier_guided_score`;
- :func:`sample_sharded`: a sampler run over all local devices.
"""

from scoresde.sampling.base import AbstractCorrector, AbstractPredictor, ReverseSDETerm
from scoresde.sampling.controllable import (
    KnownComponents,
    classifier_guided_score,
    colorization_matrix,
    sample_class_conditional,
    sample_colorize,
    sample_inpaint,
)
from scoresde.sampling.correctors import (
    AnnealedLangevinCorrector,
    LangevinCorrector,
    NoneCorrector,
)
from scoresde.sampling.denoise import tweedie_denoise
from scoresde.sampling.ode import (
    probability_flow_drift,
    sample_ode,
    solve_ode,
    solve_probability_flow,
)
from scoresde.sampling.pc import PredictorCorrector, sample_pc
from scoresde.sampling.predictors import (
    AncestralSamplingPredictor,
    EulerMaruyamaPredictor,
    NonePredictor,
    ReverseDiffusionPredictor,
)
from scoresde.sampling.reverse_sde import DiagonalNoiseTerm, reverse_sde_terms, sample_sde
from scoresde.sampling.sharding import sample_sharded

__all__ = [
    "AbstractCorrector",
    "AbstractPredictor",
    "AncestralSamplingPredictor",
    "AnnealedLangevinCorrector",
    "DiagonalNoiseTerm",
    "EulerMaruyamaPredictor",
    "KnownComponents",
    "LangevinCorrector",
    "NoneCorrector",
    "NonePredictor",
    "PredictorCorrector",
    "ReverseDiffusionPredictor",
    "ReverseSDETerm",
    "classifier_guided_score",
    "colorization_matrix",
    "probability_flow_drift",
    "reverse_sde_terms",
    "sample_class_conditional",
    "sample_colorize",
    "sample_inpaint",
    "sample_ode",
    "sample_pc",
    "sample_sde",
    "sample_sharded",
    "solve_ode",
    "solve_probability_flow",
    "tweedie_denoise",
]
