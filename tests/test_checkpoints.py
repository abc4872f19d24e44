"""Tests for scoresde.checkpoints: round trip, mismatches, damage, retention, kill-and-resume."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoresde as sd

WORKERS = pathlib.Path(__file__).parent / "workers"
sys.path.insert(0, str(WORKERS))
from tiny_setup import setup  # noqa: E402

SUBPROCESS_TIMEOUT = 300  # seconds; generous for a loaded CI machine


def _state(seed=0, width=3):
    opt = sd.make_optimizer(warmup=10)
    params = {"dense": {"kernel": jnp.arange(width * 2.0).reshape(width, 2) + seed}}
    state = sd.TrainState.create(params, opt, seed, model_state={"stats": {"mean": jnp.ones(2)}})
    return state.replace(step=jnp.asarray(seed, jnp.int32))


def _assert_same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_restores_every_leaf_and_the_data_state(tmp_path):
    state = _state(3)
    with sd.CheckpointManager(tmp_path) as mgr:
        assert mgr.restore(state) is None  # empty workdir
        mgr.save(state, {"epoch": 2, "index": 17})
        restored, data_state = mgr.restore(_state(0))
    _assert_same(restored, state)
    assert data_state == {"epoch": 2, "index": 17}
    assert (tmp_path / "checkpoints" / "preemption" / "3").is_dir()


def test_structure_and_shape_mismatches_are_listed(tmp_path):
    with sd.CheckpointManager(tmp_path) as mgr:
        mgr.save(_state(1))
        target = _state(0, width=4)
        target = target.replace(params={**target.params, "extra": jnp.zeros(1)})
        with pytest.raises(ValueError) as info:
            mgr.restore(target)
    message = str(info.value)
    assert "mismatches" in message
    assert (
        "['dense']['kernel']: checkpoint has shape (3, 2) float32, target has shape (4, 2)"
        in message
    )
    assert "['extra']: in the target state but not in the checkpoint" in message


def _corrupt_largest_file(directory: pathlib.Path) -> None:
    files = [p for p in directory.rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    for i in range(0, len(data), 7):
        data[i] ^= 0xFF
    biggest.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip_bytes", "delete_manifest", "truncate_state"])
def test_damaged_newest_checkpoint_falls_back_with_warning(tmp_path, damage):
    with sd.CheckpointManager(tmp_path) as mgr:
        mgr.save(_state(2), {"pos": 2}, snapshot=True)
        mgr.save(_state(4), {"pos": 4})
    newest = tmp_path / "checkpoints" / "preemption" / "4"
    if damage == "flip_bytes":
        _corrupt_largest_file(newest / "state")
    elif damage == "delete_manifest":
        for p in (newest / "manifest").iterdir():
            p.unlink()
    else:
        for p in (newest / "state").rglob("*"):
            if p.is_file():
                p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with sd.CheckpointManager(tmp_path) as mgr:
        with pytest.warns(sd.CheckpointWarning, match=str(newest)):
            restored, data_state = mgr.restore(_state(0))
        _assert_same(restored, _state(2))
        assert data_state == {"pos": 2}
        # the bad directory is moved aside, so later saves at step 4 and beyond work
        assert not newest.exists()
        assert any((tmp_path / "checkpoints" / "corrupt").iterdir())
        mgr.save(_state(4), {"pos": 4})
        assert mgr.latest_step() == 4


def test_half_written_checkpoint_is_ignored(tmp_path):
    """Orbax writes ``<step>.orbax-checkpoint-tmp*`` and renames it: a leftover is ignored."""
    with sd.CheckpointManager(tmp_path) as mgr:
        mgr.save(_state(2))
    partial = tmp_path / "checkpoints" / "preemption" / "9.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "junk").write_bytes(b"\x00" * 10)
    with sd.CheckpointManager(tmp_path) as mgr:
        assert mgr.latest_step() == 2
        restored, _ = mgr.restore(_state(0))
    _assert_same(restored, _state(2))


def test_retention_keeps_one_preemption_and_n_snapshots(tmp_path):
    with sd.CheckpointManager(tmp_path, keep_snapshots=2, async_save=False) as mgr:
        for s in (1, 2, 3):
            mgr.save(_state(s), snapshot=True)
        for s in (4, 5):
            mgr.save(_state(s))
        assert mgr.steps() == [(5, "preemption"), (3, "snapshots"), (2, "snapshots")]
    with pytest.raises(ValueError, match="keep_snapshots"):
        sd.CheckpointManager(tmp_path, keep_snapshots=0)
    with pytest.raises(TypeError, match="JSON"):
        with sd.CheckpointManager(tmp_path) as mgr:
            mgr.save(_state(6), {"bad": object()})


def test_optax_and_model_state_of_a_real_step_round_trip(tmp_path):
    state, step = setup(mesh=sd.data_mesh(jax.devices()[:1]))
    state = step.replicate(state)
    with sd.CheckpointManager(tmp_path) as mgr:
        mgr.save(state, {"next": 0})
        restored, _ = mgr.restore(setup()[0])
    _assert_same(restored, state)
    assert isinstance(restored.opt_state, type(state.opt_state))


# --------------------------------------------------------------------------------------
# kill-and-resume in subprocesses
# --------------------------------------------------------------------------------------


def _worker_env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _start(workdir, num_steps, losses_file, kill_at=-1, step_sleep=0.0):
    cmd = [
        sys.executable,
        str(WORKERS / "train_worker.py"),
        str(workdir),
        str(num_steps),
        str(losses_file),
        str(kill_at),
        str(step_sleep),
    ]
    log = open(f"{losses_file}.{time.time_ns()}.log", "w")  # a file: a full pipe would block
    proc = subprocess.Popen(cmd, env=_worker_env(), stderr=log, text=True)
    proc.log_path = log.name
    log.close()
    return proc


def _wait(proc, expect_killed=False):
    try:
        proc.wait(timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    err = pathlib.Path(proc.log_path).read_text()
    if expect_killed:
        assert proc.returncode == -signal.SIGKILL, err[-3000:]
    else:
        assert proc.returncode == 0, err[-3000:]


def _read_losses(path):
    """step -> loss (hex); a re-run step must reproduce the loss logged before the kill."""
    out = {}
    for line in pathlib.Path(path).read_text().splitlines():
        if line == "done":
            continue
        step, value = line.split()
        step = int(step)
        assert out.get(step, value) == value, f"step {step} differs after resume"
        out[step] = value
    return out


NUM_STEPS = 12


def _kill_and_resume(tmp_path, kill_points):
    reference = _start(tmp_path / "ref", NUM_STEPS, tmp_path / "ref.txt")
    losses = tmp_path / "run.txt"
    for kill_at in kill_points:
        _wait(_start(tmp_path / "run", NUM_STEPS, losses, kill_at=kill_at), expect_killed=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error", sd.CheckpointWarning)  # nothing may be damaged
            with sd.CheckpointManager(tmp_path / "run") as mgr:
                mgr.restore(setup()[0])
    _wait(_start(tmp_path / "run", NUM_STEPS, losses))
    _wait(reference)
    ref, run = _read_losses(tmp_path / "ref.txt"), _read_losses(losses)
    assert sorted(ref) == list(range(1, NUM_STEPS + 1))
    assert run == ref  # bit-identical float32 losses at every step


def test_sigkill_right_after_an_async_save_resumes_bit_identically(tmp_path):
    # step 6 is a pre-emption checkpoint (checkpoint_freq=3): the kill hits while it is
    # being written in the background
    _kill_and_resume(tmp_path, [6])


@pytest.mark.slow
def test_sigkill_at_several_points_resumes_bit_identically(tmp_path):
    # before any checkpoint, right after a snapshot (5), between checkpoints (8), at the end
    _kill_and_resume(tmp_path, [2, 5, 8, 11])


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_bit_identically(tmp_path):
    reference = _start(tmp_path / "ref", NUM_STEPS, tmp_path / "ref.txt")
    losses = tmp_path / "run.txt"
    rng = np.random.default_rng(0)

    def n_logged():
        return len(losses.read_text().splitlines()) if losses.exists() else 0

    for _ in range(3):
        before = n_logged()
        proc = _start(tmp_path / "run", NUM_STEPS, losses, step_sleep=0.2)
        # wait until it trains, then kill at a random moment (possibly mid-save)
        deadline = time.time() + SUBPROCESS_TIMEOUT
        while n_logged() <= before and proc.poll() is None:
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=SUBPROCESS_TIMEOUT)
    _wait(_start(tmp_path / "run", NUM_STEPS, losses))
    _wait(reference)
    assert _read_losses(losses) == _read_losses(tmp_path / "ref.txt")
