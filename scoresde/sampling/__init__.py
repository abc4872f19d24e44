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
from scoresde.sampling.correctors import (
    AnnealedLangevinCorrector,
    LangevinCorrector,
    NoneCorrector,
)
from scoresde.sampling.denoise import tweedie_denoise
from scoresde.sampling.pc import PredictorCorrector, sample_pc
from scoresde.sampling.predictors import (
    AncestralSamplingPredictor,
    EulerMaruyamaPredictor,
    NonePredictor,
    ReverseDiffusionPredictor,
)

__all__ = [
    "AbstractCorrector",
    "AbstractPredictor",
    "AncestralSamplingPredictor",
    "AnnealedLangevinCorrector",
    "EulerMaruyamaPredictor",
    "LangevinCorrector",
    "NoneCorrector",
    "NonePredictor",
    "PredictorCorrector",
    "ReverseDiffusionPredictor",
    "ReverseSDETerm",
    "sample_pc",
    "tweedie_denoise",
]
