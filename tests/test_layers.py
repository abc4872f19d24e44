"""NCSN++'s FIR downsampling block writes its normalized input out at inference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from scoresde.models import layers


def count_barriers(fn, *args) -> int:
    # A fresh function per call: jit caches traces by function, not by module constants.
    text = jax.jit(lambda *a: fn(*a)).trace(*args).lower().as_text()
    return text.count("stablehlo.optimization_barrier")


def test_fir_downsampling_block_writes_its_input_out_at_inference(np_rng, monkeypatch):
    """At inference the FIR downsampling block puts its normalized input behind a barrier
    (one more than GroupNorm_1's); training programs and the naive downsampling have none.
    The barrier is an identity: the value and the forward-mode derivative (the likelihood's
    ``jax.jvp``) are exactly those without it."""
    block = layers.ResnetBlockBigGANpp(act=jax.nn.silu, down=True, fir=True, dropout=0.0)
    x, dx = (jnp.asarray(np_rng.standard_normal((2, 8, 8, 8)), jnp.float32) for _ in range(2))
    temb = jnp.asarray(np_rng.standard_normal((2, 16)), jnp.float32)
    variables = block.init(jax.random.key(0), x, temb)

    def apply(v, x, train=False):
        return block.apply(v, x, temb, train)

    def jvp():
        return jax.jvp(lambda x: apply(variables, x), (x,), (dx,))

    assert count_barriers(apply, variables, x) == 2
    assert count_barriers(lambda v, x: apply(v, x, True), variables, x) == 0
    with_barrier = jvp()
    monkeypatch.setattr(layers, "MATERIALIZE_BEFORE_DOWNSAMPLING", False)
    assert count_barriers(apply, variables, x) == 1
    for got, want in zip(jvp(), with_barrier, strict=True):
        np.testing.assert_array_equal(got, want)
    monkeypatch.setattr(layers, "MATERIALIZE_BEFORE_DOWNSAMPLING", True)
    naive = layers.ResnetBlockBigGANpp(act=jax.nn.silu, down=True, fir=False, dropout=0.0)
    assert count_barriers(lambda v, x: naive.apply(v, x, temb), variables, x) == 1
