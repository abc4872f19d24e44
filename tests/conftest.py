"""Shared pytest setup: deterministic keys, float64 on request, the reference fixtures.

- ``key``: a fresh ``jax.random.key`` derived from the test's node id, so a test's draws do
  not depend on which other tests ran before it.
- ``x64``: run the test with ``jax_enable_x64`` on (float64 arrays by default).
- ``fixtures_dir``: ``../shared/fixtures`` next to the checkout; tests that need it skip with
  a clear reason when it is absent.
"""

from __future__ import annotations

import os
import pathlib
import zlib

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(
    os.environ.get("SCORESDE_FIXTURES", REPO.parent / "shared" / "fixtures")
).resolve()


def _seed(nodeid: str) -> int:
    return zlib.crc32(nodeid.encode())


@pytest.fixture
def key(request) -> jax.Array:
    return jax.random.key(_seed(request.node.nodeid))


@pytest.fixture
def np_rng(request) -> np.random.Generator:
    return np.random.default_rng(_seed(request.node.nodeid))


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"reference fixtures not found at {FIXTURES} (set SCORESDE_FIXTURES)")
    return FIXTURES
