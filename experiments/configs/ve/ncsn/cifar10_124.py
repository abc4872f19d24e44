r"""NCSN on CIFAR-10 32x32, VE SDE, discrete noise scales (SMLD).

Ablation of Song & Ermon (2020): NCSN with techniques 1, 2, 4 (noise scales, sampling steps).

Run:
    scoresde train --config experiments/configs/ve/ncsn/cifar10_124.py \
        --workdir runs/ve_ncsn_cifar10_124
Tiny smoke variant:
    scoresde train --config experiments/configs/ve/ncsn/cifar10_124.py:smoke \
        --workdir /tmp/smoke

Reference: score_sde configs/ve/ncsn/cifar10_124.py (Song et al., ICLR 2021).
"""

from __future__ import annotations

from experiments.configs import common


def get_config(arg: str | None = None):
    """The config; `arg` "smoke" gives the tiny variant."""
    config = common.cifar10_defaults()

    training = config.training
    training.sde = "vesde"
    training.continuous = False

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "none"
    sampling.corrector = "ald"
    sampling.n_steps_each = 5
    sampling.snr = 0.176

    model = config.model
    model.name = "ncsn"
    model.scale_by_sigma = False
    model.num_scales = 232
    model.ema_rate = 0.0
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
