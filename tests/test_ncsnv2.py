"""NCSNv2 and NCSN (v1) RefineNets: parity with the patched NCSNv2 fixture, layers, properties."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES

import scoresde as sd
from scoresde.models import NCSN, NCSNv2
from scoresde.models.convert import load_torch_params, param_shapes, read_state_dict
from scoresde.models.factory import ncsn_from_config, ncsnv2_from_config
from scoresde.models.ncsnv2_layers import (
    ConditionalInstanceNormPlus,
    InstanceNormPlus,
    resize_bilinear_align_corners,
)

FIXTURE = "score_sde_pytorch/ncsnv2_ve_discrete_patched"
# Float32 forward passes that differ only in the order of reductions agree to ~1e-6
# relative (measured 1.2e-6; the fixture's own 1- vs 2-thread rerun differs by 1.1e-6);
# 1e-5 leaves a margin while still catching any wrong weight, padding or norm.
REL_TOL = 1e-5


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def nhwc(a: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(a).transpose(0, 2, 3, 1)


def random_variables(model, x, labels, seed: int = 0) -> dict:
    """Variables shaped by ``model.init`` (abstractly), drawn as the fixtures draw theirs.

    Kernels ~ N(0, 1/fan_in), norm scales (``alpha``, ``gamma`` and the conditional
    embeddings) ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2). No compiled init, which costs tens
    of seconds of RNG compilation on CPU.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, labels)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1])))
        offset = 1.0 if name in ("alpha", "gamma", "embedding") else 0.0
        return jnp.asarray(offset + 0.1 * rng.normal(size=leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def fixture():
    if not FIXTURES.is_dir():
        pytest.skip(f"reference fixtures not found at {FIXTURES} (set SCORESDE_FIXTURES)")
    root = FIXTURES / FIXTURE
    config = json.loads((root / "config.json").read_text())
    params = dict(np.load(root / "params.npz"))
    model = ncsnv2_from_config(config)
    size, channels = config["data"]["image_size"], config["data"]["num_channels"]
    state_dict, _ = read_state_dict(params)
    shapes = param_shapes(model, (size, size, channels))
    variables = {"params": load_torch_params(model, shapes, state_dict)}
    return dict(
        config=config,
        meta=json.loads((root / "meta.json").read_text()),
        params=params,
        inputs=dict(np.load(root / "inputs.npz")),
        outputs=dict(np.load(root / "outputs.npz")),
        model=model,
        variables=variables,
    )


def test_fixture_builds_ncsnv2_with_reference_param_count(fixture):
    model, variables = fixture["model"], fixture["variables"]
    assert model == NCSNv2(nf=16, centered=False, num_scales=232, sigma_max=50.0)
    count = sum(int(leaf.size) for leaf in jax.tree.leaves(variables["params"]))
    assert count == fixture["meta"]["param_count"] == 466_451


def test_fixture_raw_output_and_score(fixture):
    model, variables = fixture["model"], fixture["variables"]
    inputs, outputs = fixture["inputs"], fixture["outputs"]
    x = nhwc(inputs["x"])
    raw = model.apply(variables, x, jnp.asarray(inputs["labels"], jnp.int32), train=False)
    assert rel_l2(raw, nhwc(outputs["raw_output"])) < REL_TOL

    sde = sd.VESDE(sigma_min=0.01, sigma_max=50.0, N=232)
    # The discrete VE labels round((1 - t)(N - 1)) are the fixture's recorded labels.
    np.testing.assert_array_equal(
        sde.network_labels(jnp.asarray(inputs["t"]), continuous=False), inputs["labels"]
    )
    score = sd.get_score_fn(sde, model, variables, continuous=False)(x, jnp.asarray(inputs["t"]))
    assert rel_l2(score, nhwc(outputs["score"])) < REL_TOL

    # Without scale_by_sigma the same network is not divided by sigma_label, where
    # sigma_i = 50 (0.01 / 50)^(i / 231), index 0 the largest.
    plain = model.clone(scale_by_sigma=False).apply(variables, x, inputs["labels"])
    sigmas = 50.0 * (0.01 / 50.0) ** (inputs["labels"] / 231)
    # One float32 division per element: a few ulps.
    np.testing.assert_allclose(plain / raw, np.broadcast_to(sigmas[:, None, None, None], raw.shape),
                               rtol=1e-5)  # fmt: skip


def test_export_reproduces_the_reference_state_dict(fixture):
    exported = sd.models.to_score_sde_pytorch(fixture["variables"], fixture["model"])
    params = fixture["params"]
    assert set(exported) == set(params)
    for key, value in params.items():
        assert exported[key].shape == value.shape, key
        # The float64 sigmas buffer is recomputed, so equal only to float64 round-off.
        np.testing.assert_allclose(exported[key], value, rtol=1e-14, atol=0, err_msg=key)


def test_converter_refuses_mismatched_state_dict(fixture):
    params = dict(fixture["params"])
    del params["module.refine2.msf.convs.1.bias"]
    params["module.res5.0.conv1.weight"] = np.zeros(3, np.float32)
    params["module.res3.0.shortcut.weight"] = np.zeros((32, 32, 1, 1), np.float32)
    model = fixture["model"]
    shapes = param_shapes(model, (16, 16, 3))
    with pytest.raises(ValueError) as info:
        load_torch_params(model, shapes, read_state_dict(params)[0])
    for text in ("refine2.msf.convs.1.bias", "res5.0.conv1.weight", "res3.0.shortcut.weight"):
        assert text in str(info.value)


def test_torch_key_naming():
    assert NCSNv2.torch_key(("res1_0", "conv1", "kernel")) == "res1.0.conv1.weight"
    assert NCSNv2.torch_key(("res2_0", "conv2", "conv", "bias")) == "res2.0.conv2.conv.bias"
    assert (
        NCSNv2.torch_key(("refine4", "output_convs", "3_2_conv", "kernel"))
        == "refine4.output_convs.3_2_conv.weight"
    )
    assert NCSNv2.torch_key(("refine1", "crp", "convs_1", "kernel")) == "refine1.crp.convs.1.weight"
    assert NCSNv2.torch_key(("normalizer", "alpha")) == "normalizer.alpha"


@pytest.mark.parametrize("batch", [1, 3])
def test_ncsnv2_jit_in_training_mode(batch, key):
    model = NCSNv2(nf=8, num_scales=10)
    x = jax.random.uniform(key, (batch, 8, 8, 3))
    labels = jnp.arange(batch, dtype=jnp.int32) * 4
    variables = random_variables(model, x, labels)
    apply = jax.jit(lambda x, labels: model.apply(variables, x, labels, train=True))
    out = apply(x, labels)
    assert out.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(out)))


def test_instance_norm_plus_closed_form(np_rng):
    x = np_rng.normal(size=(2, 5, 6, 4)) * np_rng.uniform(0.5, 3, size=4) + np_rng.normal(size=4)
    params = {
        "alpha": np_rng.normal(size=4),
        "gamma": np_rng.normal(size=4),
        "beta": np_rng.normal(size=4),
    }
    out = InstanceNormPlus().apply({"params": params}, jnp.asarray(x, jnp.float32))
    # Definition (float64): biased variance over pixels, unbiased across the channel means.
    mu = x.mean(axis=(1, 2), keepdims=True)
    sd_hw = np.sqrt(x.var(axis=(1, 2), keepdims=True) + 1e-5)
    means_plus = (mu - mu.mean(-1, keepdims=True)) / np.sqrt(
        mu.var(-1, ddof=1, keepdims=True) + 1e-5
    )
    want = params["gamma"] * ((x - mu) / sd_hw + params["alpha"] * means_plus) + params["beta"]
    # float32 arithmetic on O(1) values.
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_conditional_norm_selects_the_label_row(np_rng):
    # Row y of the embedding is [gamma, alpha, beta] of an unconditional InstanceNorm++.
    x = jnp.asarray(np_rng.normal(size=(3, 4, 4, 5)), jnp.float32)
    table = np_rng.normal(size=(7, 15)).astype(np.float32)
    labels = jnp.array([6, 0, 3])
    out = ConditionalInstanceNormPlus(7).apply(
        {"params": {"embed": {"embedding": table}}}, x, labels
    )
    for b, y in enumerate([6, 0, 3]):
        gamma, alpha, beta = np.split(table[y], 3)
        params = {"alpha": alpha, "gamma": gamma, "beta": beta}
        want = InstanceNormPlus().apply({"params": params}, x[b : b + 1])
        np.testing.assert_allclose(out[b : b + 1], want, rtol=1e-6, atol=1e-6)  # same ops


def test_bilinear_align_corners_reproduces_affine_images():
    # Bilinear interpolation is exact on affine functions, and with corners aligned output
    # pixel i of n_out sits at i (n_in - 1) / (n_out - 1) in input pixel units.
    rows, cols = np.meshgrid(np.arange(4.0), np.arange(3.0), indexing="ij")
    image = (2.0 * rows - 0.5 * cols + 1.0)[None, :, :, None]
    out = resize_bilinear_align_corners(jnp.asarray(image, jnp.float32), (7, 5))
    r, c = np.meshgrid(np.arange(7) * 3 / 6, np.arange(5) * 2 / 4, indexing="ij")
    np.testing.assert_allclose(out[0, :, :, 0], 2.0 * r - 0.5 * c + 1.0, rtol=1e-6, atol=1e-6)


def test_ncsn_jit_and_label_conditioning(key):
    # NCSN sees the noise level only through its conditional norms: with every embedding
    # row equal, the output cannot depend on the label; with distinct rows it does.
    model = NCSN(nf=8, num_scales=10, sigma_max=1.0)
    x = jax.random.uniform(key, (3, 8, 8, 3))
    labels = jnp.full((3,), 2, jnp.int32)
    variables = random_variables(model, x, labels)
    apply = jax.jit(lambda variables, labels: model.apply(variables, x, labels, train=True))
    out = apply(variables, labels)
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
    assert not np.allclose(out, apply(variables, labels + 5), rtol=1e-3)

    def same_rows(path, leaf):
        return jnp.broadcast_to(leaf[2], leaf.shape) if path[-1].key == "embedding" else leaf

    flat = jax.tree_util.tree_map_with_path(same_rows, variables)
    np.testing.assert_array_equal(apply(flat, labels), apply(flat, labels + 5))


def test_from_config_fields_and_errors():
    config = {
        "model": {"name": "ncsnv2_64", "nf": 32, "num_scales": 100, "sigma_max": 30,
                  "nonlinearity": "elu", "normalization": "InstanceNorm++"},
        "data": {"centered": True, "image_size": 32, "num_channels": 3},
    }  # fmt: skip
    assert ncsnv2_from_config(config) == NCSNv2(
        nf=32, centered=True, num_scales=100, sigma_max=30.0
    )
    ncsn = ncsn_from_config({**config, "model": {**config["model"], "scale_by_sigma": False}})
    assert ncsn == NCSN(nf=32, centered=True, num_scales=100, sigma_max=30.0)
    # The reference's names pick the network; a bare "ncsnv2" picks it by image size.
    for name, size, variant in [("ncsnv2_128", 32, 128), ("ncsnv2", 96, 128), ("ncsnv2", 200, 256)]:
        cfg = {
            "model": {**config["model"], "name": name},
            "data": {**config["data"], "image_size": size},
        }
        assert ncsnv2_from_config(cfg).variant == variant
    bad = {**config, "model": {**config["model"], "normalization": "GroupNorm"}}
    with pytest.raises(ValueError, match="InstanceNorm"):
        ncsnv2_from_config(bad)
    with pytest.raises(ValueError, match="model.name"):
        ncsnv2_from_config({**config, "model": {**config["model"], "name": "ncsnv2_32"}})
    with pytest.raises(ValueError, match="disagree"):
        ncsnv2_from_config({**config, "data": {**config["data"], "channels": 1}})


def _reference_param_count(variant: int, nf: int, channels: int = 3) -> int:
    """Parameters of the reference's ncsnv2_{variant}, counted from its constructor's layers."""

    def conv(i, o, k=3, bias=True):
        return i * o * k * k + (o if bias else 0)

    def norm(c):  # InstanceNorm++: alpha, gamma, beta
        return 3 * c

    def residual(i, o, down, dilation):
        shortcut_k = 1 if dilation == 1 else 3
        if down:
            return conv(i, i) + norm(i) + conv(i, o) + conv(i, o, shortcut_k) + norm(i)
        shortcut = conv(i, o, shortcut_k) if i != o else 0
        return conv(i, o) + norm(o) + conv(o, o) + shortcut + norm(i)

    def rcu(c, n_blocks):  # n_blocks x 2 stages of bias-free 3x3 convs
        return n_blocks * 2 * conv(c, c, bias=False)

    def refine(in_planes, f, start=False, end=False):
        total = sum(rcu(p, 2) for p in in_planes) + rcu(f, 3 if end else 1)
        total += 0 if start else sum(conv(p, f) for p in in_planes)  # fusion convs
        return total + 2 * conv(f, f, bias=False)  # chained residual pooling

    stages = {  # (channels / nf, dilation) per stage, two residual blocks each
        64: [(1, 1), (2, 1), (2, 2), (2, 4)],
        128: [(1, 1), (2, 1), (2, 1), (4, 2), (4, 4)],
        256: [(1, 1), (2, 1), (2, 1), (2, 1), (4, 2), (4, 4)],
    }[variant]
    refines = {64: [2, 2, 1, 1], 128: [4, 2, 2, 1, 1], 256: [4, 2, 2, 2, 1, 1]}[variant]
    total, c = conv(channels, nf), nf
    for k, (mult, dilation) in enumerate(stages):
        total += residual(c, mult * nf, k > 0, dilation) + residual(
            mult * nf, mult * nf, False, dilation
        )
        c = mult * nf
    widths = [mult * nf for mult, _ in stages][::-1]
    previous = None
    for k, (width, mult) in enumerate(zip(widths, refines, strict=True)):
        in_planes = [width] if previous is None else [width, previous]
        total += refine(in_planes, mult * nf, start=k == 0, end=k == len(widths) - 1)
        previous = mult * nf
    return total + norm(nf) + conv(nf, channels)


def test_param_counts_follow_the_reference_layers(fixture):
    # The counting rule reproduces the fixture's ncsnv2_64 exactly ...
    assert _reference_param_count(64, nf=16) == fixture["meta"]["param_count"]
    # ... and the 128/256px networks (no fixture) have the counts of the reference's layers.
    for variant, size in [(64, 8), (128, 8), (256, 16)]:
        model = NCSNv2(nf=4, variant=variant)
        x, labels = jnp.zeros((1, size, size, 3)), jnp.zeros((1,), jnp.int32)
        out, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), x, labels)
        assert out.shape == x.shape
        count = sum(leaf.size for leaf in jax.tree.leaves(variables))
        assert count == _reference_param_count(variant, nf=4)
    keys = {NCSNv2.torch_key(tuple(k.key for k in path)) for path, _ in
            jax.tree_util.tree_flatten_with_path(variables["params"])[0]}  # fmt: skip
    assert {"res31.0.conv2.conv.weight", "res5.1.conv2.weight", "refine31.msf.convs.1.bias"} <= keys


def test_full_size_param_counts():
    # CIFAR-10 configs (nf=128, 32x32x3): ncsnv2_64 and ncsn (v1, 10 noise levels).
    counts = {}
    for model in (NCSNv2(nf=128), NCSN(nf=128, num_scales=10)):
        shapes = jax.eval_shape(
            model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,), jnp.int32)
        )
        counts[type(model).__name__] = sum(leaf.size for leaf in jax.tree.leaves(shapes))
    assert counts["NCSNv2"] == _reference_param_count(64, nf=128) == 29_694_083
    assert counts["NCSN"] == 30_117_635


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="nf"):
        NCSNv2(nf=0)
    with pytest.raises(ValueError, match="sigma_max"):
        NCSNv2(sigma_min=1.0, sigma_max=0.5)
    model = NCSNv2(nf=8, num_scales=10)
    with pytest.raises(TypeError, match="integer"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)))
    with pytest.raises(ValueError, match="multiples of 2"):
        jax.eval_shape(
            model.init, jax.random.key(0), jnp.zeros((1, 7, 8, 3)), jnp.zeros((1,), jnp.int32)
        )
    with pytest.raises(ValueError, match="variant"):
        NCSNv2(variant=32)
