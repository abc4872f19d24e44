"""The sharded sampler on 4 forced CPU devices gives the single-device samples."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    import scoresde as sd
    assert jax.local_device_count() == 4, jax.devices()
    gm = sd.GaussianMixture.isotropic(jnp.array([0.3, 0.7]),
                                      jnp.array([[-2.0, -2.0], [2.0, 2.0]]), 0.2)
    sde = sd.VPSDE(N=20)
    key = jax.random.key(7)
    # batch-averaged Langevin: its batch means are global reductions over the mesh
    for corrector in (sd.LangevinCorrector(batch_averaged=True),):
        kw = dict(predictor="reverse_diffusion", corrector=corrector)
        x1, n1 = sd.sample_pc(key, sde, gm.score_fn(sde), (16, 2), **kw)
        x4, n4 = sd.sample_sharded(sd.sample_pc, key, sde, gm.score_fn(sde), (16, 2), **kw)
        assert len(x4.sharding.device_set) == 4, x4.sharding
        # same random draws; per-sample arithmetic identical, batch means may reassociate
        np.testing.assert_allclose(np.asarray(x4), np.asarray(x1), rtol=1e-5, atol=1e-5)
        assert int(n1) == int(n4)
    x1, _ = sd.sample_sde(key, sde, gm.score_fn(sde), (16, 2))
    x4, _ = sd.sample_sharded(sd.sample_sde, key, sde, gm.score_fn(sde), (16, 2))
    np.testing.assert_allclose(np.asarray(x4), np.asarray(x1), rtol=1e-5, atol=1e-5)
    print("OK")
    """
)


def test_sharded_equals_single_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "OK" in out.stdout
