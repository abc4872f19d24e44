"""NCSN++ / DDPM++: parity with score_sde_pytorch, full-size parameter counts, every switch."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoresde as sd
from scoresde.models.convert import param_shapes
from scoresde.models.layers import num_groups

NCSNPP_FIXTURES = (
    "ncsnpp_ve_continuous",
    "ncsnpp_ve_outputskip_continuous",
    "ddpmpp_vp_continuous",
)

# The fixture README measures 1.1e-6 relative change from reordering float32 sums (1 vs 2
# torch threads); a different conv algorithm is the same kind of change, so 1e-5 relative L2
# leaves a 10x margin while any wrong layer shows up as O(1).
REL_L2 = 1e-5


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (0, 2, 3, 1))


def sde_from_config(cfg: dict) -> sd.SDE:
    m = cfg["model"]
    name = cfg["training"]["sde"]
    if name == "vesde":
        return sd.VESDE(sigma_min=m["sigma_min"], sigma_max=m["sigma_max"], N=m["num_scales"])
    if name == "vpsde":
        return sd.VPSDE(beta_min=m["beta_min"], beta_max=m["beta_max"], N=m["num_scales"])
    raise ValueError(name)


@pytest.mark.parametrize("name", NCSNPP_FIXTURES)
def test_fixture_parity(fixtures_dir, name):
    d = fixtures_dir / "score_sde_pytorch" / name
    cfg = json.loads((d / "config.json").read_text())
    meta = json.loads((d / "meta.json").read_text())
    inputs, outputs = np.load(d / "inputs.npz"), np.load(d / "outputs.npz")
    model, variables = sd.models.from_score_sde_pytorch(dict(np.load(d / "params.npz")), cfg)
    assert isinstance(model, sd.models.NCSNpp)
    assert sum(p.size for p in jax.tree.leaves(variables)) == meta["param_count"]

    sde = sde_from_config(cfg)
    score_fn = sd.get_score_fn(sde, model, variables, continuous=True)
    x, t = jnp.asarray(nhwc(inputs["x"])), jnp.asarray(inputs["t"])
    # The labels the reference fed the network are recorded; ours must agree first.
    np.testing.assert_allclose(sde.network_labels(t, True), inputs["labels"], rtol=1e-6)

    @jax.jit
    def forward(x, t):
        raw = model.apply(variables, x, sde.network_labels(t, True), train=False)
        return raw, score_fn(x, t)

    raw, score = forward(x, t)
    assert rel_l2(raw, nhwc(outputs["raw_output"])) < REL_L2
    assert rel_l2(score, nhwc(outputs["score"])) < REL_L2


def _cifar10_config(**model) -> dict:
    """The model fields of the reference's CIFAR-10 configs (defaults: NCSN++ cont., VE)."""
    base = dict(
        name="ncsnpp", nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
        dropout=0.1, resamp_with_conv=True, conditional=True, fir=True, fir_kernel=(1, 3, 3, 1),
        skip_rescale=True, resblock_type="biggan", progressive="none",
        progressive_input="residual", progressive_combine="sum", attention_type="ddpm",
        init_scale=0.0, embedding_type="fourier", fourier_scale=16, conv_size=3,
        scale_by_sigma=True, nonlinearity="swish", sigma_min=0.01, sigma_max=50.0,
        num_scales=1000,
    )  # fmt: skip
    base.update(model)
    centered = base["embedding_type"] == "positional"  # the VP (DDPM++) configs center data
    return {"model": base, "data": {"centered": centered, "image_size": 32, "num_channels": 3}}


_DDPMPP = dict(
    fir=False, progressive_input="none", embedding_type="positional", scale_by_sigma=False
)


@pytest.mark.parametrize(
    "model_fields, count",
    [
        # configs/ve/cifar10_ncsnpp_continuous.py: the paper's 62.76M.
        ({}, 62_758_915),
        # configs/ve/cifar10_ncsnpp_deep_continuous.py.
        ({"num_res_blocks": 8}, 107_587_075),
        # configs/vp/cifar10_ddpmpp_continuous.py: the paper's 61.80M.
        (_DDPMPP, 61_804_419),
        # configs/vp/cifar10_ddpmpp_deep_continuous.py.
        ({**_DDPMPP, "num_res_blocks": 8}, 106_632_579),
    ],
    ids=["ncsnpp_cont", "ncsnpp_deep_cont", "ddpmpp_cont", "ddpmpp_deep_cont"],
)
def test_full_size_cifar10_param_counts(model_fields, count):
    model = sd.models.from_config(_cifar10_config(**model_fields))
    shapes = param_shapes(model, (32, 32, 3))  # jax.eval_shape: no arrays are allocated
    assert sum(int(np.prod(s.shape)) for s in shapes.values()) == count


# Small models that together touch every switch of issue 3 (8x8 images, two levels).
SWITCHES = {
    "ncsnpp_residual_input": dict(),
    "output_skip_input_skip_cat": dict(
        progressive="output_skip", progressive_input="input_skip", progressive_combine="cat"
    ),
    "residual_output_ddpm_blocks_fir": dict(
        progressive="residual", resblock_type="ddpm", fir=True, progressive_input="input_skip"
    ),
    "ddpmpp_positional_scaled": dict(
        fir=False, progressive_input="none", embedding_type="positional", centered=True,
        scale_by_sigma=True, nonlinearity="elu", sigma_max=5.0, num_scales=10,
    ),  # fmt: skip
    "ddpm_blocks_no_fir_no_conv": dict(
        resblock_type="ddpm", fir=False, resamp_with_conv=False, progressive="output_skip",
        progressive_input="residual", conditional=False, skip_rescale=False,
        nonlinearity="lrelu",
    ),  # fmt: skip
    "ddpm_blocks_fir_no_conv_relu": dict(
        resblock_type="ddpm", fir=True, resamp_with_conv=False, nonlinearity="relu"
    ),
}


def small_model(**fields) -> sd.models.NCSNpp:
    # init_scale=1 so that residual branches (where dropout acts) matter in the output.
    kw = dict(
        nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.5, init_scale=1.0
    )
    kw.update(fields)
    return sd.models.NCSNpp(**kw)


def init(model, key, x, labels):
    # One compiled init instead of hundreds of eagerly dispatched ops.
    return jax.jit(model.init)(key, x, labels)


@pytest.mark.parametrize("name", list(SWITCHES))
def test_switches_run_under_jit_with_dropout(key, name):
    model = small_model(**SWITCHES[name])
    x3 = jax.random.uniform(key, (3, 8, 8, 3))
    labels3 = jnp.array([1, 3, 7]) if model.embedding_type == "positional" else jnp.ones(3)
    variables = init(model, key, x3[:1], labels3[:1])

    @jax.jit
    def apply(x, labels, rng):
        train = model.apply(variables, x, labels, train=True, rngs={"dropout": rng})
        return train, model.apply(variables, x, labels, train=False)

    for batch in (1, 3):
        x, labels = x3[:batch], labels3[:batch]
        a, eval_a = apply(x, labels, jax.random.key(1))
        b, eval_b = apply(x, labels, jax.random.key(2))
        assert a.shape == x.shape and np.all(np.isfinite(a))
        # Dropout draws differ between keys; evaluation mode is deterministic.
        assert not np.allclose(a, b)
        np.testing.assert_array_equal(eval_a, eval_b)


def test_eval_output_does_not_mix_the_batch(key):
    model = small_model()
    x = jax.random.normal(key, (3, 8, 8, 3))
    sigma = jnp.array([0.1, 1.0, 10.0])
    variables = init(model, key, x, sigma)
    f = jax.jit(lambda x, s: model.apply(variables, x, s))
    batched = f(x, sigma)
    single = jnp.concatenate([f(x[i : i + 1], sigma[i : i + 1]) for i in range(3)])
    # Same math on sub-batches; float32 round-off only.
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


def test_init_scale_zero_makes_final_layers_tiny(key):
    model = small_model(init_scale=0.0)
    variables = init(model, key, jnp.zeros((1, 8, 8, 3)), jnp.ones(1))
    params = variables["params"]
    # init_scale = 0 means variance scale 1e-10: U(-a, a) with a = sqrt(3e-10 / fan_avg)
    # < 2e-5 for these fans; a default-scale layer has entries ~0.1.
    tiny = 2e-5
    last = max(params, key=lambda n: int(n.rsplit("_", 1)[1]))
    assert np.abs(params[last]["kernel"]).max() < tiny
    for name, sub in params.items():
        if "Conv_1" in sub:  # the end of every residual branch
            assert np.abs(sub["Conv_1"]["kernel"]).max() < tiny, name
            assert np.abs(sub["Conv_0"]["kernel"]).max() > 100 * tiny, name
        if "NIN_3" in sub:  # attention's output projection
            assert np.abs(sub["NIN_3"]["W"]).max() < tiny, name
    scaled = init(small_model(init_scale=1.0), key, jnp.zeros((1, 8, 8, 3)), jnp.ones(1))
    assert np.abs(scaled["params"][last]["kernel"]).max() > 100 * tiny


def test_group_norm_rule():
    assert [num_groups(c) for c in (4, 16, 32, 128, 256)] == [1, 4, 8, 32, 32]
    with pytest.raises(ValueError, match="at least 4 channels"):
        num_groups(3)


def test_torch_key_and_frozen():
    assert sd.models.NCSNpp.torch_key(("all_modules_12", "GroupNorm_1", "scale")) == (
        "all_modules.12.GroupNorm_1.weight"
    )
    assert sd.models.NCSNpp.torch_key(("all_modules_6", "Conv2d_0", "bias")) == (
        "all_modules.6.Conv2d_0.bias"
    )
    assert sd.models.NCSNpp.torch_key(("all_modules_8", "NIN_0", "W")) == "all_modules.8.NIN_0.W"
    assert small_model().torch_frozen(("all_modules_0", "W"))
    assert not small_model(embedding_type="positional").torch_frozen(("all_modules_0", "W"))


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"progressive": "skip"}, "progressive must be one of"),
        ({"resblock_type": "resnet"}, "resblock_type must be one of"),
        ({"embedding_type": "learned"}, "embedding_type must be one of"),
        ({"nonlinearity": "gelu"}, "nonlinearity must be one of"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"ch_mult": ()}, "ch_mult must be"),
    ],
)
def test_bad_fields_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        small_model(**fields)


def test_bad_inputs_are_refused(key):
    model = small_model()
    with pytest.raises(ValueError, match="divisible"):
        jax.eval_shape(model.init, key, jnp.zeros((1, 7, 7, 3)), jnp.ones(1))
    with pytest.raises(ValueError, match="labels must have shape"):
        jax.eval_shape(model.init, key, jnp.zeros((2, 8, 8, 3)), jnp.ones(3))


def test_from_config_refuses_unknown_names():
    with pytest.raises(ValueError, match="must be one of"):
        sd.models.from_config({"model": {"name": "unet"}})
    with pytest.raises(ValueError, match="attention_type"):
        sd.models.from_config(_cifar10_config(attention_type="legacy"))
