"""Every experiment config's smoke variant builds and takes one training step.

The objects come from the one config -> objects place (:mod:`scoresde.experiment`) and the
data from the config's own loader: ``tfds.testing.mock_data`` for the tfds datasets, the
embedded sets for DIGITS and TOY2D. The reference's CelebA-HQ/FFHQ configs read the
authors' TFRecord files, which cannot be mocked through tfds: they get uniform random
images of the config's shape, in the model's range.

A training step compiles the whole network with its gradient, 10-60 s each on a 2-core
CPU, so the full sweep is ``slow``; the fast selection keeps one config per loss family
that the CLI's end-to-end test (digits: continuous VP DSM) does not already cover.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest

import scoresde as sd
from scoresde import experiment
from scoresde.config_loading import load_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"
ALL = sorted(
    str(p.relative_to(CONFIGS))
    for p in CONFIGS.rglob("*.py")
    if p.name not in ("__init__.py", "common.py")
)
# toy2d: the MLP; ve/ncsn/cifar10: discrete SMLD loss with integer labels (NCSN);
# vp/ddpm/cifar10: discrete DDPM loss (DDPM network).
FAST = ("toy2d.py", "ve/ncsn/cifar10.py", "vp/ddpm/cifar10.py")
TFRECORD_DATASETS = ("CELEBAHQ", "FFHQ")


def _first_batch(config) -> np.ndarray:
    dataset = str(config.data.dataset).upper()
    if dataset in TFRECORD_DATASETS:
        shape = experiment.data_shape_from_config(config)
        rng = np.random.default_rng(0)
        low = -1.0 if config.data.centered else 0.0
        return rng.uniform(low, 1.0, (int(config.training.batch_size), *shape)).astype(np.float32)
    geometry = dict(local_device_count=1, process_index=0, process_count=1, device_axis=False)
    if dataset in ("DIGITS", "TOY2D"):
        return next(sd.data.train_loader_from_config(config, **geometry))["image"]
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=2 * int(config.training.batch_size)):
        return next(sd.data.train_loader_from_config(config, **geometry))["image"]


def _one_training_step(rel: str) -> None:
    config = load_config(f"{CONFIGS / rel}:smoke")
    sde = experiment.sde_from_config(config)
    model = sd.models.from_config(config)
    shape = experiment.data_shape_from_config(config)
    variables = experiment.init_variables(model, jax.random.key(0), shape)
    optimizer = experiment.optimizer_from_config(config)
    loss_fn = experiment.loss_fn_from_config(config, sde, model)
    step = sd.make_train_step(loss_fn, optimizer, mesh=sd.data_mesh(jax.devices()[:1]))
    params = variables.pop("params")
    state = step.replicate(sd.TrainState.create(params, optimizer, 0, model_state=variables))
    batch = _first_batch(config)
    assert batch.shape[1:] == tuple(shape), rel
    state, metrics = step(state, step.shard_batch({"image": batch}))
    loss = float(metrics["loss"])
    # A finite loss and a finite, nonzero gradient: the step ran end to end. (Parameters
    # do not move yet: the reference's linear warm-up gives the first update a zero lr.)
    grad_norm = float(metrics["grad_norm"])
    assert np.isfinite(loss), (rel, loss)
    assert np.isfinite(grad_norm) and grad_norm > 0, (rel, grad_norm)
    assert int(state.step) == 1, rel


def test_every_config_is_listed():
    # 39 reference experiments + the offline digits and toy2d configs.
    assert len(ALL) == 41, ALL


@pytest.mark.parametrize("rel", FAST)
def test_smoke_training_step_fast(rel):
    _one_training_step(rel)


@pytest.mark.slow
@pytest.mark.parametrize("rel", [r for r in ALL if r not in FAST])
def test_smoke_training_step(rel):
    _one_training_step(rel)
