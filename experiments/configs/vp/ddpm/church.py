r"""DDPM on LSUN church 256x256, VP SDE, discrete timesteps (DDPM).

Run:
    scoresde train --config experiments/configs/vp/ddpm/church.py \
        --workdir runs/vp_ddpm_church
Tiny smoke variant:
    scoresde train --config experiments/configs/vp/ddpm/church.py:smoke \
        --workdir /tmp/smoke

Reference: score_sde configs/vp/ddpm/church.py (Song et al., ICLR 2021).
"""

from __future__ import annotations

from experiments.configs import common


def get_config(arg: str | None = None):
    """The config; `arg` "smoke" gives the tiny variant."""
    config = common.lsun_defaults()

    training = config.training
    training.sde = "vpsde"
    training.continuous = False
    training.reduce_mean = True

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "ancestral_sampling"
    sampling.corrector = "none"

    data = config.data
    data.category = "church_outdoor"
    data.centered = True

    model = config.model
    model.name = "ddpm"
    model.scale_by_sigma = False
    model.num_scales = 1000
    model.ema_rate = 0.9999
    model.normalization = "GroupNorm"
    model.nonlinearity = "swish"
    model.nf = 128
    model.ch_mult = (1, 1, 2, 2, 4, 4)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True

    optim = config.optim
    optim.lr = 2e-5

    return common.finalize(config, arg)
