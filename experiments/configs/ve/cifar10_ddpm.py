r"""DDPM on CIFAR-10 32x32, VE SDE, discrete noise scales (SMLD).

The DDPM network trained with the SMLD objective.

Run:
    scoresde train --config experiments/configs/ve/cifar10_ddpm.py \
        --workdir runs/ve_cifar10_ddpm
Tiny smoke variant:
    scoresde train --config experiments/configs/ve/cifar10_ddpm.py:smoke \
        --workdir /tmp/smoke

Reference: score_sde configs/ve/cifar10_ddpm.py (Song et al., ICLR 2021).
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
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"

    model = config.model
    model.name = "ddpm"
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.normalization = "GroupNorm"
    model.nonlinearity = "swish"
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.conv_size = 3

    return common.finalize(config, arg)
