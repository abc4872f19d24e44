"""Bits/dim of a whole dataset split: every example, repeated, sharded, resumable.

:func:`evaluate_bits_per_dim` runs :func:`scoresde.likelihood.bits_per_dim` over every example
of a split ``num_repeats`` times (the paper uses 5 repeats on the CIFAR-10 test set) and
reports the mean and its standard error. Unlike the reference's evaluation loop it never drops
the last, partial batch: that batch is padded with copies of its last image and the padding
is masked out, so each example counts exactly once per repeat.

Determinism: the dequantization noise and the Hutchinson probes of example ``i`` in repeat
``r`` come from ``fold_in(fold_in(key(seed), r), i)``, and each sample has its own adaptive ODE
solve (``per_sample=True``, the default of :func:`scoresde.log_likelihood`), so an example's
bits/dim does not depend on the batch it lands in, on padding, or on the device that runs it.

Sharding: each batch is split over the given devices (default: all local devices) with
:func:`jax.shard_map`; the likelihood code itself has no ``pmap``. For several hosts, give each
process its own slice of the data and combine the returned per-example arrays.

Pre-emption: with ``state_dir``, progress is saved after every batch: the per-example results
in ``bpd_values.npz`` and a small JSON file ``bpd_state.json`` (what is done, and a fingerprint
of the settings), each written atomically (a temporary file, then :func:`os.replace`). Calling
again with the same ``state_dir`` and settings continues where it stopped and gives the same
numbers as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from scoresde.likelihood import (
    DIVERGENCES,
    bits_per_dim_from_logp,
    images_to_data,
    log_likelihood_per_sample_nfe,
)
from scoresde.sde import SDE, ScoreFn

#: File names inside ``state_dir``.
STATE_FILE = "bpd_state.json"
VALUES_FILE = "bpd_values.npz"
_STATE_FORMAT = 1
_AXIS = "batch"

ImageSource = np.ndarray | Callable[[np.ndarray], np.ndarray]
"""A uint8 array ``(N, H, W, C)``, or ``get_images(indices) -> (len(indices), H, W, C)``."""


@dataclasses.dataclass(frozen=True)
class DatasetBitsPerDim:
    """Bits/dim of a dataset split.

    Attributes:
      mean: mean bits/dim over all examples and repeats.
      stderr: standard error of ``mean`` over examples: the sample standard deviation (over
        examples) of each example's mean over repeats, divided by ``sqrt(N)``; NaN for N = 1.
      repeat_means: ``(R,)`` mean bits/dim of each repeat.
      bpd: ``(R, N)`` bits/dim of every example in every repeat.
      nfe: ``(R, N)`` drift evaluations of every example's own solve.
    """

    mean: float
    stderr: float
    repeat_means: np.ndarray
    bpd: np.ndarray
    nfe: np.ndarray

    @property
    def num_examples(self) -> int:
        return int(self.bpd.shape[1])

    @property
    def num_repeats(self) -> int:
        return int(self.bpd.shape[0])


# --------------------------------------------------------------------------------------------
# Inputs


def _as_source(images, num_examples) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    if callable(images):
        if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer):
            raise ValueError(
                "num_examples (an integer >= 1) is required when images is a callable "
                f"get_images(indices); got num_examples={num_examples!r}."
            )
        return images, int(num_examples)
    arr = images
    if not hasattr(arr, "shape") or not hasattr(arr, "__getitem__"):
        raise TypeError(
            "images must be a uint8 array (N, H, W, C) or a callable get_images(indices) "
            f"returning one, got {type(images).__name__}."
        )
    n = int(arr.shape[0]) if np.ndim(arr) >= 1 else 0
    if num_examples is not None and int(num_examples) != n:
        raise ValueError(
            f"num_examples={num_examples!r} does not match the {n} images given; omit it for "
            "arrays."
        )
    return (lambda idx: np.asarray(arr[idx])), n


def _fetch(source, indices: np.ndarray, image_shape) -> np.ndarray:
    batch = np.asarray(source(indices))
    expected = (len(indices), *image_shape) if image_shape is not None else None
    if batch.ndim < 2 or batch.shape[0] != len(indices):
        raise ValueError(
            f"images for {len(indices)} indices must have shape ({len(indices)}, H, W, C), "
            f"got {batch.shape}."
        )
    if expected is not None and batch.shape != expected:
        raise ValueError(f"images batch has shape {batch.shape}, expected {expected}.")
    if batch.dtype != np.uint8:
        if not (np.issubdtype(batch.dtype, np.integer) or np.issubdtype(batch.dtype, np.floating)):
            raise ValueError(f"images must be uint8-valued in [0, 255], got dtype {batch.dtype}.")
        if (
            not np.all(np.isfinite(batch))
            or np.any(batch != np.round(batch))
            or batch.min() < 0
            or batch.max() > 255
        ):
            raise ValueError(
                "images must hold 8-bit pixel values (integers in [0, 255]), got dtype "
                f"{batch.dtype} with values in [{batch.min()}, {batch.max()}]."
            )
        batch = batch.astype(np.uint8)
    return batch


# --------------------------------------------------------------------------------------------
# State on disk


def _atomic_write(path: str, write: Callable[[Any], None], mode: str) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _save(state_dir: str, state: dict, bpd: np.ndarray, nfe: np.ndarray) -> None:
    # Values first, then the pointer: a pointer never refers to values that are not on disk.
    _atomic_write(
        os.path.join(state_dir, VALUES_FILE), lambda f: np.savez(f, bpd=bpd, nfe=nfe), "wb"
    )
    _atomic_write(os.path.join(state_dir, STATE_FILE), lambda f: json.dump(state, f, indent=1), "w")


def _load(state_dir: str, fingerprint: dict, shape) -> tuple[dict, np.ndarray, np.ndarray] | None:
    state_path = os.path.join(state_dir, STATE_FILE)
    if not os.path.exists(state_path):
        return None
    with open(state_path) as f:
        state = json.load(f)
    if state.get("format") != _STATE_FORMAT or state.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{state_path} belongs to a different evaluation: saved settings "
            f"{state.get('fingerprint')} differ from the current {fingerprint}. Use another "
            "state_dir, or delete the files there to start over."
        )
    values_path = os.path.join(state_dir, VALUES_FILE)
    if not os.path.exists(values_path):
        raise ValueError(
            f"{state_path} exists but {values_path} is missing; delete both to restart."
        )
    with np.load(values_path) as values:
        bpd, nfe = values["bpd"], values["nfe"]
    if bpd.shape != shape or nfe.shape != shape:
        raise ValueError(f"{values_path} holds arrays of shape {bpd.shape}, expected {shape}.")
    return state, bpd, nfe


# --------------------------------------------------------------------------------------------
# The sharded step


def _example_noise(seed_key, repeat, indices, image_shape, divergence, n_probes, dtype):
    """Per-example dequantization noise and probes from ``fold_in(fold_in(key, r), i)``."""

    def one(i):
        k = jax.random.fold_in(jax.random.fold_in(seed_key, repeat), i)
        k_u, k_v = jax.random.split(k)
        u = jax.random.uniform(k_u, image_shape, dtype=dtype)
        if divergence == "rademacher":
            v = jax.random.rademacher(k_v, (n_probes, *image_shape), dtype=dtype)
        elif divergence == "gaussian":
            v = jax.random.normal(k_v, (n_probes, *image_shape), dtype=dtype)
        else:
            v = jnp.zeros((n_probes, 0), dtype)
        return u, v

    u, v = jax.vmap(one)(indices)
    return u, jnp.moveaxis(v, 1, 0)  # probes (n_probes, B, *image_shape)


def _local_step(sde, seed_key, images, indices, repeat, *, score_fn, centered, dequantize, options):
    """One device's share of a batch: per-example noise, then bits/dim and solve counts."""
    kwargs = dict(options)
    divergence = kwargs.pop("divergence", "rademacher")
    n_probes = kwargs.pop("n_probes", 1)
    dtype = jnp.result_type(float)
    image_shape = images.shape[1:]
    u, probes = _example_noise(
        seed_key, repeat[0], indices, image_shape, divergence, n_probes, dtype
    )
    x = images_to_data(images, u if dequantize else None, centered, dtype)
    logp, _, nfe = log_likelihood_per_sample_nfe(
        None,
        sde,
        score_fn,
        x,
        divergence,
        noise=None if divergence == "exact" else probes,
        n_probes=n_probes,
        **kwargs,
    )
    return bits_per_dim_from_logp(logp, math.prod(image_shape), centered), nfe.astype(jnp.int32)


# A module-level jitted function: repeated evaluations with the same score_fn and settings
# (e.g. resuming in the same process) reuse jax's compilation cache.
@functools.partial(
    jax.jit, static_argnames=("score_fn", "centered", "dequantize", "options", "mesh")
)
def _sharded_step(
    sde, seed_key, images, indices, repeat, *, score_fn, centered, dequantize, options, mesh
):
    local = functools.partial(
        _local_step,
        score_fn=score_fn,
        centered=centered,
        dequantize=dequantize,
        options=options,
    )
    spec = PartitionSpec(_AXIS)
    replicated = PartitionSpec()
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(replicated, replicated, spec, spec, replicated),
        out_specs=(spec, spec),
        check_vma=False,
    )(sde, seed_key, images, indices, repeat)


def _make_step(sde, score_fn, seed, centered, dequantize, mesh, likelihood_kwargs):
    options = tuple(sorted(likelihood_kwargs.items()))
    try:
        hash(options)
    except TypeError as err:
        raise TypeError(
            "likelihood_kwargs must be hashable (numbers, strings, diffrax solvers and "
            f"controllers): {err}"
        ) from err
    seed_key = jax.random.key(seed)

    def step(images, indices, repeat):
        return _sharded_step(
            sde,
            seed_key,
            images,
            indices,
            repeat,
            score_fn=score_fn,
            centered=bool(centered),
            dequantize=bool(dequantize),
            options=options,
            mesh=mesh,
        )

    return step


# --------------------------------------------------------------------------------------------
# Progress


class _Progress:
    """A tqdm bar when ``enabled`` (and tqdm is importable), else nothing."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc="bits/dim", unit="batch", file=sys.stderr
            )

    def update(self, mean: float, repeat: int) -> None:
        if self._bar is not None:
            self._bar.set_postfix(repeat=repeat, bpd=f"{mean:.4f}", refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# --------------------------------------------------------------------------------------------
# Public entry point


def _summarize(bpd: np.ndarray, nfe: np.ndarray) -> DatasetBitsPerDim:
    per_example = bpd.mean(axis=0)
    n = per_example.shape[0]
    stderr = float(np.std(per_example, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return DatasetBitsPerDim(
        mean=float(bpd.mean()),
        stderr=stderr,
        repeat_means=bpd.mean(axis=1),
        bpd=bpd,
        nfe=nfe,
    )


def evaluate_bits_per_dim(
    sde: SDE,
    score_fn: ScoreFn,
    images: ImageSource,
    *,
    batch_size: int,
    num_repeats: int = 1,
    seed: int = 0,
    centered: bool = False,
    dequantize: bool = True,
    num_examples: int | None = None,
    state_dir: str | os.PathLike | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
    **likelihood_kwargs: Any,
) -> DatasetBitsPerDim:
    r"""Bits/dim of every example of a split, ``num_repeats`` times; mean and standard error.

    For examples :math:`k_i` and repeats :math:`r`, computes
    :math:`b_{ri} = \text{bpd}(k_i; u_{ri}, v_{ri})` with :func:`scoresde.bits_per_dim`
    (fresh dequantization noise :math:`u` and probes :math:`v` each repeat) and reports
    :math:`\bar b = \frac{1}{RN}\sum_{r,i} b_{ri}` with the standard error
    :math:`\mathrm{sd}_i(\bar b_i)/\sqrt N` of the per-example means :math:`\bar b_i`.

    Args:
      sde: the forward SDE.
      score_fn: ``score_fn(x, t)`` of a model of data in the space set by ``centered``.
      images: a uint8 array ``(N, H, W, C)``, or a callable ``get_images(indices)`` returning
        the uint8 images at the given integer indices (then ``num_examples`` is required).
      batch_size: images per step, split evenly over the devices (a multiple of their number).
      num_repeats: number of passes over the split (the paper uses 5).
      seed: seed of the per-example noise; the same seed gives the same numbers.
      centered: the model's data space is ``[-1, 1]`` (offset 7) instead of ``[0, 1]`` (8).
      dequantize: uniform dequantization (default), see :func:`scoresde.bits_per_dim`.
      num_examples: the split size when ``images`` is a callable.
      state_dir: directory for the resumable state; None keeps nothing on disk.
      devices: devices to shard each batch over; default ``jax.local_devices()``.
      progress: show a progress bar (tqdm) on stderr.
      **likelihood_kwargs: passed to :func:`scoresde.log_likelihood` (``divergence``,
        ``n_probes``, ``rtol``, ``atol``, ``eps``, ``solver``, ``per_sample``, ...), except
        ``noise`` (drawn per example here).

    Returns:
      A :class:`DatasetBitsPerDim`.

    Example:
      >>> import numpy as np, scoresde as sd
      >>> images = np.random.default_rng(0).integers(0, 256, (3, 2, 2, 1), dtype=np.uint8)
      >>> res = sd.evaluate_bits_per_dim(sd.VPSDE(), lambda x, t: -x, images, batch_size=2,
      ...                                num_repeats=2, divergence="exact", progress=False)
      >>> res.bpd.shape, bool(np.isfinite(res.mean))
      ((2, 3), True)

    Reference: Song et al. 2021, Table 2 and App. D.2 (bits/dim on CIFAR-10 with 5 repeats).
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE (VPSDE, SubVPSDE, VESDE), got {sde!r}.")
    for name, value in (("batch_size", batch_size), ("num_repeats", num_repeats)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {name}={value!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an integer, got seed={seed!r}.")
    if "noise" in likelihood_kwargs or "key" in likelihood_kwargs:
        raise ValueError(
            "evaluate_bits_per_dim draws the probes per example from seed; do not pass noise "
            "or key."
        )
    divergence = likelihood_kwargs.get("divergence", "rademacher")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got divergence={divergence!r}.")
    source, n = _as_source(images, num_examples)
    if n < 1:
        raise ValueError(f"the split must hold at least one example, got {n}.")
    devices = list(jax.local_devices() if devices is None else devices)
    if batch_size % len(devices):
        raise ValueError(
            f"batch_size={batch_size} must be a multiple of the number of devices "
            f"({len(devices)}) so that every device gets an equal share."
        )

    num_batches = -(-n // batch_size)
    first = _fetch(source, np.arange(min(batch_size, n)), None)
    image_shape = tuple(first.shape[1:])
    shape = (int(num_repeats), n)
    fingerprint = {
        "num_examples": n,
        "image_shape": list(image_shape),
        "batch_size": int(batch_size),
        "num_repeats": int(num_repeats),
        "seed": int(seed),
        "centered": bool(centered),
        "dequantize": bool(dequantize),
        "num_devices": len(devices),
        "sde": repr(sde),
        "likelihood": {k: repr(v) for k, v in sorted(likelihood_kwargs.items())},
    }

    bpd = np.full(shape, np.nan)
    nfe = np.full(shape, -1, dtype=np.int64)
    done = 0  # batches finished, over all repeats
    if state_dir is not None:
        state_dir = os.fspath(state_dir)
        os.makedirs(state_dir, exist_ok=True)
        loaded = _load(state_dir, fingerprint, shape)
        if loaded is not None:
            state, bpd, nfe = loaded
            done = int(state["batches_done"])
    total = num_batches * int(num_repeats)
    if done >= total:
        return _summarize(bpd, nfe)

    mesh = Mesh(np.asarray(devices), (_AXIS,))
    step = _make_step(sde, score_fn, int(seed), centered, dequantize, mesh, likelihood_kwargs)
    bar = _Progress(progress, total, done)
    try:
        while done < total:
            repeat, b = divmod(done, num_batches)
            valid = np.arange(b * batch_size, min((b + 1) * batch_size, n))
            if first is not None and done == 0:
                batch = first  # the images fetched above to learn the shape
            else:
                batch = _fetch(source, valid, image_shape)
            first = None
            pad = batch_size - len(valid)
            indices = np.concatenate([valid, np.full(pad, valid[-1])]).astype(np.int32)
            if pad:
                batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
            out_bpd, out_nfe = step(batch, indices, np.full((1,), repeat, np.int32))
            bpd[repeat, valid] = np.asarray(out_bpd, np.float64)[: len(valid)]
            nfe[repeat, valid] = np.asarray(out_nfe)[: len(valid)]
            done += 1
            if state_dir is not None:
                state = {
                    "format": _STATE_FORMAT,
                    "fingerprint": fingerprint,
                    "batches_done": done,
                    "num_batches_total": total,
                }
                _save(state_dir, state, bpd, nfe)
            seen = bpd[~np.isnan(bpd)]
            bar.update(float(seen.mean()), repeat)
    finally:
        bar.close()
    return _summarize(bpd, nfe)


__all__ = ["DatasetBitsPerDim", "evaluate_bits_per_dim"]
