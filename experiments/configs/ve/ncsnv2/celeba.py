r"""NCSNv2 on CelebA 64x64, VE SDE, discrete noise scales (SMLD).

NCSNv2 (Song & Ermon, 2020) settings.

Run:
    scoresde train --config experiments/configs/ve/ncsnv2/celeba.py \
        --workdir runs/ve_ncsnv2_celeba
Tiny smoke variant:
    scoresde train --config experiments/configs/ve/ncsnv2/celeba.py:smoke \
        --workdir /tmp/smoke

Reference: score_sde configs/ve/ncsnv2/celeba.py (Song et al., ICLR 2021).

Fixes of the reference config:
- unused local variables of the reference (step_size, ckpt_id, ...) dropped.
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
    sampling.n_steps_each = 5
    sampling.snr = 0.128

    model = config.model
    model.name = "ncsnv2_64"
    model.scale_by_sigma = True
    model.num_scales = 500
    model.ema_rate = 0.999
    model.normalization = "InstanceNorm++"
    model.nonlinearity = "elu"
    model.nf = 128
    model.interpolation = "bilinear"

    optim = config.optim
    optim.weight_decay = 0.0
    optim.optimizer = "Adam"
    optim.lr = 1e-4
    optim.beta1 = 0.9
    optim.amsgrad = False
    optim.eps = 1e-8
    optim.warmup = 0
    optim.grad_clip = -1.0

    return common.finalize(config, arg)
