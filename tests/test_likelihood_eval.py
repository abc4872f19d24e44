"""Tests of the dataset bits/dim evaluation: coverage, the known entropy, determinism, resume.

The data are 8-bit images uniform over 64 levels (entropy 6 bits per pixel), whose
dequantized density is uniform on a box with exactly known diffused marginals (helpers in
``test_likelihood.py``), so the evaluation's mean must be 6 bits plus a tiny, computed edge term.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_likelihood import LEVEL_LO, NUM_LEVELS, box_score_fn, expected_box_bits_per_dim

import scoresde as sd
from scoresde import likelihood_eval

SDE = sd.VPSDE()
BOX_LO, BOX_HI = LEVEL_LO / 256, (LEVEL_LO + NUM_LEVELS) / 256  # non-centered data in [0, 1]
SCORE_FN = box_score_fn(SDE, BOX_LO, BOX_HI)  # one object: repeated runs reuse the compile
# 203 examples in batches of 16: 12 full batches and a last one of 11 (padded with 5 copies).
NUM_EXAMPLES, BATCH_SIZE, NUM_REPEATS, SEED = 203, 16, 2, 7
SETTINGS = dict(
    batch_size=BATCH_SIZE, num_repeats=NUM_REPEATS, seed=SEED, divergence="exact", progress=False
)


def _images():
    rng = np.random.default_rng(20240611)
    shape = (NUM_EXAMPLES, 2, 2, 1)
    return rng.integers(LEVEL_LO, LEVEL_LO + NUM_LEVELS, shape).astype(np.uint8)


class RecordingSource:
    """``get_images(indices)`` that records every index it serves; can fail on a given call."""

    def __init__(self, images, fail_on_call=None):
        self.images, self.fail_on_call, self.calls, self.served = images, fail_on_call, 0, []

    def __call__(self, indices):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated pre-emption")
        self.served.append(np.asarray(indices).copy())
        return self.images[indices]


@pytest.fixture(scope="module")
def full_run():
    images = _images()
    source = RecordingSource(images)
    result = sd.evaluate_bits_per_dim(SDE, SCORE_FN, source, num_examples=NUM_EXAMPLES, **SETTINGS)
    return images, source, result


def test_every_example_exactly_once_per_repeat(full_run):
    _, source, result = full_run
    served = np.concatenate(source.served)
    # Every index is fetched exactly once per repeat; the padding reuses fetched images.
    counts = np.bincount(served, minlength=NUM_EXAMPLES)
    np.testing.assert_array_equal(counts, np.full(NUM_EXAMPLES, NUM_REPEATS))
    assert result.bpd.shape == result.nfe.shape == (NUM_REPEATS, NUM_EXAMPLES)
    assert np.all(np.isfinite(result.bpd)) and np.all(result.nfe > 0)
    # Each repeat draws fresh dequantization noise.
    assert not np.array_equal(result.bpd[0], result.bpd[1])
    np.testing.assert_allclose(result.repeat_means, result.bpd.mean(1))
    np.testing.assert_allclose(result.mean, result.bpd.mean())


def test_mean_is_the_known_entropy(full_run):
    _, _, result = full_run
    expected = expected_box_bits_per_dim(SDE, BOX_LO, BOX_HI, centered=False)
    # 6 bits of discrete entropy plus the eps-smoothed box edges (< 0.01 bit).
    assert 6.0 < expected < 6.01
    # Within 4 reported standard errors, +2e-4 for the float32 rtol = 1e-5 solves.
    assert abs(result.mean - expected) < 4 * result.stderr + 2e-4, (result, expected)
    # stderr is the spread of per-example means over sqrt(N).
    per_example = result.bpd.mean(0)
    np.testing.assert_allclose(
        result.stderr, per_example.std(ddof=1) / np.sqrt(NUM_EXAMPLES), rtol=1e-12
    )


def test_deterministic_for_a_seed(full_run):
    images, _, result = full_run
    again = sd.evaluate_bits_per_dim(SDE, SCORE_FN, images, **SETTINGS)
    np.testing.assert_array_equal(again.bpd, result.bpd)
    other = sd.evaluate_bits_per_dim(SDE, SCORE_FN, images, **{**SETTINGS, "seed": SEED + 1})
    assert not np.array_equal(other.bpd, result.bpd)


def test_resume_after_interruption_gives_the_same_result(full_run, tmp_path):
    images, _, result = full_run
    state_dir = tmp_path / "bpd"
    # Fail on the 20th fetch: the first is the shape probe (batch 0, reused), so 19 batches
    # (13 of repeat 0, 6 of repeat 1) finish before the pre-emption.
    failing = RecordingSource(images, fail_on_call=20)
    with pytest.raises(KeyboardInterrupt):
        sd.evaluate_bits_per_dim(
            SDE, SCORE_FN, failing, num_examples=NUM_EXAMPLES, state_dir=state_dir, **SETTINGS
        )
    with open(state_dir / likelihood_eval.STATE_FILE) as f:
        state = json.load(f)
    assert state["batches_done"] == 19
    assert sorted(os.listdir(state_dir)) == [
        likelihood_eval.STATE_FILE,
        likelihood_eval.VALUES_FILE,
    ]

    resumed_source = RecordingSource(images)
    resumed = sd.evaluate_bits_per_dim(
        SDE, SCORE_FN, resumed_source, num_examples=NUM_EXAMPLES, state_dir=state_dir, **SETTINGS
    )
    np.testing.assert_array_equal(resumed.bpd, result.bpd)
    np.testing.assert_array_equal(resumed.nfe, result.nfe)
    assert resumed.mean == result.mean and resumed.stderr == result.stderr
    # Only the missing batches were computed (plus the shape probe).
    assert resumed_source.calls == 1 + (2 * 13 - 19)

    # A finished state is returned as is; other settings refuse to reuse the directory.
    done = sd.evaluate_bits_per_dim(SDE, SCORE_FN, images, state_dir=state_dir, **SETTINGS)
    np.testing.assert_array_equal(done.bpd, result.bpd)
    with pytest.raises(ValueError, match="different evaluation"):
        sd.evaluate_bits_per_dim(
            SDE, SCORE_FN, images, state_dir=state_dir, **{**SETTINGS, "batch_size": 8}
        )


def test_bad_arguments():
    images = _images()
    with pytest.raises(ValueError, match="num_examples"):
        sd.evaluate_bits_per_dim(SDE, SCORE_FN, lambda idx: images[idx], **SETTINGS)
    with pytest.raises(ValueError, match="8-bit"):
        sd.evaluate_bits_per_dim(SDE, SCORE_FN, images / 255.0, **SETTINGS)
    with pytest.raises(ValueError, match="noise"):
        sd.evaluate_bits_per_dim(SDE, SCORE_FN, images, noise=np.zeros(3), **SETTINGS)
    with pytest.raises(ValueError, match="batch_size"):
        sd.evaluate_bits_per_dim(SDE, SCORE_FN, images, **{**SETTINGS, "batch_size": 0})
    with pytest.raises(ValueError, match="multiple of the number of devices"):
        sd.evaluate_bits_per_dim(
            SDE, SCORE_FN, images, devices=jax.devices() * 2, **{**SETTINGS, "batch_size": 3}
        )


def smooth_score_fn(x, t):
    """A smooth made-up score: float32 code that compiles the same sharded or not."""
    return -x * jnp.cos(x) / (0.1 + t[:, None, None, None])


_TWO_DEVICE_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    import jax
    assert jax.local_device_count() == 2, jax.local_devices()
    from test_likelihood_eval import SDE, SETTINGS, _images, smooth_score_fn
    import scoresde as sd
    res = sd.evaluate_bits_per_dim(SDE, smooth_score_fn, _images()[:37], **{{**SETTINGS,
                                   "batch_size": 10}})
    np.save({out!r}, res.bpd)
    """
)


@pytest.mark.slow  # a fresh process and three compiles: ~40 s on 2 busy CPU cores
def test_two_devices_give_the_same_per_example_values(tmp_path):
    # Sharded over 2 (forced host) devices, each example's bits/dim is the same as on one
    # device: per-example noise and per-sample solves.
    out = str(tmp_path / "bpd.npy")
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    script = _TWO_DEVICE_SCRIPT.format(tests=tests, out=out)
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=600)
    two = np.load(out)
    images = _images()[:37]
    # One device with the same per-device batch (5) and another batch size (3): the padding
    # and the batch mates differ, every example's value is bitwise the same. (With the box
    # score, whose erf-based float32 code XLA fuses differently when sharded, values agree
    # to the solver tolerance, ~1e-4 nats, only.)
    for batch_size in (5, 3):
        one = sd.evaluate_bits_per_dim(
            SDE, smooth_score_fn, images, **{**SETTINGS, "batch_size": batch_size}
        )
        np.testing.assert_array_equal(two, one.bpd)
