r"""DDPM++ on CIFAR-10 32x32, sub-VP SDE, continuous-time training.

Run:
    scoresde train --config experiments/configs/subvp/cifar10_ddpmpp_continuous.py \
        --workdir runs/subvp_cifar10_ddpmpp_continuous
Tiny smoke variant:
    scoresde train --config experiments/configs/subvp/cifar10_ddpmpp_continuous.py:smoke \
        --workdir /tmp/smoke

Reference: score_sde configs/subvp/cifar10_ddpmpp_continuous.py (Song et al., ICLR 2021).

Identical to `vp/cifar10_ddpmpp_continuous.py` except for `training.sde` (as in the
reference), so it is written as that config plus the change.
"""

from __future__ import annotations

from experiments.configs.vp import cifar10_ddpmpp_continuous as base


def get_config(arg: str | None = None):
    """The config; `arg` "smoke" gives the tiny variant."""
    config = base.get_config(arg)
    config.training.sde = "subvpsde"

    return config
