r"""NCSN++ on FFHQ 256x256, VE SDE, continuous-time training.

Run:
    scoresde train --config experiments/configs/ve/ffhq_256_ncsnpp_continuous.py \
        --workdir runs/ve_ffhq_256_ncsnpp_continuous \
        --config.data.tfrecords_path=/path/to/file.tfrecords
Tiny smoke variant:
    scoresde train --config experiments/configs/ve/ffhq_256_ncsnpp_continuous.py:smoke \
        --workdir /tmp/smoke

Reference: score_sde configs/ve/ffhq_256_ncsnpp_continuous.py (Song et al., ICLR 2021).

Fixes of the reference config:
- data.tfrecords_path pointed at the author's disk; it is now a required override.

Identical to `ve/celebahq_256_ncsnpp_continuous.py` except for `data.dataset` (as in the
reference), so it is written as that config plus the change.
"""

from __future__ import annotations

from experiments.configs.ve import celebahq_256_ncsnpp_continuous as base


def get_config(arg: str | None = None):
    """The config; `arg` "smoke" gives the tiny variant."""
    config = base.get_config(arg)
    config.data.dataset = "FFHQ"

    return config
