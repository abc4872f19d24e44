"""DDPM U-Net: parity with score_sde_pytorch's ``ddpm`` fixture, sizes, jit/dropout, errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES

import scoresde as sd
from scoresde.models import DDPM
from scoresde.models.factory import ddpm_from_config

FIXTURE = "score_sde_pytorch/ddpm_vp_discrete"
# Float32 forward passes that differ only in the order of reductions (XLA vs PyTorch convs,
# GroupNorm, softmax) agree to ~1e-6 relative here (measured 1.4e-6 on the raw output, 1.8e-6
# on the score); 1e-5 leaves a margin while still catching any single wrong weight or layer.
REL_TOL = 1e-5


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def nhwc(a: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(a).transpose(0, 2, 3, 1)


def random_variables(model, x, labels, seed: int = 0) -> dict:
    """Variables shaped by ``model.init`` (abstractly), drawn as the fixtures draw theirs.

    Kernels ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2): O(1)
    activations everywhere, unlike the reference init whose output layers start at ~0. No
    compiled init, which costs tens of seconds of RNG compilation on CPU.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, labels)

    def draw(path, leaf):
        name = path[-1].key
        if name in ("kernel", "W"):
            return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1])))
        offset = 1.0 if name == "scale" else 0.0
        return jnp.asarray(offset + 0.1 * rng.normal(size=leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def fixture():
    if not FIXTURES.is_dir():
        pytest.skip(f"reference fixtures not found at {FIXTURES} (set SCORESDE_FIXTURES)")
    root = FIXTURES / FIXTURE
    config = json.loads((root / "config.json").read_text())
    meta = json.loads((root / "meta.json").read_text())
    params = dict(np.load(root / "params.npz"))
    model, variables = sd.models.from_score_sde_pytorch(params, config)
    return dict(
        config=config,
        meta=meta,
        params=params,
        inputs=dict(np.load(root / "inputs.npz")),
        outputs=dict(np.load(root / "outputs.npz")),
        model=model,
        variables=variables,
    )


def test_fixture_builds_ddpm_with_reference_param_count(fixture):
    model, variables = fixture["model"], fixture["variables"]
    assert isinstance(model, DDPM)
    assert (model.nf, model.ch_mult, model.num_res_blocks) == (32, (1, 2, 2), 1)
    count = sum(int(leaf.size) for leaf in jax.tree.leaves(variables["params"]))
    assert count == fixture["meta"]["param_count"] == 1_097_187


def test_fixture_raw_output_and_score(fixture):
    model, variables = fixture["model"], fixture["variables"]
    inputs, outputs = fixture["inputs"], fixture["outputs"]
    x = nhwc(inputs["x"])

    def apply(x, labels):
        return model.apply(variables, x, labels, train=False)

    raw = apply(x, jnp.asarray(inputs["labels"], jnp.float32))
    assert rel_l2(raw, nhwc(outputs["raw_output"])) < REL_TOL

    # Training-style integer level indices go through the same sinusoidal embedding.
    raw_int = apply(x, jnp.asarray(inputs["int_labels"], jnp.int32))
    assert rel_l2(raw_int, nhwc(outputs["raw_output_int_labels"])) < REL_TOL

    sde = sd.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
    score_fn = sd.get_score_fn(sde, model, variables, continuous=False)
    score = score_fn(x, jnp.asarray(inputs["t"]))
    assert rel_l2(score, nhwc(outputs["score"])) < REL_TOL


def test_export_reproduces_the_reference_state_dict(fixture):
    # The inverse conversion gives back exactly the fixture's keys, shapes and values,
    # including the float64 `sigmas` buffer (VE levels, largest first).
    exported = sd.models.to_score_sde_pytorch(fixture["variables"], fixture["model"])
    params = fixture["params"]
    assert set(exported) == set(params)
    for key, value in params.items():
        assert exported[key].shape == value.shape, key
        if key == "module.sigmas":
            # Recomputed as exp(linspace(log smax, log smin, N)); numpy's exp can differ in
            # the last bit between releases (numpy 2.4 gives 48 of the fixture's 1000 values
            # one ulp apart), so this float64 buffer is checked to one ulp, the rest exactly.
            np.testing.assert_array_max_ulp(exported[key], value, maxulp=1)
        else:
            np.testing.assert_array_equal(exported[key], value, err_msg=key)
    assert exported["module.sigmas"].dtype == np.float64


def test_converter_refuses_mismatched_state_dict(fixture):
    params = dict(fixture["params"])
    del params["module.all_modules.5.NIN_0.W"]
    params["module.all_modules.99.weight"] = np.zeros(3, np.float32)
    params["module.all_modules.2.bias"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError) as info:
        sd.models.from_score_sde_pytorch(params, fixture["config"])
    message = str(info.value)
    for text in ("all_modules.5.NIN_0.W", "all_modules.99.weight", "all_modules.2.bias"):
        assert text in message


def test_torch_key_naming():
    assert DDPM.torch_key(("all_modules_0", "kernel")) == "all_modules.0.weight"
    assert DDPM.torch_key(("all_modules_21", "scale")) == "all_modules.21.weight"
    assert DDPM.torch_key(("all_modules_6", "NIN_3", "W")) == "all_modules.6.NIN_3.W"
    with pytest.raises(ValueError, match="not a DDPM parameter path"):
        DDPM.torch_key(("Conv_0", "kernel"))


def _small_model(**kwargs) -> DDPM:
    return DDPM(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), **kwargs)


@pytest.mark.parametrize("batch", [1, 3])
def test_jit_with_dropout_in_training_mode(batch, key):
    model = _small_model(dropout=0.5)
    x_key, k1, k2 = jax.random.split(key, 3)
    x = jax.random.normal(x_key, (batch, 8, 8, 3))
    labels = jnp.linspace(0.0, 999.0, batch)
    variables = random_variables(model, x, labels)

    @jax.jit
    def train_apply(x, labels, rng):
        return model.apply(variables, x, labels, train=True, rngs={"dropout": rng})

    out1, out1_again, out2 = (train_apply(x, labels, k) for k in (k1, k1, k2))
    assert out1.shape == (batch, 8, 8, 3)
    assert bool(jnp.all(jnp.isfinite(out1)))
    np.testing.assert_array_equal(out1, out1_again)  # dropout is a function of the key
    assert not np.allclose(out1, out2)  # ... and the key changes the mask


@pytest.mark.slow  # eager init compiles one RNG kernel per parameter shape
def test_reference_init_makes_the_output_vanish(key):
    # The reference initializes the last conv and each block's Conv_1 / attention NIN_3 with
    # variance scale 1e-10, so a fresh network outputs ~0 and every block starts as the
    # identity: final weights ~ sqrt(3e-10 / fan_avg) ~ 1e-6, summed over 288 O(1) inputs.
    model = _small_model()
    x = jax.random.normal(key, (2, 8, 8, 3))
    labels = jnp.array([3.0, 700.0])
    variables = model.init(key, x, labels)
    out = model.apply(variables, x, labels)
    assert float(jnp.max(jnp.abs(out))) < 1e-3
    # Fan-average uniform init: U(-a, a), a = sqrt(3 / ((fan_in + fan_out) / 2)).
    kernel = variables["params"]["all_modules_3"]["Conv_0"]["kernel"]  # 3x3, 32 -> 32
    bound = np.sqrt(3.0 / ((9 * 32 + 9 * 32) / 2))
    assert bound * 0.98 < float(jnp.max(jnp.abs(kernel))) <= bound


def test_scale_by_sigma_divides_by_the_level(fixture):
    # The fixture network with scale_by_sigma on: output / sigma_label, with the VE levels
    # sigma_i = sigma_max (sigma_min / sigma_max)^(i / (N - 1)), index 0 the largest.
    model, variables = fixture["model"], fixture["variables"]
    x = nhwc(fixture["inputs"]["x"])
    labels = jnp.array([0, 1, 500, 999])
    scaled = model.clone(scale_by_sigma=True, sigma_min=0.01, sigma_max=50.0, num_scales=1000)
    ratio = model.apply(variables, x, labels) / scaled.apply(variables, x, labels)
    sigmas = 50.0 * (0.01 / 50.0) ** (np.array([0, 1, 500, 999]) / 999)
    # One float32 division per element: a few ulps.
    np.testing.assert_allclose(ratio, np.broadcast_to(sigmas[:, None, None, None], ratio.shape),
                               rtol=1e-5)  # fmt: skip


def test_uncentered_input_is_mapped_to_minus_one_one(fixture):
    # centered=False applies x -> 2x - 1 first: on (x + 1) / 2 it reproduces the centered
    # network on x (the fixture is centered), up to float32 rounding of the affine map.
    model, variables = fixture["model"], fixture["variables"]
    x = nhwc(fixture["inputs"]["x"])
    labels = jnp.asarray(fixture["inputs"]["labels"], jnp.float32)
    uncentered = model.clone(centered=False)
    want = nhwc(fixture["outputs"]["raw_output"])
    assert rel_l2(uncentered.apply(variables, (x + 1.0) / 2.0, labels), want) < REL_TOL


# Attention blocks at 16x16 on 2 * 128 channels: GroupNorm (2C) + 4 NIN (C*C + C).
_ATTN_PARAMS_256 = 2 * 256 + 4 * (256 * 256 + 256)


def test_cifar10_config_param_count():
    # configs/vp/ddpm/cifar10.py of score_sde(_pytorch), at full size.
    config = {
        "data": {"image_size": 32, "num_channels": 3, "centered": True},
        "model": {
            "name": "ddpm",
            "nf": 128,
            "ch_mult": (1, 2, 2, 2),
            "num_res_blocks": 2,
            "attn_resolutions": (16,),
            "dropout": 0.1,
            "resamp_with_conv": True,
            "conditional": True,
            "scale_by_sigma": False,
            "nonlinearity": "swish",
        },
    }
    model = sd.models.from_config(config)
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,), jnp.int32)
    )
    count = sum(leaf.size for leaf in jax.tree.leaves(shapes))
    assert count == 35_218_947
    # Ho et al. report 35.7M: their decoder has an attention block after *each* of the 3
    # residual blocks at 16x16, score_sde keeps one, i.e. 2 fewer attention blocks.
    assert count + 2 * _ATTN_PARAMS_256 == 35_746_307


def test_from_config_reads_reference_fields():
    config = {
        "data": {"centered": False},
        "model": {"name": "ddpm", "nf": 64, "ch_mult": [1, 2], "num_res_blocks": 3,
                  "attn_resolutions": [8, 4], "dropout": 0.2, "resamp_with_conv": False},
    }  # fmt: skip
    model = ddpm_from_config(config)
    assert model == DDPM(
        nf=64,
        ch_mult=(1, 2),
        num_res_blocks=3,
        attn_resolutions=(8, 4),
        dropout=0.2,
        resamp_with_conv=False,
        centered=False,
    )


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        DDPM(nf=48)
    with pytest.raises(ValueError, match="ch_mult"):
        DDPM(nf=32, ch_mult=())
    with pytest.raises(ValueError, match="dropout"):
        DDPM(nf=32, dropout=1.5)
    with pytest.raises(ValueError, match="nonlinearity"):
        DDPM(nf=32, nonlinearity="tanh")
    model = _small_model()
    with pytest.raises(ValueError, match="divisible"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 6, 5, 3)), jnp.zeros((1,)))
    with pytest.raises(ValueError, match="labels"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 8, 8, 3)), jnp.zeros((3,)))
