"""scoresde: score-based generative modeling through stochastic differential equations, in JAX.

The public surface, by concept:

- SDEs: :class:`VPSDE`, :class:`SubVPSDE`, :class:`VESDE`, :class:`ReverseSDE`.
- Scores: :func:`get_score_fn`.
- Toy data with exact scores: :class:`GaussianMixture`.
- Sampling (:mod:`scoresde.sampling`, on diffrax): :func:`sample_pc` with predictors and
  correctors, :func:`sample_ode`, :func:`sample_sde`, :func:`solve_probability_flow`,
  controllable generation (:func:`sample_inpaint`, :func:`sample_colorize`,
  :func:`sample_class_conditional`), :func:`sample_sharded`.
- Likelihood: :func:`log_likelihood`, :func:`bits_per_dim`, :func:`encode`,
  :func:`drift_and_divergence`, dataset bits/dim :func:`evaluate_bits_per_dim`.
- Training: losses (:func:`dsm_loss`, :func:`smld_loss`, :func:`ddpm_loss`,
  :func:`get_model_loss_fn`), :class:`TrainState`, :func:`make_optimizer`,
  :func:`make_train_step`, :class:`CheckpointManager`, the loop :func:`run_training`.
- Data (tfds array_record sources, embedded digits and 2-D toys, loaders):
  :mod:`scoresde.data`; experiment configs: :mod:`scoresde.config_loading`.
- Networks and checkpoint conversion: :mod:`scoresde.models` (``from_config``,
  ``from_score_sde_pytorch``).
"""

from scoresde import checkpoints, data, likelihood, losses, models, sampling, train_loop
from scoresde.checkpoints import CheckpointManager, CheckpointWarning
from scoresde.likelihood import (
    bits_per_dim,
    drift_and_divergence,
    encode,
    log_likelihood,
)
from scoresde.likelihood_eval import DatasetBitsPerDim, evaluate_bits_per_dim
from scoresde.losses import ddpm_loss, dsm_loss, get_model_loss_fn, smld_loss
from scoresde.mixture import GaussianMixture
from scoresde.sampling import (
    AncestralSamplingPredictor,
    AnnealedLangevinCorrector,
    EulerMaruyamaPredictor,
    LangevinCorrector,
    NoneCorrector,
    NonePredictor,
    ReverseDiffusionPredictor,
    classifier_guided_score,
    colorization_matrix,
    sample_class_conditional,
    sample_colorize,
    sample_inpaint,
    sample_ode,
    sample_pc,
    sample_sde,
    sample_sharded,
    solve_probability_flow,
    tweedie_denoise,
)
from scoresde.score import get_score_fn
from scoresde.sde import SDE, T_FINAL, VESDE, VPSDE, ReverseSDE, ScoreFn, SubVPSDE
from scoresde.train import (
    NonFiniteLossError,
    TrainState,
    TrainStep,
    data_mesh,
    ema_update,
    initialize_distributed,
    make_optimizer,
    make_train_step,
    process_batch_slice,
    replicate,
)
from scoresde.train_loop import run_training

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
    "bits_per_dim",
    "drift_and_divergence",
    "encode",
    "evaluate_bits_per_dim",
    "DatasetBitsPerDim",
    "likelihood",
    "log_likelihood",
    "CheckpointManager",
    "CheckpointWarning",
    "NonFiniteLossError",
    "TrainState",
    "TrainStep",
    "checkpoints",
    "data",
    "data_mesh",
    "ddpm_loss",
    "dsm_loss",
    "ema_update",
    "get_model_loss_fn",
    "initialize_distributed",
    "losses",
    "make_optimizer",
    "make_train_step",
    "process_batch_slice",
    "replicate",
    "run_training",
    "smld_loss",
    "train_loop",
    "models",
    "sampling",
    "AncestralSamplingPredictor",
    "AnnealedLangevinCorrector",
    "EulerMaruyamaPredictor",
    "LangevinCorrector",
    "NoneCorrector",
    "NonePredictor",
    "ReverseDiffusionPredictor",
    "classifier_guided_score",
    "colorization_matrix",
    "sample_class_conditional",
    "sample_colorize",
    "sample_inpaint",
    "sample_ode",
    "sample_pc",
    "sample_sde",
    "sample_sharded",
    "solve_probability_flow",
    "tweedie_denoise",
]
