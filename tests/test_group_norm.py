"""GroupNorm (+ SiLU): the XLA path against flax, the fused kernel (in Pallas' interpreter on
this CPU) against float64 numpy, its derivatives in both modes, and the networks with the
kernel in place of XLA's GroupNorm."""

from __future__ import annotations

import functools

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import scoresde as sd
from scoresde.models import group_norm as gn_module
from scoresde.models.group_norm import GroupNorm, group_norm, kernel_blocks

EPS = 1e-6


def reference(x, scale, bias, groups, silu):
    """GroupNorm (+ SiLU) in float64 numpy, the two-pass definition."""
    x = np.asarray(x, np.float64)
    b, h, w, c = x.shape
    xg = x.reshape(b, h * w, groups, c // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    u = ((xg - mean) / np.sqrt(var + EPS)).reshape(x.shape) * scale + bias
    return u / (1.0 + np.exp(-u)) if silu else u


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def inputs(rng, shape, offset=3.0):
    x = (offset + 2.0 * rng.standard_normal(shape)).astype(np.float32)
    scale = (1.0 + 0.3 * rng.standard_normal(shape[-1])).astype(np.float32)
    bias = (0.3 * rng.standard_normal(shape[-1])).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias)


# (shape, groups, tiling): one chunk per program; several chunks (the shifted-sum loop);
# several channel blocks per example; group size 8 (DDPM's 32 groups of 256 channels / 8).
CASES = [
    ((2, 8, 8, 16), 4, {}),
    ((3, 16, 16, 32), 8, dict(tile_elements=256)),
    ((2, 4, 4, 64), 16, dict(channel_block=32)),
    ((2, 8, 8, 64), 8, dict(tile_elements=128, channel_block=16)),
]


@pytest.mark.parametrize("fast_variance", [True, False])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_xla_path_is_flax_group_norm(np_rng, fast_variance, dtype):
    # Same operations in the same order as flax.linen.GroupNorm: equal to the last bit.
    x, scale, bias = inputs(np_rng, (2, 4, 4, 16))
    x = x.astype(dtype)
    flax_gn = nn.GroupNorm(num_groups=4, epsilon=EPS, use_fast_variance=fast_variance, dtype=dtype)
    want = flax_gn.apply({"params": {"scale": scale, "bias": bias}}, x)
    got = group_norm(
        x, scale, bias, num_groups=4, dtype=dtype, fast_variance=fast_variance, impl="xla"
    )
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("shape,groups,tiling", CASES)
def test_kernel_value_and_derivatives_match_float64(np_rng, shape, groups, tiling, silu):
    """Values, the backward kernel (train=True), and forward mode plus XLA's transpose of it
    (train=False), against float64. float32 arithmetic over <= 4096-element groups: relative
    errors ~1e-7; 1e-5 leaves room for summation order and is far below any indexing bug."""
    x, scale, bias = inputs(np_rng, shape)
    g, v = (jnp.asarray(np_rng.standard_normal(shape), jnp.float32) for _ in range(2))
    dscale = jnp.asarray(np_rng.standard_normal(shape[-1]), jnp.float32)
    dbias = jnp.asarray(np_rng.standard_normal(shape[-1]), jnp.float32)

    def ref64(x, s, b):
        return group_norm(x, s, b, num_groups=groups, silu=silu, fast_variance=False, impl="xla")

    with jax.enable_x64(True):
        args64 = [jnp.asarray(a, jnp.float64) for a in (x, scale, bias)]
        np.testing.assert_allclose(ref64(*args64), reference(x, scale, bias, groups, silu), 1e-10)
        grads64 = jax.grad(lambda *a: jnp.sum(ref64(*a) * g), argnums=(0, 1, 2))(*args64)
        tangents64 = [jnp.asarray(t, jnp.float64) for t in (v, dscale, dbias)]
        jvp64 = jax.jvp(ref64, args64, tangents64)[1]

    for train in (True, False):
        f = functools.partial(
            group_norm, num_groups=groups, silu=silu, train=train, impl="pallas", interpret=True
        )
        f = functools.partial(f, **tiling)
        assert rel(jax.jit(f)(x, scale, bias), reference(x, scale, bias, groups, silu)) < 1e-5
        grads = jax.jit(jax.grad(lambda *a, f=f: jnp.sum(f(*a) * g), argnums=(0, 1, 2)))(
            x, scale, bias
        )
        for got, want in zip(grads, grads64, strict=True):
            assert rel(got, want) < 1e-5
        if not train:
            _, tangent = jax.jit(lambda *a, f=f: jax.jvp(f, a[:3], a[3:]))(
                x, scale, bias, v, dscale, dbias
            )
            assert rel(tangent, jvp64) < 1e-5


def test_kernel_statistics_survive_a_large_mean(np_rng):
    """Mean 100, std 0.01: E[x^2] - E[x]^2 cancels completely in float32 (flax's default
    fast variance is off by O(10) here), the kernel's shifted sums do not. Its error is the
    float32 rounding of the input itself, ulp(100) / 0.01 ~ 8e-4 in normalized units."""
    shape = (2, 16, 16, 32)
    x = jnp.asarray(100.0 + 0.01 * np_rng.standard_normal(shape), jnp.float32)
    ones, zeros = jnp.ones(32), jnp.zeros(32)
    want = reference(x, np.ones(32), np.zeros(32), 8, silu=False)
    kernel = group_norm(
        x, ones, zeros, num_groups=8, impl="pallas", interpret=True, tile_elements=256
    )
    assert np.max(np.abs(np.asarray(kernel) - want)) < 2e-3
    fast = group_norm(x, ones, zeros, num_groups=8, impl="xla")
    assert np.max(np.abs(np.asarray(fast) - want)) > 1.0  # why the kernel does not use it


def test_kernel_forward_mode_under_vmap(np_rng):
    # The likelihood's per-sample solves: vmap over samples of jax.jvp through the network.
    x, scale, bias = inputs(np_rng, (3, 8, 8, 16))
    v = jnp.asarray(np_rng.standard_normal(x.shape), jnp.float32)

    def tangent(f):
        one = lambda a, t: jax.jvp(lambda a: f(a[None], scale, bias), (a,), (t,))[1][0]  # noqa: E731
        return jax.jit(jax.vmap(one))(x, v)

    kernel = functools.partial(group_norm, num_groups=4, silu=True, impl="pallas", interpret=True)
    xla = functools.partial(group_norm, num_groups=4, silu=True, fast_variance=False, impl="xla")
    assert rel(tangent(kernel), tangent(xla)) < 1e-5


def test_bfloat16_kernel_rounds_once(np_rng):
    # bfloat16 in and out, float32 inside: the output is the float64 value rounded to bfloat16
    # (relative 2^-9 per element), where the XLA path also rounds before its SiLU.
    x, scale, bias = inputs(np_rng, (2, 8, 8, 16))
    xb = x.astype(jnp.bfloat16)
    y = group_norm(
        xb, scale, bias, num_groups=4, silu=True, dtype=jnp.bfloat16, impl="pallas", interpret=True
    )
    assert y.dtype == jnp.bfloat16
    assert (
        rel(y.astype(jnp.float32), reference(xb.astype(jnp.float32), scale, bias, 4, True)) < 4e-3
    )


def test_kernel_blocks_and_auto_policy():
    assert kernel_blocks((128, 32, 32, 128), 32, 4) == (32, 256)
    assert kernel_blocks((128, 16, 16, 256), 32, 2) == (64, 128)
    assert kernel_blocks((8, 28, 28, 64), 16, 4) is None  # 784 rows
    assert kernel_blocks((8, 8, 8, 384), 32, 4) is None  # group size 12
    assert kernel_blocks((8, 8, 8), 2, 4) is None  # not NHWC
    assert gn_module.AUTO_MAX_ROWS == 256


def test_auto_decides_at_trace_time(monkeypatch):
    """``impl="auto"`` traces one implementation, chosen by the default backend: on this CPU
    XLA's; where the default backend is a CUDA GPU (simulated) the kernel, for H*W <=
    AUTO_MAX_ROWS only (a 32x32 input keeps XLA's GroupNorm). Lowered for CUDA from this CPU,
    the kernel's program holds the Pallas custom call and no platform switch (no
    ``stablehlo.case``), so it lowers without tracing XLA's branch too; GroupNorms of one
    configuration and shape call one lowered kernel."""
    ones = jnp.ones(16)

    def jaxpr(x):  # a new function each time: JAX caches traces per function
        return str(jax.make_jaxpr(lambda x: group_norm(x, ones, ones, num_groups=4))(x))

    big, small = jnp.ones((1, 32, 32, 16)), jnp.ones((1, 16, 16, 16))
    assert not gn_module.default_backend_is_cuda()
    assert "pallas_call" not in jaxpr(small)
    monkeypatch.setattr(gn_module, "default_backend_is_cuda", lambda: True)
    assert "pallas_call" not in jaxpr(big)
    assert "pallas_call" in jaxpr(small)
    loss = lambda x: group_norm(x, ones, ones, num_groups=4, silu=True).sum()  # noqa: E731
    cuda = jax.jit(jax.grad(loss)).trace(small).lower(lowering_platforms=("cuda",))
    text = cuda.as_text()
    assert "stablehlo.custom_call" in text and "stablehlo.case" not in text
    # Two GroupNorms of one configuration and shape share one lowered kernel.
    twice = lambda x: (
        group_norm(x, ones, ones, num_groups=4)
        + group_norm(  # noqa: E731
            2 * x, ones, ones, num_groups=4
        )
    )
    text = jax.jit(twice).trace(small).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("stablehlo.custom_call") == 1 and text.count("call @") >= 2


def test_bad_arguments_are_refused():
    x, ones = jnp.ones((1, 4, 4, 8)), jnp.ones(8)
    with pytest.raises(ValueError, match="impl must be one of"):
        group_norm(x, ones, ones, num_groups=2, impl="triton")
    with pytest.raises(ValueError, match="num_groups=3 must be positive and divide"):
        group_norm(x, ones, ones, num_groups=3)
    # Shapes the kernel does not cover take the XLA path, also with impl="pallas".
    odd = jax.make_jaxpr(lambda x: group_norm(x, ones, ones, num_groups=2, impl="pallas"))
    assert "pallas_call" not in str(odd(jnp.ones((1, 3, 3, 8))))
    with pytest.raises(ValueError, match="group_norm_impl must be one of"):
        sd.models.NCSNpp(group_norm_impl="cudnn")
    with pytest.raises(ValueError, match="group_norm_impl must be one of"):
        sd.models.DDPM(group_norm_impl="cudnn")


@pytest.mark.parametrize("impl", ["xla", "pallas"])
@pytest.mark.parametrize("train", [False, True])
def test_shift_is_added_before_the_normalization(np_rng, impl, train):
    """``shift=t`` normalizes ``x + t[:, None, None, :]``: the value and the derivatives (both
    modes, as ``train`` selects them) equal those of the explicit add. Same operations in the
    same order on the XLA path (the barrier is an identity on values): equal to float32
    rounding; the interpreted kernel to its own summation order."""
    x, scale, bias = inputs(np_rng, (2, 4, 4, 16))
    t = jnp.asarray(np_rng.standard_normal((2, 16)), jnp.float32)
    kw = dict(num_groups=4, silu=True, impl=impl, train=train, interpret=impl == "pallas")

    def shifted(x, t, scale):
        return group_norm(x, scale, bias, shift=t, **kw)

    def explicit(x, t, scale):
        return group_norm(x + t[:, None, None, :], scale, bias, **kw)

    np.testing.assert_allclose(shifted(x, t, scale), explicit(x, t, scale), rtol=1e-6, atol=1e-6)
    w = jnp.asarray(np_rng.standard_normal(x.shape), jnp.float32)
    grads = [
        jax.grad(lambda *a, f=f: jnp.sum(w * f(*a)), (0, 1, 2))(x, t, scale)
        for f in (shifted, explicit)
    ]
    for got, want in zip(*grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if not train:  # forward mode: the likelihood's jvp through the network
        tangents = (w, t, scale)
        got = jax.jvp(shifted, (x, t, scale), tangents)[1]
        np.testing.assert_allclose(
            got, jax.jvp(explicit, (x, t, scale), tangents)[1], rtol=1e-5, atol=1e-5
        )


def test_shift_barrier_on_the_inference_value_only():
    """The XLA path with ``train=False`` adds ``shift`` behind one optimization barrier on the
    value of ``x`` (so XLA cannot fold the add into the convolution before it); derivatives
    carry none (the forward-mode and gradient programs hold the one barrier of the primal);
    ``train=True``, the training step's program, has none: it is the program of the explicit
    add, op for op."""
    x, ones, t = jnp.ones((2, 4, 4, 8)), jnp.ones(8), jnp.ones((2, 8))

    def program(fn, *args):
        return jax.jit(fn).trace(*args).lower().as_text()

    def gn(x, t, train):
        return group_norm(x, ones, ones, num_groups=2, impl="xla", train=train, shift=t)

    barrier = "stablehlo.optimization_barrier"
    assert program(lambda x: gn(x, t, False), x).count(barrier) == 1
    loss = lambda x, t: jnp.sum(gn(x, t, False) ** 2)  # noqa: E731
    assert program(jax.grad(loss, (0, 1)), x, t).count(barrier) == 1
    assert program(lambda x: jax.jvp(lambda x: gn(x, t, False), (x,), (x,)), x).count(barrier) == 1
    train_step = lambda x, t: jax.grad(lambda x: jnp.sum(gn(x, t, True) ** 2))(x)  # noqa: E731
    explicit = lambda x, t: jax.grad(  # noqa: E731
        lambda x: jnp.sum(
            group_norm(x + t[:, None, None, :], ones, ones, num_groups=2, impl="xla", train=True)
            ** 2
        )
    )(x)
    assert program(train_step, x, t) == program(explicit, x, t)
    with pytest.raises(ValueError, match=r"shift must have shape \(B, C\) = \(2, 8\)"):
        group_norm(x, ones, ones, num_groups=2, shift=jnp.ones((2, 1, 1, 8)))


def pallas_operand_counts(fn, *args) -> list[int]:
    """The operand count of every ``pallas_call`` in ``fn``'s jaxpr, nested jaxprs included."""
    counts = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "pallas_call":
                counts.append(len(eqn.invars))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return counts


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("tiling", [{}, dict(tile_elements=128, channel_block=8)])
def test_kernel_adds_the_shift_as_it_reads_x_at_inference(np_rng, monkeypatch, dtype, tiling):
    """With ``train=False`` the kernel takes ``shift`` as a fourth operand and adds it to each
    pixel in float32 as it loads ``x``: no ``x + shift`` exists outside it for XLA to fold into
    a convolution. ``train=True`` (the training program) and ``SHIFT_IN_KERNEL = False`` keep
    the add before a three-operand kernel. The value is the kernel's normalization of
    ``x + shift`` formed in float32: equal to float32 rounding (the same kernel arithmetic on
    the same float32 sums), and to one rounding of the output for bfloat16 outputs. Tilings:
    one chunk per program; several chunks and channel blocks (the shifted-sum loop)."""
    x, scale, bias = inputs(np_rng, (2, 8, 8, 16))
    x = x.astype(dtype)
    t = jnp.asarray(np_rng.standard_normal((2, 16)), dtype)
    kw = dict(num_groups=4, silu=True, impl="pallas", interpret=True, **tiling)

    def shifted(x, t, train=False):
        return group_norm(x, scale, bias, shift=t, train=train, **kw)

    assert pallas_operand_counts(shifted, x, t) == [4]
    assert pallas_operand_counts(functools.partial(shifted, train=True), x, t) == [3]
    summed = x.astype(jnp.float32) + t.astype(jnp.float32)[:, None, None, :]
    want = group_norm(summed, scale, bias, dtype=jnp.result_type(dtype, scale), **kw)
    got = shifted(x, t)
    assert got.dtype == want.dtype
    ulp = 1e-6 if dtype == jnp.float32 else 2.0**-7
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=ulp, atol=ulp
    )
    monkeypatch.setattr(gn_module, "SHIFT_IN_KERNEL", False)
    # a new function object: traces are cached per function, and the flag is not in the key
    assert pallas_operand_counts(lambda x, t: shifted(x, t), x, t) == [3]


@pytest.mark.parametrize("family", ["ncsnpp", "ddpm"])
def test_networks_pass_the_time_embedding_as_shift(family, monkeypatch):
    """Every ResNet block hands its time embedding to GroupNorm_1 as ``shift``: the inference
    program holds one barrier per block (each block has one GroupNorm_1), the training
    program none. (The FIR downsampling blocks' own barrier, tests/test_layers.py, is off.)"""
    monkeypatch.setattr(sd.models.layers, "MATERIALIZE_BEFORE_DOWNSAMPLING", False)
    if family == "ddpm":
        model = sd.models.DDPM(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
        labels = jnp.array([10, 500])
    else:
        model = sd.models.NCSNpp(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
        labels = jnp.array([0.5, 3.0])
    x = jnp.ones((2, 8, 8, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x, labels)
    blocks = (
        sum(
            "GroupNorm_1" in jax.tree_util.keystr(path)
            for path, _ in jax.tree_util.tree_flatten_with_path(variables)[0]
        )
        // 2
    )  # scale and bias
    assert blocks >= 4

    def barriers(train):
        fn = lambda v: model.apply(v, x, labels, train=train, rngs={"dropout": jax.random.key(1)})  # noqa: E731
        text = jax.jit(fn).trace(variables).lower().as_text()
        return text.count("stablehlo.optimization_barrier")

    assert barriers(False) == blocks
    assert barriers(True) == 0


def test_module_params_and_activations(np_rng):
    x, scale, bias = inputs(np_rng, (2, 4, 4, 8))
    variables = {"params": {"scale": scale, "bias": bias}}
    flax_tree = jax.eval_shape(nn.GroupNorm(num_groups=2).init, jax.random.key(0), x)
    ours = jax.eval_shape(GroupNorm(num_groups=2).init, jax.random.key(0), x)
    assert jax.tree.structure(ours) == jax.tree.structure(flax_tree)
    plain = GroupNorm(num_groups=2, impl="xla").apply(variables, x)
    relu = GroupNorm(num_groups=2, act=jax.nn.relu, impl="xla").apply(variables, x)
    silu = GroupNorm(num_groups=2, act=jax.nn.silu, impl="xla").apply(variables, x)
    np.testing.assert_allclose(relu, jax.nn.relu(plain), rtol=1e-6)
    np.testing.assert_allclose(silu, jax.nn.silu(plain), rtol=1e-6)


@pytest.mark.parametrize("family", ["ncsnpp", "ddpmpp", "ddpm"])
def test_networks_with_the_kernel_match_xla(np_rng, monkeypatch, family):
    """The networks with every GroupNorm they can fuse run by the kernel (interpreted): the
    score and the training gradient equal XLA's to float32 summation order (the networks
    chain ~20 normalizations of O(1) activations: relative 1e-4)."""
    if family == "ddpm":
        model = sd.models.DDPM(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    else:
        fields = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
        if family == "ddpmpp":
            fields.update(resblock_type="ddpm", fir=False, progressive_input="none")
        model = sd.models.NCSNpp(**fields)
    x = jnp.asarray(np_rng.uniform(size=(2, 8, 8, 3)), jnp.float32)
    labels = jnp.array([0.5, 3.0]) if family != "ddpm" else jnp.array([10, 500])
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, labels)
    variables = jax.tree.map(
        lambda s: jnp.asarray(0.3 * np_rng.standard_normal(s.shape) + (s.ndim == 1), jnp.float32),
        shapes,
    )

    def run(impl):
        m = model.clone(group_norm_impl=impl)

        def loss(params):
            out = m.apply(
                {"params": params}, x, labels, train=True, rngs={"dropout": jax.random.key(1)}
            )
            return jnp.mean(out**2)

        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(variables["params"]))
        score = jax.jit(lambda v: m.apply(v, x, labels))(variables)
        return score, jax.jit(jax.grad(loss))(variables["params"]), jaxpr

    want_score, want_grad, jaxpr = run("xla")
    assert "pallas_call" not in jaxpr
    calls = []
    real = gn_module.group_norm

    def interpreted(*args, **kwargs):
        calls.append(kwargs["impl"])
        return real(*args, **kwargs, interpret=kwargs["impl"] == "pallas")

    monkeypatch.setattr(gn_module, "group_norm", interpreted)
    got_score, got_grad, jaxpr = run("pallas")
    assert calls and set(calls) == {"pallas"} and "pallas_call" in jaxpr
    assert rel(got_score, want_score) < 1e-4
    # Leaves whose exact gradient is zero (a bias right before a GroupNorm: the normalization
    # removes it; in the DDPM net, whose groups are single channels, also the time embedding's
    # Dense_0) hold rounding noise of ~1e-9 per entry in both: an absolute bound per entry.
    scale = max(float(np.max(np.abs(np.asarray(w)))) for w in jax.tree.leaves(want_grad))
    for got, want in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad), strict=True):
        err = float(np.linalg.norm(np.asarray(got) - np.asarray(want)))
        noise = 1e-6 * scale * np.sqrt(np.size(want))
        assert err <= 1e-3 * float(np.linalg.norm(np.asarray(want))) + noise


def test_config_field_selects_the_implementation():
    from scoresde.config_loading import load_config

    smoke = "experiments/configs/vp/cifar10_ddpmpp_continuous.py:smoke"
    assert sd.models.from_config(load_config(smoke)).group_norm_impl == "auto"
    model = sd.models.from_config(load_config(smoke, ["model.group_norm_impl=xla"]))
    assert model.group_norm_impl == "xla"
    with pytest.raises(ValueError, match=r"group_norm_impl must be one of .*got 'cudnn'"):
        sd.models.from_config(load_config(smoke, ["model.group_norm_impl=cudnn"]))
    ncsnv2 = load_config(
        "experiments/configs/ve/ncsnv2/cifar10.py:smoke", ["model.group_norm_impl=xla"]
    )
    with pytest.raises(ValueError, match=r"must be one of \('auto',\) for model.name='ncsnv2_64'"):
        sd.models.from_config(ncsnv2)
