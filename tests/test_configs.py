"""Experiment configs: all 39 reference configs load with the reference's fields and values,
the documented fixes hold, overrides and validation work, and every smoke variant builds its
network.

The table below holds facts of the reference's config files (yang-song/score_sde
``configs/``): SDE, continuous training, network, dataset, image size, ``nf``,
``sigma_max``, ``num_scales``, ``snr``, predictor, corrector, ``centered``, batch size and
EMA rate, after the documented fixes (``ve/ncsn/celeba``: ``training.sde``;
``ve/ncsnv2/bedroom``: ``continuous = False``).
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scoresde.config_loading import (
    SDE_NAMES,
    apply_overrides,
    load_config,
    split_config_arg,
    validate_config,
)

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"

# rel path: (sde, continuous, model.name, dataset, image_size, nf, sigma_max, num_scales, snr,
#            predictor, corrector, centered, batch_size, ema_rate)
REFERENCE = {
    "subvp/cifar10_ddpm_continuous.py": (
        "subvpsde",
        True,
        "ddpm",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "euler_maruyama",
        "none",
        True,
        128,
        0.9999,
    ),
    "subvp/cifar10_ddpmpp_continuous.py": (
        "subvpsde",
        True,
        "ncsnpp",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "euler_maruyama",
        "none",
        True,
        128,
        0.9999,
    ),
    "subvp/cifar10_ddpmpp_deep_continuous.py": (
        "subvpsde",
        True,
        "ncsnpp",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "euler_maruyama",
        "none",
        True,
        128,
        0.9999,
    ),
    "subvp/cifar10_ncsnpp_continuous.py": (
        "subvpsde",
        True,
        "ncsnpp",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "euler_maruyama",
        "none",
        True,
        128,
        0.9999,
    ),
    "subvp/cifar10_ncsnpp_deep_continuous.py": (
        "subvpsde",
        True,
        "ncsnpp",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "euler_maruyama",
        "none",
        True,
        128,
        0.9999,
    ),
    "ve/bedroom_ncsnpp_continuous.py": (
        "vesde",
        True,
        "ncsnpp",
        "LSUN",
        256,
        128,
        378.0,
        2000,
        0.075,
        "reverse_diffusion",
        "langevin",
        False,
        64,
        0.999,
    ),
    "ve/celeba_ncsnpp.py": (
        "vesde",
        False,
        "ncsnpp",
        "CELEBA",
        64,
        128,
        90.0,
        1000,
        0.17,
        "reverse_diffusion",
        "langevin",
        False,
        128,
        0.999,
    ),
    "ve/celebahq_256_ncsnpp_continuous.py": (
        "vesde",
        True,
        "ncsnpp",
        "CelebAHQ",
        256,
        128,
        348.0,
        2000,
        0.075,
        "reverse_diffusion",
        "langevin",
        False,
        64,
        0.999,
    ),
    "ve/celebahq_ncsnpp_continuous.py": (
        "vesde",
        True,
        "ncsnpp",
        "CelebAHQ",
        1024,
        16,
        1348.0,
        2000,
        0.15,
        "reverse_diffusion",
        "langevin",
        False,
        8,
        0.9999,
    ),
    "ve/church_ncsnpp_continuous.py": (
        "vesde",
        True,
        "ncsnpp",
        "LSUN",
        256,
        128,
        380.0,
        2000,
        0.075,
        "reverse_diffusion",
        "langevin",
        False,
        64,
        0.999,
    ),
    "ve/cifar10_ddpm.py": (
        "vesde",
        False,
        "ddpm",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "reverse_diffusion",
        "langevin",
        False,
        128,
        0.999,
    ),
    "ve/cifar10_ncsnpp.py": (
        "vesde",
        False,
        "ncsnpp",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "reverse_diffusion",
        "langevin",
        False,
        128,
        0.999,
    ),
    "ve/cifar10_ncsnpp_continuous.py": (
        "vesde",
        True,
        "ncsnpp",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "reverse_diffusion",
        "langevin",
        False,
        128,
        0.999,
    ),
    "ve/cifar10_ncsnpp_deep_continuous.py": (
        "vesde",
        True,
        "ncsnpp",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "reverse_diffusion",
        "langevin",
        False,
        128,
        0.999,
    ),
    "ve/ffhq_256_ncsnpp_continuous.py": (
        "vesde",
        True,
        "ncsnpp",
        "FFHQ",
        256,
        128,
        348.0,
        2000,
        0.075,
        "reverse_diffusion",
        "langevin",
        False,
        64,
        0.999,
    ),
    "ve/ffhq_ncsnpp_continuous.py": (
        "vesde",
        True,
        "ncsnpp",
        "FFHQ",
        1024,
        16,
        1348.0,
        2000,
        0.15,
        "reverse_diffusion",
        "langevin",
        False,
        8,
        0.9999,
    ),
    "ve/ncsn/celeba.py": (
        "vesde",
        False,
        "ncsn",
        "CELEBA",
        64,
        128,
        1.0,
        10,
        0.316,
        "none",
        "ald",
        False,
        128,
        0.0,
    ),
    "ve/ncsn/celeba_124.py": (
        "vesde",
        False,
        "ncsn",
        "CELEBA",
        64,
        128,
        90.0,
        500,
        0.128,
        "none",
        "ald",
        False,
        128,
        0.0,
    ),
    "ve/ncsn/celeba_1245.py": (
        "vesde",
        False,
        "ncsn",
        "CELEBA",
        64,
        128,
        90.0,
        500,
        0.128,
        "none",
        "ald",
        False,
        128,
        0.999,
    ),
    "ve/ncsn/celeba_5.py": (
        "vesde",
        False,
        "ncsn",
        "CELEBA",
        64,
        128,
        1.0,
        10,
        0.316,
        "none",
        "ald",
        False,
        128,
        0.999,
    ),
    "ve/ncsn/cifar10.py": (
        "vesde",
        False,
        "ncsn",
        "CIFAR10",
        32,
        128,
        1.0,
        10,
        0.316,
        "none",
        "ald",
        False,
        128,
        0.0,
    ),
    "ve/ncsn/cifar10_124.py": (
        "vesde",
        False,
        "ncsn",
        "CIFAR10",
        32,
        128,
        50.0,
        232,
        0.176,
        "none",
        "ald",
        False,
        128,
        0.0,
    ),
    "ve/ncsn/cifar10_1245.py": (
        "vesde",
        False,
        "ncsn",
        "CIFAR10",
        32,
        128,
        50.0,
        232,
        0.176,
        "none",
        "ald",
        False,
        128,
        0.999,
    ),
    "ve/ncsn/cifar10_5.py": (
        "vesde",
        False,
        "ncsn",
        "CIFAR10",
        32,
        128,
        1.0,
        10,
        0.316,
        "none",
        "ald",
        False,
        128,
        0.999,
    ),
    "ve/ncsnv2/bedroom.py": (
        "vesde",
        False,
        "ncsnv2_128",
        "LSUN",
        128,
        128,
        190.0,
        1086,
        0.095,
        "none",
        "ald",
        False,
        128,
        0.9999,
    ),
    "ve/ncsnv2/celeba.py": (
        "vesde",
        False,
        "ncsnv2_64",
        "CELEBA",
        64,
        128,
        90.0,
        500,
        0.128,
        "none",
        "ald",
        False,
        128,
        0.999,
    ),
    "ve/ncsnv2/cifar10.py": (
        "vesde",
        False,
        "ncsnv2_64",
        "CIFAR10",
        32,
        128,
        50.0,
        232,
        0.176,
        "none",
        "ald",
        False,
        128,
        0.999,
    ),
    "vp/cifar10_ddpmpp.py": (
        "vpsde",
        False,
        "ncsnpp",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "ancestral_sampling",
        "none",
        True,
        128,
        0.9999,
    ),
    "vp/cifar10_ddpmpp_continuous.py": (
        "vpsde",
        True,
        "ncsnpp",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "euler_maruyama",
        "none",
        True,
        128,
        0.9999,
    ),
    "vp/cifar10_ddpmpp_deep_continuous.py": (
        "vpsde",
        True,
        "ncsnpp",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "euler_maruyama",
        "none",
        True,
        128,
        0.9999,
    ),
    "vp/cifar10_ncsnpp.py": (
        "vpsde",
        False,
        "ncsnpp",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "reverse_diffusion",
        "none",
        True,
        128,
        0.9999,
    ),
    "vp/cifar10_ncsnpp_continuous.py": (
        "vpsde",
        True,
        "ncsnpp",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "euler_maruyama",
        "none",
        True,
        128,
        0.9999,
    ),
    "vp/cifar10_ncsnpp_deep_continuous.py": (
        "vpsde",
        True,
        "ncsnpp",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "euler_maruyama",
        "none",
        True,
        128,
        0.9999,
    ),
    "vp/ddpm/bedroom.py": (
        "vpsde",
        False,
        "ddpm",
        "LSUN",
        256,
        128,
        378.0,
        1000,
        0.075,
        "ancestral_sampling",
        "none",
        True,
        64,
        0.9999,
    ),
    "vp/ddpm/celebahq.py": (
        "vpsde",
        False,
        "ddpm",
        "CelebAHQ",
        256,
        128,
        378.0,
        1000,
        0.075,
        "ancestral_sampling",
        "none",
        True,
        64,
        0.9999,
    ),
    "vp/ddpm/church.py": (
        "vpsde",
        False,
        "ddpm",
        "LSUN",
        256,
        128,
        378.0,
        1000,
        0.075,
        "ancestral_sampling",
        "none",
        True,
        64,
        0.9999,
    ),
    "vp/ddpm/cifar10.py": (
        "vpsde",
        False,
        "ddpm",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "ancestral_sampling",
        "none",
        True,
        128,
        0.9999,
    ),
    "vp/ddpm/cifar10_continuous.py": (
        "vpsde",
        True,
        "ddpm",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "euler_maruyama",
        "none",
        True,
        128,
        0.9999,
    ),
    "vp/ddpm/cifar10_unconditional.py": (
        "vpsde",
        False,
        "ddpm",
        "CIFAR10",
        32,
        128,
        50.0,
        1000,
        0.16,
        "ancestral_sampling",
        "none",
        True,
        128,
        0.9999,
    ),
}
OFFLINE = ("digits.py", "toy2d.py")
ALL = (*REFERENCE, *OFFLINE)

# Fields every experiment config carries (the reference defaults' fields).
COMMON_FIELDS = {
    "training": (
        "batch_size n_iters snapshot_freq log_freq eval_freq snapshot_freq_for_preemption "
        "snapshot_sampling likelihood_weighting continuous n_jitted_steps reduce_mean sde"
    ),
    "sampling": "n_steps_each noise_removal probability_flow snr method predictor corrector",
    "eval": (
        "begin_ckpt end_ckpt batch_size enable_sampling num_samples enable_loss enable_bpd "
        "bpd_dataset"
    ),
    "data": "dataset random_flip uniform_dequantization centered num_channels",
    "model": "sigma_min sigma_max num_scales beta_min beta_max dropout name ema_rate nf",
    "optim": "weight_decay optimizer lr beta1 eps warmup grad_clip",
}


def test_all_reference_configs_present():
    files = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.py")}
    files -= {"common.py", *OFFLINE}
    files = {f for f in files if not f.endswith("__init__.py")}
    assert files == set(REFERENCE)
    assert len(REFERENCE) == 39


@pytest.mark.parametrize("rel", list(REFERENCE))
def test_reference_values(rel):
    c = load_config(CONFIGS / rel)
    (sde, continuous, name, dataset, size, nf, sigma_max, num_scales, snr, predictor,
     corrector, centered, batch_size, ema_rate) = REFERENCE[rel]  # fmt: skip
    assert c.training.sde == sde
    assert c.training.continuous is continuous
    assert c.model.name == name
    assert c.data.dataset == dataset
    assert c.data.image_size == size
    assert c.model.nf == nf
    assert c.model.sigma_max == sigma_max
    assert c.model.num_scales == num_scales
    assert c.sampling.snr == snr
    assert (c.sampling.predictor, c.sampling.corrector) == (predictor, corrector)
    assert c.data.centered is centered
    assert c.training.batch_size == batch_size
    assert c.model.ema_rate == ema_rate
    # the docstring says how to run it
    text = (CONFIGS / rel).read_text()
    assert f"scoresde train --config experiments/configs/{rel}" in text


@pytest.mark.parametrize("rel", ALL)
def test_common_fields_and_json(rel):
    c = load_config(CONFIGS / rel)
    for section, fields in COMMON_FIELDS.items():
        missing = [f for f in fields.split() if f not in c[section]]
        assert not missing, (section, missing)
    assert isinstance(c.seed, int)
    json.dumps(c.to_dict())  # a workdir can store the config as JSON


def test_documented_fixes():
    celeba = load_config(CONFIGS / "ve/ncsn/celeba.py")
    assert "loss" not in celeba.training and celeba.training.sde == "vesde"
    bedroom = load_config(CONFIGS / "ve/ncsnv2/bedroom.py")
    assert "continuouse" not in bedroom.training and bedroom.training.continuous is False
    for rel in ("ve/celebahq_ncsnpp_continuous.py", "ve/ffhq_ncsnpp_continuous.py"):
        c = load_config(CONFIGS / rel)
        assert "device" not in c and c.training.n_jitted_steps == 5
        assert c.data.tfrecords_path is None  # required override, not the author's disk


def test_overrides_and_args():
    c = load_config(
        f"{CONFIGS}/vp/cifar10_ddpmpp_continuous.py",
        ["training.n_iters=10", "model.ch_mult=(1, 2)", "--config.data.data_dir=/tmp/tfds"],
    )
    assert c.training.n_iters == 10 and c.model.ch_mult == (1, 2)
    assert c.data.data_dir == "/tmp/tfds"
    with pytest.raises(ValueError, match="no field 'n_iter'"):
        load_config(CONFIGS / "digits.py", ["training.n_iter=3"])
    with pytest.raises(ValueError, match="training.n_iters"):
        load_config(CONFIGS / "digits.py", ["training.n_iters='many'"])
    with pytest.raises(ValueError, match="config argument must be one of"):
        load_config(f"{CONFIGS}/digits.py:huge")
    assert split_config_arg("a/b.py") == ("a/b.py", None)


def test_validation_names_allowed_values():
    c = load_config(CONFIGS / "digits.py")
    bad = ml_collections.ConfigDict(c.to_dict())
    bad.training.sde = "ddpm"
    with pytest.raises(ValueError, match="training.sde must be one of") as e:
        validate_config(bad)
    assert all(name in str(e.value) for name in SDE_NAMES)
    bad = apply_overrides(ml_collections.ConfigDict(c.to_dict()), {"data.dataset": "IMAGENET"})
    with pytest.raises(ValueError, match="data.dataset must be one of.*CIFAR10"):
        validate_config(bad)
    bad = apply_overrides(ml_collections.ConfigDict(c.to_dict()), {"sampling.corrector": "x"})
    with pytest.raises(ValueError, match="sampling.corrector must be one of"):
        validate_config(bad)


def _data_shape(config) -> tuple[int, ...]:
    if config.data.dataset.upper() == "TOY2D":
        return (2, 2)
    s, ch = config.data.image_size, config.data.num_channels
    return (2, s, s, ch)


@pytest.mark.parametrize("rel", ALL)
def test_smoke_variant_builds_model(rel):
    """Every smoke config is small and ``from_config`` turns it into a network."""
    models = pytest.importorskip("scoresde.models", reason="scoresde.models.from_config missing")
    c = load_config(f"{CONFIGS}/{rel}:smoke")
    assert c.training.batch_size <= 8 and c.training.n_iters <= 10
    assert c.model.nf <= 32 and c.model.num_scales <= 21
    if c.training.sde in ("vpsde", "subvpsde"):
        # DDPM's discrete betas (ancestral sampling, Langevin step sizes) need beta_max / N < 1
        assert c.model.beta_max / c.model.num_scales < 1
    if c.data.dataset.upper() != "TOY2D":
        assert c.data.image_size <= 16
    assert models.from_config(c) is not None


def test_smoke_networks_trace():
    """Each distinct smoke network initialises and maps x to x's shape (traced, no compile).

    Many configs share a smoke network (they differ in depth or training only), so each
    distinct (network, input shape) is traced once.
    """
    models = pytest.importorskip("scoresde.models", reason="scoresde.models.from_config missing")
    from scoresde.experiment import sde_from_config

    seen = {}
    for rel in ALL:
        c = load_config(f"{CONFIGS}/{rel}:smoke")
        try:
            model = models.from_config(c)
        except ValueError:  # an unknown model.name fails test_smoke_variant_builds_model
            continue
        # The label dtype comes from the SDE's convention: discrete VE models (NCSN,
        # NCSNv2) take integer noise levels, every other network float time labels.
        sde = sde_from_config(c)
        t = jnp.full(_data_shape(c)[:1], 0.5)
        label_dtype = sde.network_labels(t, bool(c.training.continuous)).dtype
        seen.setdefault((repr(model), _data_shape(c), str(label_dtype)), (rel, model))
    for (_, shape, label_dtype), (rel, model) in seen.items():
        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        labels = jax.ShapeDtypeStruct(shape[:1], jnp.dtype(label_dtype))
        variables = jax.eval_shape(
            lambda k, x, t, m=model: m.init(k, x, t, train=False), jax.random.key(0), x, labels
        )
        out = jax.eval_shape(
            lambda v, x, t, m=model: m.apply(v, x, t, train=False), variables, x, labels
        )
        assert out.shape == shape, rel


@pytest.mark.slow
def test_digits_smoke_forward_is_finite():
    pytest.importorskip("scoresde.models.factory", reason="scoresde.models.from_config missing")
    from scoresde.data import train_loader_from_config
    from scoresde.models import from_config

    c = load_config(f"{CONFIGS}/digits.py:smoke")
    batch = next(train_loader_from_config(c, local_device_count=1))
    x = jnp.asarray(batch["image"][0])
    labels = jnp.full((x.shape[0],), 500.0)
    model = from_config(c)
    variables = model.init(jax.random.key(0), x, labels, train=False)
    out = model.apply(variables, x, labels, train=False)
    assert out.shape == x.shape and bool(np.isfinite(np.asarray(out)).all())
