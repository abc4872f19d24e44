r"""NCSN on CelebA 64x64, VE SDE, discrete noise scales (SMLD).

Ablation of Song & Ermon (2020): NCSN with technique 5 (EMA) only.

Run:
    scoresde train --config experiments/configs/ve/ncsn/celeba_5.py \
        --workdir runs/ve_ncsn_celeba_5
Tiny smoke variant:
    scoresde train --config experiments/configs/ve/ncsn/celeba_5.py:smoke \
        --workdir /tmp/smoke

Reference: score_sde configs/ve/ncsn/celeba_5.py (Song et al., ICLR 2021).
"""

from __future__ import annotations

from experiments.configs import common


def get_config(arg: str | None = None):
    """The config; `arg` "smoke" gives the tiny variant."""
    config = common.celeba_defaults()

    training = config.training
    training.sde = "vesde"
    training.continuous = False

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "none"
    sampling.corrector = "ald"
    sampling.n_steps_each = 100
    sampling.snr = 0.316

    model = config.model
    model.name = "ncsn"
    model.scale_by_sigma = False
    model.sigma_max = 1.0
    model.num_scales = 10
    model.ema_rate = 0.999
    model.normalization = "InstanceNorm++"
    model.nonlinearity = "elu"
    model.nf = 128
    model.interpolation = "bilinear"

    optim = config.optim
    optim.weight_decay = 0.0
    optim.optimizer = "Adam"
    optim.lr = 1e-3
    optim.beta1 = 0.9
    optim.amsgrad = False
    optim.eps = 1e-8
    optim.warmup = 0
    optim.grad_clip = -1.0

    return common.finalize(config, arg)
