"""Predictor-corrector sampling against exact Gaussian-mixture scores.

Why the tolerances hold (see ``sampling_helpers.check_mixture``): with the exact score the
only errors are Monte Carlo (5 standard errors of the stated sample sizes) and the
discretization of the 200-point grid. The expected statistics are the mixture's at ``eps``
(diffused, or pushed through Tweedie's denoiser), not the data's, so the ``eps``-smoothing is
accounted for exactly. Discretization: at 200 points the predictors' bias in the mode
spreads is a few percent (it halves when the grid is doubled), inside the 10% relative std
tolerance; corrector-only samplers (annealed Langevin without predictor) are asymptotically
exact only as the steps per level grow, so their weights get a 0.04 allowance.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_helpers import (
    EPS,
    ScoreCallCounter,
    check_mixture,
    isotropic_score_fn,
    mixture_2d,
    mixture_16d,
    sdes,
)

import scoresde as sd

N_GRID = 200
N_2D = 4000
N_16D = 2000

# Per-sample Langevin step sizes need the norms ||z||, ||s|| to concentrate, which they do in
# high dimension; in 2-D ||z|| / ||s|| is heavy-tailed (F(2, 2)) and the step explodes near a
# mode's centre, and at d = 16 the O(2/d) bias of the rule is ~13% in the std (documented on
# LangevinCorrector). Low-dimensional tests use the batch-averaged rule; the per-sample
# default is tested at d = 256 (bias < 1%).
LANGEVIN_LOW_DIM = sd.LangevinCorrector(batch_averaged=True)

PREDICTORS = ["euler_maruyama", "reverse_diffusion", "ancestral", "none"]
CORRECTORS = ["langevin", "ald", "none"]


def _corrector_args(predictor, corrector, dim):
    """Corrector object and steps: corrector-only sampling needs more, larger steps."""
    if corrector == "langevin" and dim <= 16:
        corrector = LANGEVIN_LOW_DIM
    if predictor == "none":
        snr = 0.5 if corrector == "ald" else 0.16
        obj = sd.sampling.pc.resolve_corrector(corrector, snr)
        return obj, 5, 0.04
    return corrector, 1, 0.0


def _run(key, name, predictor, corrector, dim, denoise=True):
    sde = sdes(N_GRID)[name]
    gm = mixture_2d() if dim == 2 else mixture_16d()
    n = N_2D if dim == 2 else N_16D
    corr, n_corr, allowance = _corrector_args(predictor, corrector, dim)
    x, nfe = sd.sample_pc(
        key,
        sde,
        isotropic_score_fn(gm, sde),
        (n, dim),
        predictor=predictor,
        corrector=corr,
        n_corrector_steps=n_corr,
        denoise=denoise,
    )
    check_mixture(x, gm, sde, denoise, weight_allowance=allowance, mean_bias=allowance)
    return nfe


# Fast selection: every predictor, corrector and SDE appears at least once.
FAST_2D = [
    ("vp", "reverse_diffusion", "ald"),
    ("subvp", "euler_maruyama", "langevin"),
    ("ve", "ancestral", "none"),
    ("ve", "none", "ald"),
]
FAST_16D = [
    ("vp", "ancestral", "langevin"),
    ("subvp", "reverse_diffusion", "none"),
    ("ve", "euler_maruyama", "langevin"),
]


@pytest.mark.parametrize("name,predictor,corrector", FAST_2D)
def test_pc_reproduces_2d_mixture(key, name, predictor, corrector):
    _run(key, name, predictor, corrector, 2)


@pytest.mark.parametrize("name,predictor,corrector", FAST_16D)
def test_pc_reproduces_16d_mixture(key, name, predictor, corrector):
    _run(key, name, predictor, corrector, 16)


ALL = [
    (name, p, c)
    for name in ("vp", "subvp", "ve")
    for p in PREDICTORS
    for c in CORRECTORS
    if not (p == "none" and c == "none")
]


@pytest.mark.slow
@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("name,predictor,corrector", ALL)
def test_pc_all_combinations(key, name, predictor, corrector, dim):
    _run(key, name, predictor, corrector, dim)


@pytest.mark.parametrize(
    "predictor,corrector,n_corr,denoise",
    [
        ("reverse_diffusion", "langevin", 2, True),
        ("ancestral", "none", 1, False),
        ("none", "ald", 3, True),
    ],
)
def test_nfe_equals_counted_score_calls(key, predictor, corrector, n_corr, denoise):
    sde = sd.VPSDE(beta_max=10.0, N=12)  # ancestral steps need beta_max / N < 1
    counter = ScoreCallCounter(isotropic_score_fn(mixture_2d(), sde))
    _, nfe = sd.sample_pc(
        key,
        sde,
        counter,
        (3, 2),
        predictor=predictor,
        corrector=corrector,
        n_corrector_steps=n_corr,
        denoise=denoise,
    )
    per_step = (predictor != "none") + (corrector != "none") * n_corr
    assert int(nfe) == counter.count() == 11 * per_step + denoise


def test_probability_flow_euler_is_the_deterministic_ode_loop(key):
    """EM with probability_flow=True and no corrector is Euler on the probability-flow ODE."""
    sde = sd.VESDE(sigma_max=20.0, N=20)
    score_fn = isotropic_score_fn(mixture_2d(), sde)
    x, _ = sd.sample_pc(
        key,
        sde,
        score_fn,
        (5, 2),
        predictor="euler_maruyama",
        corrector="none",
        denoise=False,
        probability_flow=True,
    )
    y = sde.prior_sampling(jax.random.split(key)[0], (5, 2))
    ts = jnp.linspace(sde.T, EPS, 20)
    flow = sde.reverse(score_fn, probability_flow=True)

    @jax.jit
    def euler_loop(y):
        for i in range(19):
            drift, _ = flow.sde(y, jnp.full((5,), ts[i]))
            y = y + drift * (ts[i + 1] - ts[i])
        return y

    y = euler_loop(y)
    # float32 rounding over 19 steps of size ~1 in a field of size ~20
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4)


def test_probability_flow_reverse_diffusion_ignores_noise_key():
    sde = sd.VPSDE(N=20)
    score_fn = isotropic_score_fn(mixture_2d(), sde)
    # Same prior key (first half of the split), different noise keys: same output.
    prior_key = jax.random.key(3)
    outs = []
    for seed in (0, 1):
        key = jax.random.key(seed)
        x_T = sde.prior_sampling(prior_key, (4, 2))
        solver = sd.sampling.PredictorCorrector(
            sd.ReverseDiffusionPredictor(), sd.NoneCorrector(), 0
        )
        outs.append(sd.sampling.pc.run_pc(key, sde, score_fn, x_T, solver, 20, EPS, True))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_diffrax_euler_as_predictor_equals_euler_maruyama(key):
    sde = sd.SubVPSDE(N=30)
    score_fn = isotropic_score_fn(mixture_2d(), sde)
    a, _ = sd.sample_pc(key, sde, score_fn, (6, 2), predictor="euler_maruyama")
    b, _ = sd.sample_pc(key, sde, score_fn, (6, 2), predictor=diffrax.Euler())
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # same update, float32 reassociation


def test_num_steps_different_from_N_uses_the_grid(key):
    sde = sd.VPSDE(N=1000)
    gm = mixture_2d()
    x, nfe = sd.sample_pc(
        key,
        sde,
        isotropic_score_fn(gm, sde),
        (2000, 2),
        predictor="ancestral",
        corrector="none",
        num_steps=N_GRID,
    )
    assert int(nfe) == N_GRID
    check_mixture(x, gm, sde, True)


def test_bad_arguments_raise():
    sde = sd.VPSDE(N=10)
    score_fn = lambda x, t: -x
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="predictor must be one of"):
        sd.sample_pc(key, sde, score_fn, (2, 2), predictor="heun")
    with pytest.raises(ValueError, match="corrector must be one of"):
        sd.sample_pc(key, sde, score_fn, (2, 2), corrector="hmc")
    with pytest.raises(ValueError, match="num_steps must be an integer >= 2"):
        sd.sample_pc(key, sde, score_fn, (2, 2), num_steps=1)
    with pytest.raises(ValueError, match="eps must satisfy"):
        sd.sample_pc(key, sde, score_fn, (2, 2), eps=0.0)
    with pytest.raises(ValueError, match="probability_flow=True is not supported"):
        sd.sample_pc(key, sde, score_fn, (2, 2), predictor="ancestral", probability_flow=True)
    with pytest.raises(ValueError, match="snr must be > 0"):
        sd.LangevinCorrector(snr=-1.0)


def test_isotropic_score_matches_mixture(key):
    """The tests' cheap isotropic score equals GaussianMixture's exact score."""
    for sde, gm in ((sdes(10)["vp"], mixture_2d()), (sdes(10)["ve"], mixture_16d())):
        x = gm.sample(key, 8) * 1.5
        t = jnp.linspace(EPS, 1.0, 8)
        np.testing.assert_allclose(
            isotropic_score_fn(gm, sde)(x, t), gm.score_fn(sde)(x, t), rtol=2e-4, atol=2e-4
        )


def test_per_sample_langevin_high_dimension(key):
    """The default (per-sample) Langevin rule at d = 256, where its O(2/d) bias is < 1%."""
    d = 256
    gm = sd.GaussianMixture.isotropic(
        jnp.array([0.4, 0.6]), jnp.stack([-0.25 * jnp.ones(d), 0.25 * jnp.ones(d)]), 0.3
    )
    sde = sdes(N_GRID)["ve"]
    x, _ = sd.sample_pc(key, sde, isotropic_score_fn(gm, sde), (1000, d))
    check_mixture(x, gm, sde, True)


def test_ancestral_step_refuses_betas_that_reach_one():
    """VP with ``N <= beta_max``: DDPM's last discrete beta is beta_max / N >= 1, and the
    ancestral step would divide by sqrt(1 - beta) = 0 (inf samples); a clear error instead."""
    x, t = jnp.ones((1, 2)), jnp.ones((1,))
    with pytest.raises(ValueError, match=r"beta_max / N = 20.0/20 >= 1.*N=21"):
        sd.VPSDE(0.1, 20.0, 20).ancestral_step(x, t, t, jnp.zeros_like(x), jnp.zeros_like(x))
    x_next, _ = sd.VPSDE(0.1, 20.0, 21).ancestral_step(x, t, t, jnp.zeros_like(x), x)
    assert np.all(np.isfinite(np.asarray(x_next)))
