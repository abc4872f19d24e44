"""NCSN++/DDPM++ layers: convolutions of a concatenation, skip connections handed apart, and the
barrier before FIR downsampling at inference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import scoresde as sd
from scoresde.models import layers
from scoresde.models.initializers import default_init

# float32 sums of O(1) products over at most a few hundred terms, split into two partial sums
# instead of one: the summation order moves the result by ~1e-6 relative.
RTOL, ATOL = 1e-5, 1e-5


def parts(np_rng, batch=2, size=8, channels=(3, 5)):
    return [
        jnp.asarray(np_rng.standard_normal((batch, size, size, c)), jnp.float32) for c in channels
    ]


@pytest.mark.parametrize("kernel_size, padding", [((1, 1), "VALID"), ((3, 3), ((1, 1), (1, 1)))])
def test_concat_conv_is_the_conv_of_the_concatenation(np_rng, kernel_size, padding):
    """Same parameters (names, shapes, initial values) as the ``nn.Conv`` it stands for, and the
    same output, for two parts and for one."""
    a, b = parts(np_rng)
    ours = layers.ConcatConv(4, kernel_size, padding)
    conv = nn.Conv(
        4,
        kernel_size,
        padding=padding,
        kernel_init=default_init(),
        bias_init=nn.initializers.zeros,
    )
    concatenated = jnp.concatenate([a, b], axis=-1)
    variables = ours.init(jax.random.key(0), a, b)
    reference = conv.init(jax.random.key(0), concatenated)
    assert jax.tree.structure(variables) == jax.tree.structure(reference)
    for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(got, want)
    # A non-zero bias, so that adding it once (not per part) is checked.
    variables = jax.tree.map(lambda v: v + 0.5, variables)
    np.testing.assert_allclose(
        ours.apply(variables, a, b), conv.apply(variables, concatenated), rtol=RTOL, atol=ATOL
    )
    single = jax.tree.map(lambda v: v[..., :3, :] if v.ndim == 4 else v, variables)
    np.testing.assert_allclose(ours.apply(single, a), conv.apply(single, a), rtol=RTOL, atol=ATOL)


def test_nin_of_parts_is_the_nin_of_the_concatenation(np_rng):
    a, b = parts(np_rng)
    nin = layers.NIN(4)
    variables = nin.init(jax.random.key(0), jnp.concatenate([a, b], axis=-1))
    assert jax.tree.map(jnp.shape, nin.init(jax.random.key(0), a, b)) == jax.tree.map(
        jnp.shape, variables
    )
    variables = jax.tree.map(lambda v: v + 0.5, variables)
    np.testing.assert_allclose(
        nin.apply(variables, a, b),
        nin.apply(variables, jnp.concatenate([a, b], axis=-1)),
        rtol=RTOL,
        atol=ATOL,
    )


BLOCKS = {
    "biggan": dict(cls=layers.ResnetBlockBigGANpp, fir=True),
    "biggan_up": dict(cls=layers.ResnetBlockBigGANpp, fir=True, up=True),
    "biggan_down": dict(cls=layers.ResnetBlockBigGANpp, fir=True, down=True),
    "biggan_naive_down": dict(cls=layers.ResnetBlockBigGANpp, fir=False, down=True),
    "ddpmpp_nin": dict(cls=layers.ResnetBlockDDPMpp),
    "ddpmpp_conv_shortcut": dict(cls=layers.ResnetBlockDDPMpp, conv_shortcut=True),
}


@pytest.mark.parametrize("name", BLOCKS)
@pytest.mark.parametrize("train", [False, True])
def test_blocks_take_the_skip_connection_apart(np_rng, name, train):
    """``block(x, temb, train, skip)`` is ``block(concat([x, skip]), temb, train)``: the same
    parameters, output and gradients (with respect to x, skip and the parameters)."""
    fields = dict(BLOCKS[name])
    cls = fields.pop("cls")
    block = cls(act=jax.nn.silu, out_ch=8, init_scale=1.0, dropout=0.0, **fields)
    x, skip = parts(np_rng, channels=(8, 4))
    temb = jnp.asarray(np_rng.standard_normal((2, 16)), jnp.float32)
    variables = block.init(jax.random.key(0), jnp.concatenate([x, skip], -1), temb)
    assert jax.tree.map(jnp.shape, block.init(jax.random.key(0), x, temb, skip=skip)) == (
        jax.tree.map(jnp.shape, variables)
    )

    def apart(v, x, skip):
        return jnp.sum(jnp.sin(block.apply(v, x, temb, train, skip)))

    def concatenated(v, x, skip):
        return jnp.sum(jnp.sin(block.apply(v, jnp.concatenate([x, skip], -1), temb, train)))

    got = jax.value_and_grad(apart, argnums=(0, 1, 2))(variables, x, skip)
    want = jax.value_and_grad(concatenated, argnums=(0, 1, 2))(variables, x, skip)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=1e-4)


def count_barriers(fn, *args) -> int:
    # A fresh function per call: jit caches traces by function, not by module constants.
    text = jax.jit(lambda *a: fn(*a)).trace(*args).lower().as_text()
    return text.count("stablehlo.optimization_barrier")


def test_fir_downsampling_block_writes_its_input_out_at_inference(np_rng, monkeypatch):
    """At inference the FIR downsampling block puts its normalized input behind a barrier
    (one more than GroupNorm_1's); training programs have none; the value is the same."""
    block = layers.ResnetBlockBigGANpp(act=jax.nn.silu, down=True, fir=True, dropout=0.0)
    (x,) = parts(np_rng, channels=(8,))
    temb = jnp.asarray(np_rng.standard_normal((2, 16)), jnp.float32)
    variables = block.init(jax.random.key(0), x, temb)

    def apply(v, x, train=False):
        return block.apply(v, x, temb, train)

    assert count_barriers(apply, variables, x) == 2
    assert count_barriers(lambda v, x: apply(v, x, True), variables, x) == 0
    with_barrier = apply(variables, x)
    monkeypatch.setattr(layers, "MATERIALIZE_BEFORE_DOWNSAMPLING", False)
    assert count_barriers(apply, variables, x) == 1
    np.testing.assert_array_equal(apply(variables, x), with_barrier)
    naive = layers.ResnetBlockBigGANpp(act=jax.nn.silu, down=True, fir=False, dropout=0.0)
    monkeypatch.setattr(layers, "MATERIALIZE_BEFORE_DOWNSAMPLING", True)
    assert count_barriers(lambda v, x: naive.apply(v, x, temb), variables, x) == 1


@pytest.mark.parametrize("resblock_type", ["biggan", "ddpm"])
def test_networks_hand_skips_apart_with_the_same_score(np_rng, monkeypatch, resblock_type):
    """NCSN++ and DDPM++ give the same score whether the decoder hands its skip connections to
    the blocks apart (the default) or concatenates them first, as the reference does."""
    model = sd.models.NCSNpp(
        nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resblock_type=resblock_type
    )
    x = jnp.asarray(np_rng.standard_normal((2, 8, 8, 3)), jnp.float32)
    labels = jnp.array([0.5, 3.0])
    variables = model.init(jax.random.key(0), x, labels)
    apart = model.apply(variables, x, labels)
    monkeypatch.setattr(sd.models.ncsnpp, "SKIPS_APART", False)
    np.testing.assert_allclose(model.apply(variables, x, labels), apart, rtol=RTOL, atol=ATOL)
