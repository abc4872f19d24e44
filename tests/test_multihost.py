"""Data parallelism across devices and hosts, in subprocesses with forced CPU devices.

- one device vs 4 devices (``--xla_force_host_platform_device_count=4``): the same global
  batches give the same parameters after several steps, to float32 rounding;
- two processes on loopback joined by ``jax.distributed`` (2 CPU devices each, each
  feeding only its own rows) give the same losses as one process with 4 devices.

The three workers run concurrently; each is bounded by a timeout and killed on failure.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).parent / "workers" / "multihost_worker.py"
TIMEOUT = 300  # seconds per worker; generous for a loaded machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _spawn(args: list[str], n_devices: int, log: pathlib.Path) -> subprocess.Popen:
    # stderr goes to a file: a full pipe would block a worker inside a collective
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, str(WORKER), *args], env=_env(n_devices), stderr=f, text=True
        )


def _finish(procs: dict[str, subprocess.Popen], out: pathlib.Path) -> None:
    try:
        for name, proc in procs.items():
            proc.wait(timeout=TIMEOUT)
            err = (out / f"{name}.log").read_text()
            assert proc.returncode == 0, f"{name} failed:\n{err[-4000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _env(n_devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("multihost")
    port = _free_port()
    procs = {"single": _spawn(["single", str(out / "single.npz")], 4, out / "single.log")}
    for pid in (0, 1):
        args = ["proc", str(out / f"proc{pid}.npz"), str(port), str(pid)]
        procs[f"proc{pid}"] = _spawn(args, 2, out / f"proc{pid}.log")
    _finish(procs, out)
    return {name: dict(np.load(out / f"{name}.npz")) for name in procs}


def test_one_device_and_four_devices_give_the_same_parameters(runs):
    r = runs["single"]
    n_leaves = sum(k.startswith("p1_") for k in r)
    assert n_leaves > 0
    # the per-example noise is identical; only the order of the cross-device mean differs,
    # a float32 rounding (~1e-7 relative) that Adam carries into ~1e-7-sized parameter moves
    np.testing.assert_allclose(r["losses1"], r["losses4"], rtol=1e-6)
    for i in range(n_leaves):
        np.testing.assert_allclose(r[f"p1_{i}"], r[f"p4_{i}"], rtol=1e-5, atol=1e-6)


def test_two_processes_match_one_process_with_four_devices(runs):
    single = runs["single"]["losses4"]
    for pid in (0, 1):
        # same 4-device program and reduction tree, split over two hosts: float32 rounding
        np.testing.assert_allclose(runs[f"proc{pid}"]["losses"], single, rtol=1e-6)
    n_leaves = sum(k.startswith("p_") for k in runs["proc0"])
    for i in range(n_leaves):  # both hosts hold the same replicated parameters
        np.testing.assert_array_equal(runs["proc0"][f"p_{i}"], runs["proc1"][f"p_{i}"])
        np.testing.assert_allclose(runs["proc0"][f"p_{i}"], runs["single"][f"p4_{i}"], atol=1e-6)


def _pair(out, workdir, tag):
    port = _free_port()
    procs = {
        f"{tag}{pid}": _spawn(
            ["proc", str(out / f"{tag}{pid}.npz"), str(port), str(pid), str(workdir)],
            2,
            out / f"{tag}{pid}.log",
        )
        for pid in (0, 1)
    }
    _finish(procs, out)
    return [dict(np.load(out / f"{tag}{pid}.npz")) for pid in (0, 1)]


@pytest.mark.slow
def test_two_process_training_loop_checkpoints_and_resumes(runs, tmp_path):
    """run_training on 2 hosts: shared checkpoints written once, restored by both."""
    first = _pair(tmp_path, tmp_path / "work", "a")
    np.testing.assert_array_equal(first[0]["steps"], np.arange(1, 9))
    assert first[1]["steps"].size == 0  # only process 0 logs
    np.testing.assert_allclose(first[0]["losses"][:4], runs["single"]["losses4"], rtol=1e-6)
    ckpt = tmp_path / "work" / "checkpoints"
    assert sorted(p.name for p in (ckpt / "snapshots").iterdir()) == ["3", "6"]
    assert [p.name for p in (ckpt / "preemption").iterdir()] == ["8"]
    again = _pair(tmp_path, tmp_path / "work", "b")  # resumes at step 8: nothing left to do
    assert again[0]["steps"].size == 0
