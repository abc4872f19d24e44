r"""A 2-D toy: a residual MLP score model with the VP SDE on a checkerboard (or moons, mixture).

The data are a fixed, seeded sample of ``data.num_samples`` points of ``data.toy``
(``"checkerboard"``, ``"two_moons"`` or ``"gaussian_mixture"``, whose exact score is
``scoresde.data.toy2d_mixture()``'s). The network is ``scoresde.models.mlp.ScoreMLP``
(``model.name = "mlp"``; ``model.nf`` hidden units, ``model.num_layers`` residual blocks).
Samples are 2-D points ``(B, 2)``, not images: no scaling, flips or bits/dim.

Run:
    scoresde train --config experiments/configs/toy2d.py --workdir runs/toy2d
Another distribution:
    scoresde train --config experiments/configs/toy2d.py --workdir runs/moons \
        --config.data.toy=two_moons
Tiny smoke variant:
    scoresde train --config experiments/configs/toy2d.py:smoke --workdir /tmp/smoke

Sizes and step counts are first choices for a CPU, not tuned values.
"""

from __future__ import annotations

from experiments.configs import common


def get_config(arg: str | None = None):
    """The config; `arg` "smoke" gives the tiny variant."""
    config = common.cifar10_defaults()

    training = config.training
    training.sde = "vpsde"
    training.continuous = True
    training.reduce_mean = True
    training.batch_size = 256
    training.n_iters = 5000
    training.snapshot_freq = 1000
    training.snapshot_freq_for_preemption = 500
    training.log_freq = 100
    training.eval_freq = 500
    training.n_jitted_steps = 1

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"

    evaluate = config.eval
    evaluate.begin_ckpt = 1
    evaluate.end_ckpt = 5
    evaluate.batch_size = 1000
    evaluate.num_samples = 2000
    evaluate.enable_sampling = True
    evaluate.enable_bpd = False

    data = config.data
    data.dataset = "TOY2D"
    data.toy = "checkerboard"
    data.num_samples = 20000
    data.centered = False
    data.random_flip = False
    data.num_channels = 1

    model = config.model
    model.name = "mlp"
    model.nf = 128
    model.num_layers = 3
    model.embedding_type = "positional"
    model.fourier_scale = 16.0
    model.scale_by_sigma = False
    model.nonlinearity = "swish"
    model.dropout = 0.0
    model.ema_rate = 0.999

    optim = config.optim
    optim.lr = 1e-3
    optim.warmup = 100

    return common.finalize(config, arg)
