"""Tests of the forward and reverse SDEs against closed forms, Monte Carlo and the reference."""

from __future__ import annotations

import math

import diffrax
import jax
import jax.numpy as jnp
import lineax
import numpy as np
import pytest

import scoresde as sd

SDE_CLASSES = [sd.VPSDE, sd.SubVPSDE, sd.VESDE]


def _random_xt(np_rng, shape=(6, 3, 4, 2)):
    x = np_rng.normal(size=shape)
    t = np_rng.uniform(1e-4, 1.0, size=shape[:1])
    return jnp.asarray(x), jnp.asarray(t)


# Closed forms, written out independently of the library (numpy, float64).
def _vp_closed(x, t, b0=0.1, b1=20.0, sub=False):
    beta = b0 + t * (b1 - b0)
    m = -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
    drift = -0.5 * beta[:, None] * x.reshape(len(t), -1)
    if sub:
        diffusion = np.sqrt(beta * (1 - np.exp(-2 * b0 * t - (b1 - b0) * t**2)))
        std = 1 - np.exp(2 * m)
    else:
        diffusion = np.sqrt(beta)
        std = np.sqrt(1 - np.exp(2 * m))
    mean = np.exp(m)[:, None] * x.reshape(len(t), -1)
    return drift.reshape(x.shape), diffusion, mean.reshape(x.shape), std


def _ve_closed(x, t, smin=0.01, smax=50.0):
    sigma = smin * (smax / smin) ** t
    diffusion = sigma * np.sqrt(2 * (np.log(smax) - np.log(smin)))
    return np.zeros_like(x), diffusion, x, sigma


def _closed(name, x, t):
    x, t = np.asarray(x), np.asarray(t)
    if name == "VPSDE":
        return _vp_closed(x, t)
    if name == "SubVPSDE":
        return _vp_closed(x, t, sub=True)
    return _ve_closed(x, t)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.max(np.abs(a - b))
    return err / np.max(np.abs(b)) if np.any(b != 0) else err


# float64 round-off on O(1..1e3) quantities is ~1e-13; 1e-10 leaves room for exp/log1p paths.
RTOL64 = 1e-10


@pytest.mark.parametrize("cls", SDE_CLASSES)
def test_sde_and_marginals_match_closed_form(cls, x64, np_rng):
    sde = cls()
    x, t = _random_xt(np_rng)
    drift, diffusion = sde.sde(x, t)
    mean, std = sde.marginal_prob(x, t)
    c_drift, c_diff, c_mean, c_std = _closed(cls.__name__, x, t)
    assert drift.dtype == jnp.float64 and diffusion.shape == t.shape and std.shape == t.shape
    for got, want in [(drift, c_drift), (diffusion, c_diff), (mean, c_mean), (std, c_std)]:
        assert _rel(got, want) < RTOL64 or np.allclose(got, want, rtol=0, atol=1e-300)
    assert sde.T == 1.0


@pytest.mark.parametrize("cls", SDE_CLASSES)
def test_prior_logp_closed_form(cls, x64, np_rng):
    sde = cls()
    z = jnp.asarray(np_rng.normal(size=(5, 3, 2, 2)) * 7.0)
    var = 50.0**2 if cls is sd.VESDE else 1.0
    flat = np.asarray(z).reshape(5, -1)
    want = -0.5 * flat.shape[1] * np.log(2 * np.pi * var) - 0.5 * np.sum(flat**2, 1) / var
    assert _rel(sde.prior_logp(z), want) < RTOL64


def test_discretize_closed_form(x64, np_rng):
    x, t = _random_xt(np_rng)
    N = 1000
    idx = np.floor(np.asarray(t) * (N - 1)).astype(int)
    # VP: DDPM discretization.
    betas = np.linspace(0.1 / N, 20.0 / N, N)
    f, G = sd.VPSDE().discretize(x, t)
    b = betas[idx]
    assert _rel(f, (np.sqrt(1 - b)[:, None, None, None] - 1) * np.asarray(x)) < RTOL64
    assert _rel(G, np.sqrt(b)) < RTOL64
    # VE: SMLD discretization with sigma_{-1} = 0.
    sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), N))
    f, G = sd.VESDE().discretize(x, t)
    prev = np.where(idx == 0, 0.0, sigmas[np.maximum(idx - 1, 0)])
    assert np.all(np.asarray(f) == 0)
    assert _rel(G, np.sqrt(sigmas[idx] ** 2 - prev**2)) < RTOL64
    # t = 0 uses sigma_{-1} = 0, so G = sigma_0.
    _, G0 = sd.VESDE().discretize(x[:1], jnp.zeros((1,)))
    assert _rel(G0, [0.01]) < RTOL64
    # sub-VP: Euler-Maruyama with dt = 1/N.
    sde = sd.SubVPSDE()
    f, G = sde.discretize(x, t)
    drift, diffusion, _, _ = _vp_closed(np.asarray(x), np.asarray(t), sub=True)
    assert _rel(f, drift / N) < RTOL64
    assert _rel(G, diffusion * np.sqrt(1 / N)) < RTOL64


@pytest.mark.parametrize("cls", SDE_CLASSES)
@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_matches_formula(cls, probability_flow, x64, np_rng):
    sde = cls()
    x, t = _random_xt(np_rng)
    score_fn = lambda x, t: -x * (1.0 + t[:, None, None, None])  # any deterministic field
    rsde = sde.reverse(score_fn, probability_flow=probability_flow)
    c = 0.5 if probability_flow else 1.0
    drift, diffusion = sde.sde(x, t)
    r_drift, r_diffusion = rsde.sde(x, t)
    want = drift - c * diffusion[:, None, None, None] ** 2 * score_fn(x, t)
    assert _rel(r_drift, want) < RTOL64
    assert _rel(r_diffusion, 0 * diffusion if probability_flow else diffusion) < RTOL64
    f, G = sde.discretize(x, t)
    r_f, r_G = rsde.discretize(x, t)
    assert _rel(r_f, f - c * G[:, None, None, None] ** 2 * score_fn(x, t)) < RTOL64
    assert np.allclose(r_G, 0.0 if probability_flow else G, rtol=RTOL64, atol=0)
    assert rsde.T == sde.T and rsde.N == sde.N


def test_reference_fixture_values(fixtures_dir):
    """Float32 parity with score_sde_pytorch's SDE helpers (fixture README section 8)."""
    d = np.load(fixtures_dir / "score_sde_pytorch" / "sde" / "sde.npz")
    x, t = jnp.asarray(d["x"]), jnp.asarray(d["t"])
    sdes = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE()}
    # float32 round-off, relative to each tensor's largest magnitude (fixture README section 9).
    tol = 2e-6
    for k, sde in sdes.items():
        drift, diffusion = sde.sde(x, t)
        mean, std = sde.marginal_prob(x, t)
        assert _rel(drift, d[f"{k}_drift"]) < tol, k
        assert _rel(diffusion, d[f"{k}_diffusion"]) < tol, k
        assert _rel(mean, d[f"{k}_marginal_mean"]) < tol, k
        if k == "ve":
            assert _rel(std, d[f"{k}_marginal_std"]) < tol, k
        else:
            # The reference computes the VP std as sqrt(1 - exp(2m)) in float32, which loses
            # digits to cancellation near t = 0 (an absolute error of up to ~1.2e-7 in the
            # variance, so ~6e-8/std in the std: 0.6% at t = 1e-5). We use expm1, which keeps
            # full float32 accuracy: check both agree within that bound and ours is the one
            # that matches the float64 closed form.
            ref = d[f"{k}_marginal_std"]
            cancellation = 1.2e-7 / (2 * ref) if k == "vp" else 1.2e-7
            assert np.all(np.abs(np.asarray(std) - ref) <= cancellation + tol * ref.max()), k
            with jax.enable_x64(True):
                exact = np.asarray(
                    sde.marginal_prob(x.astype(jnp.float64), t.astype(jnp.float64))[1]
                )
            assert np.all(np.abs(np.asarray(std) - exact) <= 2e-7 * exact), k
        assert _rel(sde.prior_logp(x), d[f"{k}_prior_logp"]) < tol, k
    for k in ["vp", "ve"]:
        f, G = sdes[k].discretize(x, t)
        # f = sqrt(1 - beta) x - x is a float32 difference of two O(|x|) numbers: its
        # round-off is a few ulp of |x|, not of |f|.
        ulp_x = np.finfo(np.float32).eps * np.abs(d["x"]).max()
        assert np.max(np.abs(np.asarray(f) - d[f"{k}_discretize_f"])) <= 4 * ulp_x, k
        assert _rel(G, d[f"{k}_discretize_G"]) < tol, k
    assert _rel(sdes["vp"].discrete_betas, d["vp_discrete_betas"]) < tol
    assert _rel(sdes["vp"].sqrt_1m_alphas_cumprod, d["vp_sqrt_1m_alphas_cumprod"]) < tol
    assert _rel(sdes["ve"].discrete_sigmas, d["ve_discrete_sigmas"]) < tol


@pytest.mark.parametrize("cls", SDE_CLASSES)
def test_jit_vmap_and_float32(cls, np_rng):
    sde = cls()
    x, t = _random_xt(np_rng)
    x, t = x.astype(jnp.float32), t.astype(jnp.float32)

    def everything(sde, x, t):
        rsde = sde.reverse(lambda x, t: -x)
        return (
            sde.sde(x, t),
            sde.marginal_prob(x, t),
            sde.discretize(x, t),
            sde.prior_logp(x),
            rsde.sde(x, t),
            rsde.discretize(x, t),
        )

    eager = everything(sde, x, t)
    jitted = jax.jit(everything)(sde, x, t)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        assert a.dtype == jnp.float32
        # XLA fuses differently under jit (a few float32 ulp per op over chains of ~10 ops, and
        # VE's g^2 ~ 1e4 amplifies them: rtol 1e-5); DDPM's f = sqrt(1-beta) x - x is a difference of
        # O(|x|) numbers (|x| < 5 here), so allow a few float32 ulp of |x| absolutely.
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)
    # vmap over samples: per-sample calls with a batch of one agree with the batched call.
    per_sample = jax.vmap(lambda xi, ti: sde.marginal_prob(xi[None], ti[None])[1][0])(x, t)
    np.testing.assert_allclose(per_sample, eager[1][1], rtol=1e-6)
    # vmap over SDEs: the hyperparameters are PyTree leaves.
    lo, hi = {"VPSDE": "beta", "SubVPSDE": "beta", "VESDE": "sigma"}[cls.__name__] + "_min", None
    hi = lo.replace("_min", "_max")
    values = jnp.array([10.0, 20.0, 40.0])
    stacked = sde.replace(**{lo: jnp.full((3,), getattr(sde, lo)), hi: values})
    stds = jax.vmap(lambda s: s.marginal_prob(x, t)[1])(stacked)
    for i, v in enumerate(values):
        np.testing.assert_allclose(
            stds[i], sde.replace(**{hi: float(v)}).marginal_prob(x, t)[1], rtol=1e-6
        )


@pytest.mark.parametrize(
    "cls, kwargs, name",
    [
        (sd.VPSDE, {"beta_min": 0.0}, "beta_min"),
        (sd.VPSDE, {"beta_min": -0.1}, "beta_min"),
        (sd.VPSDE, {"beta_max": 0.05}, "beta_max"),
        (sd.VPSDE, {"beta_max": float("inf")}, "beta_max"),
        (sd.VPSDE, {"beta_min": float("nan")}, "beta_min"),
        (sd.VPSDE, {"N": 0}, "N"),
        (sd.VPSDE, {"N": 10.5}, "N"),
        (sd.SubVPSDE, {"beta_min": 0.0}, "beta_min"),
        (sd.SubVPSDE, {"beta_max": 0.1}, "beta_max"),
        (sd.SubVPSDE, {"N": -3}, "N"),
        (sd.VESDE, {"sigma_min": 0.0}, "sigma_min"),
        (sd.VESDE, {"sigma_max": 0.005}, "sigma_max"),
        (sd.VESDE, {"sigma_max": float("nan")}, "sigma_max"),
        (sd.VESDE, {"N": True}, "N"),
    ],
)
def test_bad_constructor_arguments_are_refused(cls, kwargs, name):
    with pytest.raises(ValueError, match=name) as info:
        cls(**kwargs)
    assert repr(list(kwargs.values())[0])[:3] in str(info.value)


@pytest.mark.parametrize("cls", SDE_CLASSES)
def test_time_shape_mismatch_is_refused(cls):
    sde = cls()
    x = jnp.ones((4, 3))
    for bad_t in [jnp.ones((3,)), jnp.ones((4, 1)), jnp.array(0.5)]:
        with pytest.raises(ValueError, match="t must have shape"):
            sde.sde(x, bad_t)
        with pytest.raises(ValueError, match="t must have shape"):
            jax.jit(sde.marginal_prob)(x, bad_t)


# --- Monte Carlo -------------------------------------------------------------------------


def _euler_maruyama_forward(sde, x0, t1, num_steps, key):
    """Integrates the forward SDE with diffrax's Euler-Maruyama (all paths in one state)."""
    b = x0.shape[0]

    def drift(t, y, args):
        return sde.sde(y, jnp.full((b,), t))[0]

    def diffusion(t, y, args):
        g = sde.sde(y, jnp.full((b,), t))[1]
        return lineax.DiagonalLinearOperator(jnp.broadcast_to(g[:, None], y.shape))

    bm = diffrax.UnsafeBrownianPath(shape=x0.shape, key=key)
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
    sol = diffrax.diffeqsolve(
        terms,
        diffrax.Euler(),
        0.0,
        t1,
        dt0=t1 / num_steps,
        y0=x0,
        max_steps=num_steps + 1,
        adjoint=diffrax.ForwardMode(),
    )
    return sol.ys[-1]


@pytest.mark.parametrize("cls", SDE_CLASSES)
@pytest.mark.parametrize("start", ["point", "gaussian"])
def test_euler_maruyama_paths_reach_marginals(cls, start, key):
    n, t1, steps = 40_000, 0.5, 400
    sde = cls()
    k0, k1 = jax.random.split(key)
    m0, s0 = 0.7, 0.3
    x0 = jnp.full((n, 1), m0)
    if start == "gaussian":
        x0 = x0 + s0 * jax.random.normal(k0, (n, 1))
    xt = jax.jit(_euler_maruyama_forward, static_argnums=(3,))(sde, x0, t1, steps, k1)
    mean_coeff, std = sde.marginal_prob(jnp.ones((1, 1)), jnp.array([t1]))
    a, std = float(mean_coeff[0, 0]), float(std[0])
    var = std**2
    if cls is sd.VESDE:
        # The reference's VE kernel omits the -sigma_min^2 of a path started at t=0 exactly.
        var -= 0.01**2
    want_mean = a * m0
    want_var = var + (a * s0) ** 2 * (start == "gaussian")
    got_mean, got_var = float(jnp.mean(xt)), float(jnp.var(xt))
    # Monte Carlo standard errors: sd/sqrt(n) for the mean, var*sqrt(2/n) for the variance.
    # 5 SE plus Euler-Maruyama's O(dt) weak bias (dt = 1.25e-3, drift rates <= 10 here:
    # relative bias ~ 1e-2 of the variance at most).
    se_mean = math.sqrt(want_var / n)
    se_var = want_var * math.sqrt(2 / n)
    assert abs(got_mean - want_mean) < 5 * se_mean + 1e-2 * abs(want_mean)
    assert abs(got_var - want_var) < 5 * se_var + 1e-2 * want_var


@pytest.mark.parametrize("cls", SDE_CLASSES)
def test_prior_logp_is_the_density_of_prior_sampling(cls, x64, key):
    sde = cls()
    scale = 50.0 if cls is sd.VESDE else 1.0
    # Normalization by quadrature in 1-D and 2-D (trapezoid over +-12 sd: tails < 1e-30).
    grid = np.linspace(-12 * scale, 12 * scale, 4001)
    p1 = np.exp(np.asarray(sde.prior_logp(jnp.asarray(grid)[:, None])))
    assert abs(np.trapezoid(p1, grid) - 1.0) < 1e-10
    g2 = np.linspace(-12 * scale, 12 * scale, 801)
    xx, yy = np.meshgrid(g2, g2, indexing="ij")
    z2 = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], 1))
    p2 = np.exp(np.asarray(sde.prior_logp(z2))).reshape(xx.shape)
    assert abs(np.trapezoid(np.trapezoid(p2, g2, axis=1), g2) - 1.0) < 1e-8
    # Moments by sampling: mean 0, variance scale^2, and the average log-density equals
    # minus the differential entropy d/2 (log(2 pi scale^2) + 1), all within 5 standard errors.
    n, d = 100_000, 3
    z = sde.prior_sampling(key, (n, d))
    assert z.shape == (n, d) and z.dtype == jnp.float64
    assert np.all(np.abs(np.mean(z, 0)) < 5 * scale / math.sqrt(n))
    assert np.all(np.abs(np.var(z, 0) / scale**2 - 1) < 5 * math.sqrt(2 / n))
    logp = np.asarray(sde.prior_logp(z))
    neg_entropy = -0.5 * d * (math.log(2 * math.pi * scale**2) + 1)
    assert abs(logp.mean() - neg_entropy) < 5 * logp.std() / math.sqrt(n)


# --- Gaussian data with the exact score ---------------------------------------------------


def _gaussian_data(dtype=jnp.float64):
    mean = jnp.array([0.5, -1.0, 0.25], dtype)
    L = jnp.array([[0.6, 0.0, 0.0], [0.3, 0.4, 0.0], [-0.2, 0.1, 0.5]], dtype)
    return sd.GaussianMixture(jnp.ones((1,), dtype), mean[None], (L @ L.T)[None]), mean, L


@pytest.mark.parametrize("cls", SDE_CLASSES)
def test_probability_flow_carries_data_moments_to_marginal_moments(cls, x64):
    """The probability-flow ODE of Gaussian data is affine, so pushing the mean and the
    mean plus each Cholesky column gives the transported mean and covariance exactly."""
    sde = cls()
    data, mean, L = _gaussian_data()
    rsde = sde.reverse(data.score_fn(sde), probability_flow=True)
    eps = 1e-3
    points = jnp.concatenate([mean[None], mean[None] + L.T], axis=0)  # (d+1, d)
    # Start from the data pushed to eps by the exact marginal map (a(eps) x + std noise is
    # the same Gaussian as a(eps) m + chol(a^2 S + std^2 I) z).
    a_eps, std_eps = sde.marginal_prob(jnp.ones((1, 1)), jnp.array([eps]))
    cov_eps = a_eps[0, 0] ** 2 * (L @ L.T) + std_eps[0] ** 2 * jnp.eye(3)
    L_eps = jnp.linalg.cholesky(cov_eps)
    y0 = jnp.concatenate([a_eps[0, 0] * mean[None], a_eps[0, 0] * mean[None] + L_eps.T], 0)
    ts = jnp.array([0.1, 0.4, 0.7, 1.0])

    def vf(t, y, args):
        return rsde.sde(y, jnp.full((y.shape[0],), t))[0]

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        diffrax.Tsit5(),
        eps,
        1.0,
        dt0=1e-3,
        y0=y0,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10),
        max_steps=100_000,
    )
    del points
    for i, t in enumerate(ts):
        y = sol.ys[i]
        got_mean = y[0]
        cols = (y[1:] - y[0]).T
        got_cov = cols @ cols.T
        a, std = sde.marginal_prob(jnp.ones((1, 1)), jnp.array([t]))
        want_mean = a[0, 0] * mean
        want_cov = a[0, 0] ** 2 * (L @ L.T) + std[0] ** 2 * jnp.eye(3)
        # Tolerance: the adaptive solve at rtol=atol=1e-10 over O(1..2500) quantities.
        np.testing.assert_allclose(got_mean, want_mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got_cov, want_cov, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "sde", [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE(sigma_min=0.01, sigma_max=10.0)], ids=str
)
def test_reverse_sde_recovers_data_mean_and_covariance(sde, key):
    data, mean, L = _gaussian_data(jnp.float32)
    n, steps, eps = 20_000, 1000, 1e-3
    score_fn = data.score_fn(sde)
    rsde = sde.reverse(score_fn)
    k_prior, k_steps = jax.random.split(key)
    ts = jnp.linspace(sde.T, eps, steps + 1)

    @jax.jit
    def run(x, k_steps):
        def step(x, inputs):
            t, t_next, k = inputs
            dt = t - t_next
            tb = jnp.full((n,), t)
            drift, g = rsde.sde(x, tb)
            z = jax.random.normal(k, x.shape)
            return x - drift * dt + g[:, None] * jnp.sqrt(dt) * z, None

        keys = jax.random.split(k_steps, steps)
        x, _ = jax.lax.scan(step, x, (ts[:-1], ts[1:], keys))
        return x

    x = run(sde.prior_sampling(k_prior, (n, 3)), k_steps)
    a, std = sde.marginal_prob(jnp.ones((1, 1)), jnp.array([eps]))
    want_cov = a[0, 0] ** 2 * (L @ L.T) + std[0] ** 2 * jnp.eye(3)
    got_mean = jnp.mean(x, 0)
    got_cov = jnp.cov(x.T)
    # Monte Carlo: the mean's SE is sqrt(diag cov / n) ~ 0.005; covariance entries have SE
    # ~ sqrt((S_ii S_jj + S_ij^2)/n) <= 0.0035. Allow 5 SE plus the O(dt) bias of 1000
    # Euler-Maruyama steps (~1e-2 relative near t = eps for VP, where beta is largest).
    np.testing.assert_allclose(got_mean, a[0, 0] * mean, atol=0.03)
    np.testing.assert_allclose(got_cov, want_cov, atol=0.03)


class _CollidingKey:
    """A dictionary key with one hash for all: lookups decide by the structures' equality alone,
    as a jit cache does when two keys meet in one hash bucket."""

    def __init__(self, treedef):
        self.treedef = treedef

    def __hash__(self):
        return 0

    def __eq__(self, other):
        return self.treedef == other.treedef


def test_sde_structures_name_their_class():
    # With flax.struct.dataclass the three structures compared equal (same leaf count, same N),
    # and one run of the CI script's Euler-Maruyama test above got VP's program for sub-VP.
    sdes = [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE()]
    cache = {_CollidingKey(jax.tree.structure(s)): type(s) for s in sdes}
    assert len(cache) == 3
    for s in sdes:
        assert cache[_CollidingKey(jax.tree.structure(s))] is type(s)
        assert jax.tree.structure(s) == jax.tree.structure(s.replace(N=s.N))
        assert jax.tree.structure(s) != jax.tree.structure(s.replace(N=s.N + 1))
        # leaves, key paths and a round trip (unflattening runs the constructor's checks)
        assert jax.tree.map(lambda v: v, s) == s
        assert len(jax.tree_util.tree_flatten_with_path(s)[0]) == 2
    rev = [s.reverse(lambda x, t: -x) for s in sdes]
    assert len({_CollidingKey(jax.tree.structure(r)) for r in rev}) == 3
    # One jitted function traced for each class returns each class's own diffusion.
    g = jax.jit(lambda s, x, t: s.sde(x, t)[1])
    x, t = jnp.zeros((1, 1)), jnp.full((1,), 0.5)
    for s in sdes * 2:
        np.testing.assert_allclose(g(s, x, t), s.sde(x, t)[1], rtol=1e-6)


def test_pytree_dataclass_refuses_fields_the_constructor_cannot_take():
    import dataclasses

    from scoresde import pytree_dataclass

    class Bad:
        x: float = 1.0
        cache: int = dataclasses.field(default=0, init=False)

    with pytest.raises(TypeError, match=r"Bad.*init=False fields \['cache'\]"):
        pytree_dataclass.dataclass(Bad)
