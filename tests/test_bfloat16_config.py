"""``model.dtype``: the bfloat16-compute option of the experiment configs.

Parameters stay float32 (the optimizer and EMA update float32 master weights); only the
network's convolutions, matrix products and activations run in bfloat16.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoresde as sd
from scoresde.config_loading import load_config
from scoresde.experiment import (
    init_variables,
    loss_fn_from_config,
    optimizer_from_config,
    sde_from_config,
)

DDPMPP_SMOKE = "experiments/configs/vp/cifar10_ddpmpp_continuous.py:smoke"


def test_model_dtype_selects_the_compute_dtype():
    for path in (DDPMPP_SMOKE, "experiments/configs/vp/ddpm/cifar10.py:smoke"):
        assert sd.models.from_config(load_config(path)).dtype == jnp.float32
        model = sd.models.from_config(load_config(path, ["model.dtype=bfloat16"]))
        assert model.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match=r"model.dtype must be one of .*'float16'"):
        sd.models.from_config(load_config(DDPMPP_SMOKE, ["model.dtype=float16"]))
    ncsnv2 = load_config("experiments/configs/ve/ncsnv2/cifar10.py:smoke", ["model.dtype=bfloat16"])
    with pytest.raises(ValueError, match=r"model.dtype must be one of \('float32',\)"):
        sd.models.from_config(ncsnv2)


def _train(config, n_steps: int):
    sde = sde_from_config(config)
    model = sd.models.from_config(config)
    size, ch = int(config.data.image_size), int(config.data.num_channels)
    variables = init_variables(model, jax.random.key(0), (size, size, ch))
    optimizer = optimizer_from_config(config)
    loss_fn = loss_fn_from_config(config, sde, model, train=True)
    step = sd.make_train_step(loss_fn, optimizer, mesh=sd.data_mesh(jax.devices()[:1]))
    state = step.replicate(sd.TrainState.create(variables["params"], optimizer, 0))
    batches = np.random.default_rng(0).uniform(-1, 1, (n_steps, 8, size, size, ch))
    losses = []
    for x in batches.astype(np.float32):
        state, metrics = step(state, step.shard_batch(x))
        losses.append(float(metrics["loss"]))
    return np.array(losses), state


def test_bfloat16_compute_trains_like_float32():
    """Same init, batches and noise: the per-step losses of a short run agree to bfloat16's
    precision, and the parameters stay float32.

    ``init_scale=1`` makes the network's output O(1) from the first step, so its rounding
    reaches the loss. bfloat16 keeps 8 significant bits (2^-9 ~ 0.2% relative per
    operation); the batch-mean loss averages much of that out (measured here: <= 7e-4
    relative), so 1e-2 is a 10x margin, while the run itself moves the loss by ~0.7 (50x the
    allowed difference). Identical losses would mean bfloat16 was never used (float32 reruns on
    the CPU are bit-identical).
    """
    overrides = ["optim.warmup=0", "optim.lr=1e-3", "model.init_scale=1.0"]
    f32 = load_config(DDPMPP_SMOKE, overrides)
    b16 = load_config(DDPMPP_SMOKE, [*overrides, "model.dtype=bfloat16"])
    losses32, _ = _train(f32, 6)
    losses16, state16 = _train(b16, 6)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state16.params))
    rel = np.abs(losses16 - losses32) / losses32
    assert 1e-6 < np.max(rel) < 1e-2, (losses32, losses16)
    assert np.ptp(losses32) > 50 * np.max(np.abs(losses16 - losses32)), (losses32, losses16)


def test_inference_variables_convert_bfloat16_weights_once_and_sample_alike(tmp_path, monkeypatch):
    """``sample`` and the bits/dim of ``eval`` and ``likelihood`` give the score function the
    weights of a bfloat16 network converted once (Setup.inference_variables): its kernels become
    bfloat16, its GroupNorm scales and biases (used in float32) stay float32, and the samples
    are those of the float32 weights bit for bit (converting twice is converting once)."""
    from scoresde.cli import Setup, _to_data_space, draw_samples

    overrides = ["model.init_scale=1.0", "model.num_scales=5", "model.beta_max=4.0"]
    setup = Setup.build(load_config(DDPMPP_SMOKE, [*overrides, "model.dtype=bfloat16"]), tmp_path)
    variables = init_variables(setup.model, jax.random.key(0), setup.data_shape)
    prepared = setup.inference_variables(variables)
    flat = dict(jax.tree_util.tree_flatten_with_path(prepared)[0])
    dtypes = {jax.tree_util.keystr(k): v.dtype for k, v in flat.items()}
    kernels = [d for k, d in dtypes.items() if k.endswith("['kernel']")]
    norms = [d for k, d in dtypes.items() if "GroupNorm" in k]
    assert kernels and all(d == jnp.bfloat16 for d in kernels)
    assert norms and all(d == jnp.float32 for d in norms)

    seen = []  # the weights draw_samples hands to the score function (the last call)
    make_score = setup.make_score
    monkeypatch.setattr(setup, "make_score", lambda v: seen.append(v) or make_score(v))
    key = jax.random.key(3)
    got = draw_samples(setup, variables, key, num=2, batch_size=2)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: a.dtype == b.dtype, seen[-1], prepared)))
    monkeypatch.undo()
    shape = (2, *setup.data_shape)
    x, _ = setup.sampler(jax.random.fold_in(key, 0), setup.sde, setup.make_score(variables), shape)
    want = _to_data_space(setup, np.asarray(x))
    assert np.array_equal(got, want)
    assert np.ptp(want) > 0.1  # real samples, not a constant

    f32 = Setup.build(load_config(DDPMPP_SMOKE, overrides), tmp_path)
    assert f32.inference_variables(variables) is variables
