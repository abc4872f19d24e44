r"""NCSN++ on CIFAR-10 32x32, sub-VP SDE, continuous-time training.

Run:
    scoresde train --config experiments/configs/subvp/cifar10_ncsnpp_continuous.py \
        --workdir runs/subvp_cifar10_ncsnpp_continuous
Tiny smoke variant:
    scoresde train --config experiments/configs/subvp/cifar10_ncsnpp_continuous.py:smoke \
        --workdir /tmp/smoke

Reference: score_sde configs/subvp/cifar10_ncsnpp_continuous.py (Song et al., ICLR 2021).
"""

from __future__ import annotations

from experiments.configs import common


def get_config(arg: str | None = None):
    """The config; `arg` "smoke" gives the tiny variant."""
    config = common.cifar10_defaults()

    training = config.training
    training.sde = "subvpsde"
    training.continuous = True
    training.reduce_mean = True

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"

    data = config.data
    data.centered = True

    model = config.model
    model.name = "ncsnpp"
    model.scale_by_sigma = False
    model.ema_rate = 0.9999
    model.normalization = "GroupNorm"
    model.nonlinearity = "swish"
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 4
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = True
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = "biggan"
    model.progressive = "none"
    model.progressive_input = "residual"
    model.progressive_combine = "sum"
    model.attention_type = "ddpm"
    model.embedding_type = "positional"
    model.init_scale = 0.0
    model.fourier_scale = 16.0
    model.conv_size = 3

    return common.finalize(config, arg)
