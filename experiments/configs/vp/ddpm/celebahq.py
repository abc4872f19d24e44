r"""DDPM on CelebA-HQ 256x256, VP SDE, discrete timesteps (DDPM).

Run:
    scoresde train --config experiments/configs/vp/ddpm/celebahq.py \
        --workdir runs/vp_ddpm_celebahq \
        --config.data.tfrecords_path=/path/to/file.tfrecords
Tiny smoke variant:
    scoresde train --config experiments/configs/vp/ddpm/celebahq.py:smoke \
        --workdir /tmp/smoke

Reference: score_sde configs/vp/ddpm/celebahq.py (Song et al., ICLR 2021).

Fixes of the reference config:
- data.tfrecords_path pointed at the author's disk; it is now a required override.
"""

from __future__ import annotations

from ml_collections import config_dict

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
    data.dataset = "CelebAHQ"
    data.centered = True
    data.tfrecords_path = config_dict.placeholder(str)
    data.image_size = 256

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
