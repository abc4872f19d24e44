"""Controllable generation: inpainting, colorization, classifier guidance (exact mixtures).

Replacement-based inpainting/colorization is exact only when the known part determines the
mode; the mixtures here separate the modes mostly along the known components, so each
sample lands in the mode its known part selects (checked to 99%), where the unknown part
follows that component.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from sampling_helpers import (
    N_SE,
    ScoreCallCounter,
    expected_mode_stats,
    isotropic_score_fn,
    mixture_2d,
)

import scoresde as sd


def test_inpaint_known_entries_exact_and_unknown_follow_the_mode(key):
    # modes (-3, -1) and (3, 1), std 0.2: the known x_0 = 3 selects mode 1, x_1 ~ N(1, .2^2)
    gm = sd.GaussianMixture.isotropic(
        jnp.array([0.5, 0.5]), jnp.array([[-3.0, -1.0], [3.0, 1.0]]), 0.2
    )
    sde = sd.VPSDE(N=200)
    n = 1000
    data = jnp.tile(jnp.array([[3.0, 0.0]]), (n, 1))
    mask = jnp.array([[1.0, 0.0]])
    x, nfe = sd.sample_inpaint(key, sde, isotropic_score_fn(gm, sde), data, mask, corrector="ald")
    x = np.asarray(x)
    assert np.all(x[:, 0] == 3.0)
    assert np.mean(np.abs(x[:, 1] - 1.0) < 1.0) > 0.99
    _, std = expected_mode_stats(gm, sde, denoise=True)
    # MC: 5 SE of the mean; spread within 10% (as the unconditional samplers)
    assert abs(x[:, 1].mean() - 1.0) < N_SE * std / np.sqrt(n) + 0.02
    assert abs(x[:, 1].std() / std - 1) < 0.1
    assert int(nfe) == 199 * 2 + 1


def test_colorize_keeps_gray_and_recovers_colors(key):
    # RGB modes with grays +1.5 / -1.5 and small chroma: the gray picks the mode
    means = jnp.array([[1.8, 1.5, 1.2], [-1.8, -1.5, -1.2]])
    gm = sd.GaussianMixture.isotropic(jnp.array([0.5, 0.5]), means, 0.1, event_shape=(1, 1, 3))
    sde = sd.VESDE(sigma_min=0.01, sigma_max=10.0, N=200)
    gray = jnp.full((500, 1, 1, 1), 1.5)
    x, _ = sd.sample_colorize(key, sde, isotropic_score_fn(gm, sde), gray)
    x = np.asarray(x).reshape(-1, 3)
    np.testing.assert_allclose(x.mean(-1), 1.5, atol=1e-5)  # exact up to float32 rounding
    _, std = expected_mode_stats(gm, sde, denoise=True)
    # chroma is sampled: per-channel mean within 5 SE (+0.02 allowance) of the mode's colour
    np.testing.assert_allclose(x.mean(0), [1.8, 1.5, 1.2], atol=N_SE * std / np.sqrt(500) + 0.02)


def test_colorization_matrix_decouples_gray():
    M = sd.colorization_matrix()
    np.testing.assert_allclose(M @ M.T, np.eye(3), atol=1e-6)
    rgb = jnp.array([[0.2, 0.5, 0.8]])
    np.testing.assert_allclose((rgb @ M)[0, 0], np.sqrt(3) * 0.5, rtol=1e-6)


def test_class_conditional_exact_guidance_samples_one_component(key):
    """With grad log p(y|x,t) = s_y - s (exact) and scale 1, samples follow component y."""
    gm = mixture_2d()
    sde = sd.VESDE(sigma_min=0.01, sigma_max=20.0, N=200)
    components = [
        sd.GaussianMixture.isotropic(jnp.array([1.0]), gm.means[k : k + 1], 0.2) for k in range(2)
    ]
    score = isotropic_score_fn(gm, sde)

    def grad_log_likelihood(x, t, y):
        s_y = jnp.where(
            (y == 0)[:, None],
            isotropic_score_fn(components[0], sde)(x, t),
            isotropic_score_fn(components[1], sde)(x, t),
        )
        return s_y - score(x, t)

    labels = jnp.array([0, 1] * 500)
    counter = ScoreCallCounter(score)
    x, nfe = sd.sample_class_conditional(
        key,
        sde,
        counter,
        (1000, 2),
        grad_log_likelihood,
        labels,
        predictor="euler_maruyama",
        corrector="none",
    )
    x = np.asarray(x)
    means, std = expected_mode_stats(gm, sde, denoise=True)
    for k in range(2):
        xk = x[np.asarray(labels) == k]
        np.testing.assert_allclose(xk.mean(0), means[k], atol=N_SE * std / np.sqrt(500))
        assert abs(xk.std(0).mean() / std - 1) < 0.1
    assert int(nfe) == counter.count() == 200
