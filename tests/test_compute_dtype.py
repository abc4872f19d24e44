"""``cast_to_compute_dtype``: which leaves it converts (read off the jaxpr), and that the
function's value does not change, bit for bit, for the networks in bfloat16."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoresde as sd
from scoresde.models import cast_to_compute_dtype


def test_only_leaves_converted_to_one_dtype_and_nothing_else_are_cast():
    """A leaf converted to one dtype and used no other way is cast; a leaf also used as it is,
    converted to two dtypes, returned, or unused keeps its dtype."""
    p = {
        name: jnp.full((3,), 1.0 + 2.0**-12) for name in ("once", "also_raw", "two", "out", "none")
    }

    def fn(p, x):
        y = x * p["once"].astype(jnp.bfloat16).astype(jnp.float32)
        y = y + p["also_raw"].astype(jnp.bfloat16) + p["also_raw"]
        y = y + p["two"].astype(jnp.bfloat16) + p["two"].astype(jnp.float16)
        return y + p["out"].astype(jnp.bfloat16), p["out"]

    cast = cast_to_compute_dtype(fn, p, jnp.ones(3))
    dtypes = {name: leaf.dtype for name, leaf in cast.items()}
    assert dtypes == {
        "once": jnp.bfloat16,
        "also_raw": jnp.float32,
        "two": jnp.float32,
        "out": jnp.float32,
        "none": jnp.float32,
    }
    # 1 + 2^-12 is not a bfloat16: the cast leaf holds the rounded value, as fn used it
    assert float(cast["once"][0]) == 1.0
    for got, want in zip(fn(cast, jnp.ones(3)), fn(p, jnp.ones(3)), strict=True):
        np.testing.assert_array_equal(got, want)
    # a jitted fn shows only its call: nothing is cast
    jitted = cast_to_compute_dtype(jax.jit(fn), p, jnp.ones(3))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(jitted))


def _networks():
    common = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    return {
        "ncsnpp": (sd.models.NCSNpp(**common, dtype=jnp.bfloat16), jnp.array([0.5, 3.0])),
        "ddpm": (sd.models.DDPM(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                                dtype=jnp.bfloat16), jnp.array([10, 500])),
    }  # fmt: skip


@pytest.mark.parametrize("family", ["ncsnpp", "ddpm"])
def test_bfloat16_networks_give_the_same_scores_with_cast_parameters(family):
    """The convolution and dense weights become bfloat16, the GroupNorm parameters (used in
    float32) stay float32; the output is equal to the last bit, and the program has fewer
    conversions (the cast leaves' conversions are identities)."""
    model, labels = _networks()[family]
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    variables = model.init(jax.random.key(0), x, labels)

    def fn(v, x):
        return model.apply(v, x, labels)

    cast = cast_to_compute_dtype(fn, variables, x)
    by_kind = collections.defaultdict(set)
    for path, leaf in jax.tree_util.tree_flatten_with_path(cast)[0]:
        keys = jax.tree_util.keystr(path)
        if "GroupNorm" in keys or keys.endswith("['scale']"):  # the top-level norms: scale
            by_kind["GroupNorm"].add(str(leaf.dtype))
        elif keys.endswith("['kernel']"):
            by_kind["kernel"].add(str(leaf.dtype))
    assert by_kind == {"GroupNorm": {"float32"}, "kernel": {"bfloat16"}}
    np.testing.assert_array_equal(np.asarray(fn(cast, x)), np.asarray(fn(variables, x)))

    def converts(v):
        return jax.jit(fn).trace(v, x).lower().as_text().count("stablehlo.convert")

    assert converts(cast) < converts(variables)


def test_float32_network_is_left_as_it_is():
    model = sd.models.NCSNpp(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    x, labels = jnp.ones((2, 8, 8, 3)), jnp.array([0.5, 3.0])
    variables = jax.eval_shape(model.init, jax.random.key(0), x, labels)
    cast = cast_to_compute_dtype(lambda v, x: model.apply(v, x, labels), variables, x)
    assert jax.tree.map(lambda a: a.dtype, cast) == jax.tree.map(lambda a: a.dtype, variables)
