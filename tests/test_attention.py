"""``attention``: which implementation it picks, and the fused kernel's custom JVP.

cuDNN's kernel does not run on this CPU, so the tests that take the fused path put XLA's
computation in its place (``_cudnn_attention``): what they check is the selection and the
derivative rule around the kernel, against ``jax.nn.dot_product_attention``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde.models import attention as attention_module
from scoresde.models.attention import attention


def qkv(dtype, shape=(2, 16, 1, 8)):
    keys = jax.random.split(jax.random.key(0), 3)
    return tuple(jax.random.normal(key, shape).astype(dtype) for key in keys)


def custom_jvp_calls(fn, *args) -> int:
    # a new function object each time: traces are cached per function, and the module's
    # flags and the patched backend check are not part of the key
    return str(jax.make_jaxpr(lambda *a: fn(*a))(*args)).count("custom_jvp_call")


@pytest.fixture
def on_cuda_with_xla_kernel(monkeypatch):
    """As on a CUDA machine, with XLA's attention standing in for cuDNN's kernel."""
    monkeypatch.setattr(attention_module, "default_backend_is_cuda", lambda: True)
    monkeypatch.setattr(attention_module, "_cudnn_attention", attention_module._xla_attention)


def test_on_this_cpu_it_is_xla_attention():
    q, k, v = qkv(jnp.bfloat16)
    np.testing.assert_array_equal(attention(q, k, v), jax.nn.dot_product_attention(q, k, v))
    assert custom_jvp_calls(attention, q, k, v) == 0


@pytest.mark.usefixtures("on_cuda_with_xla_kernel")
def test_fused_kernel_only_at_inference_in_half_precision(monkeypatch):
    """The fused path (one custom_jvp call) for bfloat16 and float16 with ``train=False``;
    XLA's for float32, for ``train=True``, with the flag off, and where the kernel refuses
    the shape (JAX raises NotImplementedError at trace time)."""
    for dtype in (jnp.bfloat16, jnp.float16):
        assert custom_jvp_calls(attention, *qkv(dtype)) == 1
    assert custom_jvp_calls(attention, *qkv(jnp.float32)) == 0
    assert custom_jvp_calls(lambda *a: attention(*a, train=True), *qkv(jnp.bfloat16)) == 0

    def refuses(q, k, v):
        raise NotImplementedError("head dim")

    monkeypatch.setattr(attention_module, "_cudnn_attention", refuses)
    assert custom_jvp_calls(attention, *qkv(jnp.bfloat16)) == 0
    monkeypatch.setattr(attention_module, "FUSED_AT_INFERENCE", False)
    monkeypatch.setattr(attention_module, "_cudnn_attention", attention_module._xla_attention)
    assert custom_jvp_calls(attention, *qkv(jnp.bfloat16)) == 0


@pytest.mark.usefixtures("on_cuda_with_xla_kernel")
def test_fused_path_derivatives_are_xla_attention_derivatives():
    """Differentiated, the fused path is XLA's computation (the custom JVP), and reverse mode
    transposes it: value, jvp and gradient equal ``jax.nn.dot_product_attention``'s (float16
    inputs, compared in float32 to float16 rounding of the outputs, ~1e-3). Under ``jax.jvp``
    the fused kernel does not run at all (it would compute the attention a second time)."""
    q, k, v = qkv(jnp.float16)
    tangents = qkv(jnp.float16, q.shape)[::-1]
    plain = jax.nn.dot_product_attention
    assert custom_jvp_calls(attention, q, k, v) == 1
    np.testing.assert_array_equal(attention(q, k, v), plain(q, k, v))
    got = jax.jvp(attention, (q, k, v), tangents)[1]
    want = jax.jvp(plain, (q, k, v), tangents)[1]
    calls = []
    monkey_kernel = lambda *a: calls.append(1) or attention_module._xla_attention(*a)  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attention_module, "_cudnn_attention", monkey_kernel)
        jax.make_jaxpr(lambda *a: jax.jvp(attention, a, tangents))(q, k, v)
        assert calls == []
        jax.make_jaxpr(lambda *a: attention(*a))(q, k, v)
        assert calls == [1]
    np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=1e-3, atol=1e-3)

    def loss(f):
        return lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) ** 2)

    # per-example forward mode, as the likelihood's vmapped solves run it
    per_example = jax.vmap(lambda *a: jax.jvp(attention, a[:3], a[3:])[1])(q, k, v, *tangents)
    np.testing.assert_allclose(np.float32(per_example), np.float32(want), rtol=1e-3, atol=1e-3)

    got = jax.grad(loss(attention), (0, 1, 2))(q, k, v)
    want = jax.grad(loss(plain), (0, 1, 2))(q, k, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.float32(g), np.float32(w), rtol=1e-3, atol=1e-3)
