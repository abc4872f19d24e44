r"""NCSNv2 on LSUN bedroom 128x128, VE SDE, discrete noise scales (SMLD).

NCSNv2 (Song & Ermon, 2020) settings.

Run:
    scoresde train --config experiments/configs/ve/ncsnv2/bedroom.py \
        --workdir runs/ve_ncsnv2_bedroom
Tiny smoke variant:
    scoresde train --config experiments/configs/ve/ncsnv2/bedroom.py:smoke \
        --workdir /tmp/smoke

Reference: score_sde configs/ve/ncsnv2/bedroom.py (Song et al., ICLR 2021).

Fixes of the reference config:
- the reference misspells `training.continuouse = False`, which leaves the default
  `training.continuous = True`; here `training.continuous = False` as intended for NCSNv2.
"""

from __future__ import annotations

from experiments.configs import common


def get_config(arg: str | None = None):
    """The config; `arg` "smoke" gives the tiny variant."""
    config = common.lsun_defaults()

    training = config.training
    training.batch_size = 128
    training.sde = "vesde"
    training.continuous = False

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "none"
    sampling.corrector = "ald"
    sampling.n_steps_each = 3
    sampling.snr = 0.095

    data = config.data
    data.category = "bedroom"
    data.image_size = 128

    model = config.model
    model.name = "ncsnv2_128"
    model.scale_by_sigma = True
    model.sigma_max = 190.0
    model.num_scales = 1086
    model.ema_rate = 0.9999
    model.sigma_min = 0.01
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
