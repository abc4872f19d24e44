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
    "ncsnpp_cifar10": dict(),
    "ddpmpp_cifar10": dict(
        fir=False,
        progressive_input="none",
        embedding_type="positional",
        centered=True,
        scale_by_sigma=False,
    ),  # fmt: skip
    "output_skip_input_skip_cat": dict(
        progressive="output_skip", progressive_input="input_skip", progressive_combine="cat"
    ),
    "residual_output_ddpm_blocks_fir": dict(
        progressive="residual", resblock_type="ddpm", fir=True, progressive_input="input_skip"
    ),
    "positional_scaled_elu": dict(
        fir=False,
        progressive_input="none",
        embedding_type="positional",
        centered=True,
        scale_by_sigma=True,
        nonlinearity="elu",
        sigma_max=5.0,
        num_scales=10,
    ),  # fmt: skip
    "ddpm_blocks_plain_resampling_unconditional": dict(
        resblock_type="ddpm",
        fir=False,
        resamp_with_conv=False,
        progressive="output_skip",
        progressive_input="residual",
        conditional=False,
        skip_rescale=False,
        nonlinearity="lrelu",
    ),  # fmt: skip
    "ddpm_blocks_fir_no_conv_relu": dict(
        resblock_type="ddpm", fir=True, resamp_with_conv=False, nonlinearity="relu"
    ),
}
# Each batch size and mode is another XLA compilation (seconds on CPU): the CIFAR-10 presets
# run in training mode (dropout) at batch 1 and 3, the other switches in eval mode at batch 3.
TRAIN_PRESETS = ("ncsnpp_cifar10", "ddpmpp_cifar10")


def small_model(**fields) -> sd.models.NCSNpp:
    kw = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.5)
    kw.update(fields)
    return sd.models.NCSNpp(**kw)


def random_variables(model, x, labels, rng: np.random.Generator):
    """Params drawn like the fixtures' (weights N(0, 1/fan_in), biases N(0, 0.01), norms ~1).

    ``model.init`` would compile one threefry draw per parameter (slow on CPU) and, with
    ``init_scale=0``, leave the residual branches (where dropout acts) at 1e-10.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, labels)

    def draw(path, s):
        z = rng.standard_normal(s.shape).astype(np.float32)
        leaf = path[-1].key
        if leaf == "scale":
            return 1.0 + 0.1 * z
        if len(s.shape) == 1:
            return 0.1 * z
        return z / np.sqrt(np.prod(s.shape[:-1]))

    return jax.tree_util.tree_map_with_path(draw, shapes)


def labels_for(model, batch: int) -> jax.Array:
    if model.embedding_type == "positional":
        return jnp.array([1, 3, 7][:batch])  # level indices / 999 t
    return jnp.array([0.05, 1.0, 20.0][:batch])  # sigmas


@pytest.mark.parametrize("name", TRAIN_PRESETS)
def test_presets_train_under_jit_with_dropout(np_rng, name):
    model = small_model(**SWITCHES[name])
    x3 = jnp.asarray(np_rng.uniform(size=(3, 8, 8, 3)), jnp.float32)
    variables = random_variables(model, x3, labels_for(model, 3), np_rng)

    @jax.jit
    def train(x, labels, rng):
        return model.apply(variables, x, labels, train=True, rngs={"dropout": rng})

    for batch in (1, 3):
        x, labels = x3[:batch], labels_for(model, batch)
        # RBG keys: threefry dropout masks would double the compile time on CPU.
        a = train(x, labels, jax.random.key(1, impl="unsafe_rbg"))
        b = train(x, labels, jax.random.key(2, impl="unsafe_rbg"))
        assert a.shape == x.shape and np.all(np.isfinite(a))
        # Dropout at rate 0.5 changes the output at O(1), and differently for each key.
        assert rel_l2(a, np.asarray(b)) > 1e-2


@pytest.mark.parametrize("name", [n for n in SWITCHES if n not in TRAIN_PRESETS])
def test_switches_run_under_jit(np_rng, name):
    model = small_model(**SWITCHES[name])
    x = jnp.asarray(np_rng.uniform(size=(3, 8, 8, 3)), jnp.float32)
    labels = labels_for(model, 3)
    variables = random_variables(model, x, labels, np_rng)
    out = jax.jit(lambda x, labels: model.apply(variables, x, labels))(x, labels)
    assert out.shape == x.shape and np.all(np.isfinite(out))
    assert float(jnp.std(out)) > 1e-2  # O(1) weights give an O(1), non-constant output


def test_forward_and_reverse_mode_agree_through_the_fir_network(np_rng):
    r"""The likelihood takes ``jax.jvp`` of the network, training ``jax.vjp``: both must work
    through NCSN++'s FIR resampling, and agree: :math:`\langle g, J t\rangle = \langle J^\top
    g, t\rangle` (float32 sums of ~600 O(1) products: relative 1e-4)."""
    model = small_model(**SWITCHES["ncsnpp_cifar10"])
    x, t = (jnp.asarray(np_rng.standard_normal((2, 8, 8, 3)), jnp.float32) for _ in range(2))
    labels = labels_for(model, 2)
    variables = random_variables(model, x, labels, np_rng)
    f = jax.jit(lambda v: model.apply(variables, v, labels))
    _, jt = jax.jit(lambda v, u: jax.jvp(f, (v,), (u,)))(x, t)
    g = jnp.asarray(np_rng.standard_normal(x.shape), jnp.float32)
    (jg,) = jax.jit(lambda v, w: jax.vjp(f, v)[1](w))(x, g)
    lhs, rhs = float(jnp.vdot(g, jt)), float(jnp.vdot(jg, t))
    assert abs(lhs - rhs) <= 1e-4 * max(abs(lhs), abs(rhs), 1.0), (lhs, rhs)


def test_init_scale_zero_makes_final_layers_tiny():
    # A tiny model and an RBG key: the init's compile time is dominated by the PRNG.
    key = jax.random.key(0, impl="unsafe_rbg")
    model = small_model(nf=4, ch_mult=(1,), attn_resolutions=(4,), init_scale=0.0)
    x, sigma = jnp.zeros((1, 4, 4, 3)), jnp.ones(1)
    params = jax.jit(model.init)(key, x, sigma)["params"]
    # init_scale = 0 means variance scale 1e-10: U(-a, a) with a = sqrt(3e-10 / fan_avg)
    # <= 2e-5 for any fan >= 1; a default-scale layer here has entries of order 0.1.
    tiny = 2e-5
    last = max(params, key=lambda n: int(n.rsplit("_", 1)[1]))
    assert np.abs(params[last]["kernel"]).max() < tiny
    n_blocks = n_attn = 0
    for name, sub in params.items():
        if "Conv_1" in sub:  # the end of every residual branch
            n_blocks += 1
            assert np.abs(sub["Conv_1"]["kernel"]).max() < tiny, name
            assert np.abs(sub["Conv_0"]["kernel"]).max() > 100 * tiny, name
        if "NIN_3" in sub:  # attention's output projection
            n_attn += 1
            assert np.abs(sub["NIN_3"]["W"]).max() < tiny, name
            assert np.abs(sub["NIN_0"]["W"]).max() > 100 * tiny, name
    # Res blocks: 1 encoder + 2 middle + 2 decoder; attention at 4x4: encoder, middle, decoder.
    assert (n_blocks, n_attn) == (5, 3)


def test_bfloat16_compute_keeps_float32_params_and_output():
    model = small_model(dtype=jnp.bfloat16)
    x, sigma = jnp.zeros((2, 8, 8, 3)), jnp.ones(2)
    variables = jax.eval_shape(model.init, jax.random.key(0), x, sigma)
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(model.apply, variables, x, sigma)
    assert out.dtype == jnp.float32 and out.shape == x.shape
    hlo = jax.jit(model.apply).lower(variables, x, sigma).as_text()
    convs = [line for line in hlo.splitlines() if "stablehlo.convolution" in line]
    assert convs and all("bf16" in line for line in convs)  # every conv runs in bfloat16


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
