r"""NCSN++ on FFHQ 1024x1024, VE SDE, continuous-time training.

Run:
    scoresde train --config experiments/configs/ve/ffhq_ncsnpp_continuous.py \
        --workdir runs/ve_ffhq_ncsnpp_continuous \
        --config.data.tfrecords_path=/path/to/file.tfrecords
Tiny smoke variant:
    scoresde train --config experiments/configs/ve/ffhq_ncsnpp_continuous.py:smoke \
        --workdir /tmp/smoke

Reference: score_sde configs/ve/ffhq_ncsnpp_continuous.py (Song et al., ICLR 2021).

Fixes of the reference config:
- the reference imports torch and sets `config.device`; dropped.
- fields the standalone reference file lacks (training.n_jitted_steps,
  eval.enable_sampling/enable_loss/enable_bpd/bpd_dataset, model.beta_min/beta_max) come from
  the LSUN defaults.
- data.tfrecords_path pointed at the author's disk; it is now a required override.

Identical to `ve/celebahq_ncsnpp_continuous.py` except for `data.dataset` and
`training.reduce_mean = True` (as in the reference), so it is written as that config plus
the changes.
"""

from __future__ import annotations

from experiments.configs.ve import celebahq_ncsnpp_continuous as base


def get_config(arg: str | None = None):
    """The config; `arg` "smoke" gives the tiny variant."""
    config = base.get_config(arg)
    config.data.dataset = "FFHQ"
    config.training.reduce_mean = True

    return config
