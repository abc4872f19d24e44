"""Shared defaults of the experiment configs, and the smoke variant every config offers.

The three ``*_defaults()`` functions hold the reference's shared defaults for CIFAR-10,
CelebA and LSUN experiments (Song et al., 2021; score_sde ``configs/default_*_configs.py``),
with the reference's field names and values, plus ``data.data_dir`` (tfds data directory,
``None``: tfds' default). Each experiment file starts from one of them, sets its own
fields, and ends with ``return common.finalize(config, arg)``.

``arg`` is the text after ``:`` in ``--config path.py:arg`` (as in ``ml_collections`` /
big_vision config files): empty for the experiment itself, ``"smoke"`` for a tiny variant
(16 x 16 images, ``nf = 16``, batch 4, a few steps) that runs anywhere in seconds.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

#: Values of the ``:arg`` suffix a config accepts.
CONFIG_ARGS = ("", "smoke")
#: Smoke variant: image side, network width, batch size, training steps, noise scales.
SMOKE_IMAGE_SIZE = 16
SMOKE_NF = 16
SMOKE_BATCH_SIZE = 4
SMOKE_N_ITERS = 4
SMOKE_NUM_SCALES = 20
SMOKE_MAX_LEVELS = 3


def _training(batch_size: int, n_iters: int, preemption_freq: int) -> ml_collections.ConfigDict:
    training = ml_collections.ConfigDict()
    training.batch_size = batch_size
    training.n_iters = n_iters
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.eval_freq = 100
    training.snapshot_freq_for_preemption = preemption_freq
    training.snapshot_sampling = True
    training.likelihood_weighting = False
    training.continuous = True
    training.n_jitted_steps = 5
    training.reduce_mean = False
    return training


def _sampling(snr: float) -> ml_collections.ConfigDict:
    sampling = ml_collections.ConfigDict()
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.probability_flow = False
    sampling.snr = snr
    return sampling


def _eval(
    begin_ckpt: int, end_ckpt: int, batch_size: int, enable_sampling: bool
) -> ml_collections.ConfigDict:
    evaluate = ml_collections.ConfigDict()
    evaluate.begin_ckpt = begin_ckpt
    evaluate.end_ckpt = end_ckpt
    evaluate.batch_size = batch_size
    evaluate.enable_sampling = enable_sampling
    evaluate.num_samples = 50000
    evaluate.enable_loss = True
    evaluate.enable_bpd = False
    evaluate.bpd_dataset = "test"
    return evaluate


def _data(dataset: str, image_size: int) -> ml_collections.ConfigDict:
    data = ml_collections.ConfigDict()
    data.dataset = dataset
    data.image_size = image_size
    data.random_flip = True
    data.uniform_dequantization = False
    data.centered = False
    data.num_channels = 3
    data.data_dir = config_dict.placeholder(str)
    return data


def _model(sigma_max: float, num_scales: int, dropout: float) -> ml_collections.ConfigDict:
    model = ml_collections.ConfigDict()
    model.sigma_min = 0.01
    model.sigma_max = sigma_max
    model.num_scales = num_scales
    model.beta_min = 0.1
    model.beta_max = 20.0
    model.dropout = dropout
    model.embedding_type = "fourier"
    # Not in the reference: the compute dtype. "bfloat16" runs NCSN++/DDPM++ and DDPM in
    # bfloat16 with float32 parameters (about 1.7x the training throughput on an H100).
    model.dtype = "float32"
    # Not in the reference: GroupNorm's implementation in NCSN++/DDPM++ and DDPM. "auto" runs
    # GroupNorm + SiLU as one fused kernel on CUDA GPUs where that measured faster; "xla"
    # keeps XLA's GroupNorm everywhere (scoresde.models.group_norm).
    model.group_norm_impl = "auto"
    return model


def _optim() -> ml_collections.ConfigDict:
    optim = ml_collections.ConfigDict()
    optim.weight_decay = 0.0
    optim.optimizer = "Adam"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.warmup = 5000
    optim.grad_clip = 1.0
    return optim


def _assemble(training, sampling, evaluate, data, model) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.training = training
    config.sampling = sampling
    config.eval = evaluate
    config.data = data
    config.model = model
    config.optim = _optim()
    config.seed = 42
    return config


def cifar10_defaults() -> ml_collections.ConfigDict:
    """The reference's CIFAR-10 defaults (32 x 32, batch 128, 1.3M steps, VE sigma_max 50)."""
    return _assemble(
        _training(128, 1300001, 10000),
        _sampling(0.16),
        _eval(9, 26, 1024, False),
        _data("CIFAR10", 32),
        _model(50.0, 1000, 0.1),
    )


def celeba_defaults() -> ml_collections.ConfigDict:
    """The reference's CelebA defaults (64 x 64, batch 128, VE sigma_max 90, snr 0.17)."""
    return _assemble(
        _training(128, 1300001, 10000),
        _sampling(0.17),
        _eval(1, 26, 1024, True),
        _data("CELEBA", 64),
        _model(90.0, 1000, 0.1),
    )


def lsun_defaults() -> ml_collections.ConfigDict:
    """The reference's LSUN defaults (256 x 256, batch 64, 2.4M steps, 2000 VE scales)."""
    return _assemble(
        _training(64, 2400001, 5000),
        _sampling(0.075),
        _eval(50, 96, 512, True),
        _data("LSUN", 256),
        _model(378.0, 2000, 0.0),
    )


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a config in place to a tiny run: small images, a narrow net, a few steps.

    Keeps every field and the model family; sets 16 x 16 images (8 x 8 digits), ``nf = 16``
    (32 for DDPM, whose GroupNorm has 32 groups, and the MLP),
    one residual block per level, at most three resolution levels with attention at 8 x 8,
    batch 4, a few training steps, checkpoints every 2 steps, 20 noise scales (VP and sub-VP:
    just over ``beta_max``, 21 for the reference's 20) and at most 2 corrector steps.
    """
    training, evaluate, data, model = config.training, config.eval, config.data, config.model
    training.batch_size = SMOKE_BATCH_SIZE
    training.n_iters = SMOKE_N_ITERS
    training.snapshot_freq = 2
    training.snapshot_freq_for_preemption = 2
    training.log_freq = 1
    training.eval_freq = 2
    training.n_jitted_steps = 1
    evaluate.batch_size = SMOKE_BATCH_SIZE
    evaluate.num_samples = SMOKE_BATCH_SIZE
    evaluate.begin_ckpt = 1
    evaluate.end_ckpt = 1
    config.sampling.n_steps_each = min(config.sampling.n_steps_each, 2)
    config.optim.warmup = min(config.optim.warmup, 2)
    if data.dataset.upper() != "TOY2D":
        data.image_size = 8 if data.dataset.upper() == "DIGITS" else SMOKE_IMAGE_SIZE
    # DDPM's GroupNorm has 32 groups, so its width must be a multiple of 32.
    model.nf = min(model.nf, 32 if model.name in ("ddpm", "mlp") else SMOKE_NF)
    model.num_scales = min(model.num_scales, SMOKE_NUM_SCALES)
    if training.sde.lower() in ("vpsde", "subvpsde"):
        # DDPM's discrete betas end at beta_max / N, which must stay below 1 (at 1 the
        # ancestral step divides by sqrt(1 - beta) = 0).
        model.num_scales = max(model.num_scales, int(model.beta_max) + 1)
    if "num_res_blocks" in model:
        model.num_res_blocks = 1
    if "ch_mult" in model:
        levels = min(len(model.ch_mult), SMOKE_MAX_LEVELS, max(1, data.image_size.bit_length() - 2))
        model.ch_mult = tuple(model.ch_mult[:levels])
        model.attn_resolutions = (data.image_size // 2,) if levels > 1 else ()
    if "num_layers" in model:
        model.num_layers = min(model.num_layers, 2)
    return config


def finalize(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the ``:arg`` of ``--config path.py:arg`` (``""`` or ``"smoke"``)."""
    arg = (arg or "").strip()
    if arg not in CONFIG_ARGS:
        raise ValueError(f"config argument must be one of {CONFIG_ARGS}, got {arg!r}.")
    if arg == "smoke":
        smoke(config)
    return config
