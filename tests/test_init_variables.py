"""``experiment.init_variables`` (computed on the host's CPU) and ``abstract_variables``.

The initial weights must be ``model.init``'s, bit for bit: the random bits come from the key
alone, and the CPU computes the same float operations the default device would (here the
default device is a CPU as well, so any difference is a bug, not rounding). They must come
back on the default device, uncommitted, so that they mix with arrays made by ``jnp``; and
``abstract_variables`` must describe them exactly without computing them.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoresde as sd
from scoresde import experiment
from scoresde.config_loading import load_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"


class _WithState(nn.Module):
    """A dense layer and a non-parameter collection, like a network with ``batch_stats``."""

    @nn.compact
    def __call__(self, x, labels, train=False):
        count = self.variable("batch_stats", "count", lambda: jnp.zeros((), jnp.int32))
        del count
        return nn.Dense(x.shape[-1])(x)


#: One resolution level, no attention: the smoke networks' layer types (FIR resampling in
#: NCSN++, Fourier features) at a fraction of their ~15 s CPU compile of ``model.init``.
_TINY = {"model.nf": 8, "model.ch_mult": (1,), "model.attn_resolutions": ()}


def _smoke_network(rel: str):
    config = load_config(f"{CONFIGS / rel}:smoke", _TINY)
    return sd.models.from_config(config), experiment.data_shape_from_config(config)


@pytest.mark.parametrize(
    "rel", ["vp/cifar10_ddpmpp_continuous.py", "ve/cifar10_ncsnpp_continuous.py"]
)
def test_equals_model_init_bit_for_bit(rel, key):
    model, shape = _smoke_network(rel)
    got = experiment.init_variables(model, key, shape)
    x, labels = jnp.zeros((1, *shape)), jnp.zeros((1,), jnp.int32)
    want = jax.jit(lambda k: model.init({"params": k, "dropout": k}, x, labels, train=False))(key)
    assert jax.tree.structure(got) == jax.tree.structure(dict(want))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(dict(want)), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_other_collections_and_placement(key):
    variables = experiment.init_variables(_WithState(), key, (3,))
    assert sorted(variables) == ["batch_stats", "params"]
    assert isinstance(variables, dict)
    for leaf in jax.tree.leaves(variables):
        assert leaf.devices() == {jax.devices()[0]}
        assert not leaf.committed


def test_explicit_device_gives_the_same_values(key):
    host = experiment.init_variables(_WithState(), key, (3,))
    explicit = experiment.init_variables(_WithState(), key, (3,), device=jax.devices()[0])
    for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(explicit), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_device_is_refused(key):
    with pytest.raises(TypeError, match=r"init_variables: device must be a jax.Device.*'cpu'"):
        experiment.init_variables(_WithState(), key, (3,), device="cpu")


def test_without_a_cpu_backend_the_default_device_computes(key, monkeypatch):
    real = jax.devices

    def devices(backend=None):
        if backend == "cpu":
            raise RuntimeError("Unknown backend cpu")
        return real(backend)

    monkeypatch.setattr(jax, "devices", devices)
    assert experiment._host_cpu() is None
    variables = experiment.init_variables(_WithState(), key, (3,))
    assert variables["params"]["Dense_0"]["kernel"].shape == (3, 3)


def test_abstract_variables_describe_init_variables(key):
    model, shape = _smoke_network("ve/cifar10_ncsnpp_continuous.py")
    abstract = experiment.abstract_variables(model, shape)
    concrete = experiment.init_variables(model, key, shape)
    assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
    for a, c in zip(jax.tree.leaves(abstract), jax.tree.leaves(concrete), strict=True):
        assert isinstance(a, jax.ShapeDtypeStruct)
        assert (a.shape, a.dtype) == (c.shape, c.dtype)


_OFF_DEFAULT_DEVICE = """
import flax.linen as nn, jax, jax.numpy as jnp
from scoresde import experiment

class _WithState(nn.Module):
    @nn.compact
    def __call__(self, x, labels, train=False):
        self.variable("batch_stats", "count", lambda: jnp.zeros((), jnp.int32))
        return nn.Dense(x.shape[-1])(x)

jax.config.update("jax_default_device", jax.devices()[2])
v = experiment.init_variables(_WithState(), jax.random.key(0), (3,))
leaves = jax.tree.leaves(v)
assert all(x.devices() == {jax.devices()[2]} and not x.committed for x in leaves), [
    (x.devices(), x.committed) for x in leaves]
# uncommitted: combines with an array on another device in one jitted call
y = jax.jit(lambda a, b: a @ b)(v["params"]["Dense_0"]["kernel"], jnp.ones(3))
print("OK", y.shape)
"""


def test_result_lives_on_a_non_default_default_device():
    """With four host devices and the default moved to the third, the variables land there,
    uncommitted (computed on the first CPU device, then moved)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", _OFF_DEFAULT_DEVICE],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "OK (3,)" in out.stdout
