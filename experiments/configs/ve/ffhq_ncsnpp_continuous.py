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
"""

from __future__ import annotations

from ml_collections import config_dict

from experiments.configs import common


def get_config(arg: str | None = None):
    """The config; `arg` "smoke" gives the tiny variant."""
    config = common.lsun_defaults()

    training = config.training
    training.batch_size = 8
    training.n_iters = 2400001
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.eval_freq = 100
    training.snapshot_freq_for_preemption = 5000
    training.snapshot_sampling = True
    training.sde = "vesde"
    training.continuous = True
    training.likelihood_weighting = False
    training.reduce_mean = True

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"
    sampling.probability_flow = False
    sampling.snr = 0.15
    sampling.n_steps_each = 1
    sampling.noise_removal = True

    evaluate = config.eval
    evaluate.batch_size = 1024
    evaluate.num_samples = 50000
    evaluate.begin_ckpt = 1
    evaluate.end_ckpt = 96

    data = config.data
    data.dataset = "FFHQ"
    data.image_size = 1024
    data.centered = False
    data.random_flip = True
    data.uniform_dequantization = False
    data.num_channels = 3
    data.tfrecords_path = config_dict.placeholder(str)

    model = config.model
    model.name = "ncsnpp"
    model.scale_by_sigma = True
    model.sigma_max = 1348.0
    model.num_scales = 2000
    model.ema_rate = 0.9999
    model.sigma_min = 0.01
    model.normalization = "GroupNorm"
    model.nonlinearity = "swish"
    model.nf = 16
    model.ch_mult = (1, 2, 4, 8, 16, 32, 32, 32)
    model.num_res_blocks = 1
    model.attn_resolutions = (16,)
    model.dropout = 0.0
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = True
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = "biggan"
    model.progressive = "output_skip"
    model.progressive_input = "input_skip"
    model.progressive_combine = "sum"
    model.attention_type = "ddpm"
    model.init_scale = 0.0
    model.fourier_scale = 16.0
    model.conv_size = 3
    model.embedding_type = "fourier"

    optim = config.optim
    optim.weight_decay = 0.0
    optim.optimizer = "Adam"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.amsgrad = False
    optim.eps = 1e-8
    optim.warmup = 5000
    optim.grad_clip = 1.0

    config.seed = 42

    return common.finalize(config, arg)
