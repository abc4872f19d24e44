"""Loaders: deterministic shuffling with a resumable position, device-shaped batches, eval masks.

The global batch of ``B`` examples is split over ``P`` processes (hosts) and, within each,
over ``D`` local devices: every batch a process sees is shaped ``(D, B / (P D), *example)``.

**Training** (:class:`TrainLoader`): epoch ``e`` visits the examples in the order of a
permutation drawn from ``(seed, e)``; global batch ``b`` of the epoch is the permutation's
slice ``[bB, (b+1)B)`` and process ``p`` takes the ``p``-th of its ``P`` equal parts. The
``N mod B`` examples left at the end of an epoch are skipped (they differ each epoch). Flips
and dequantization noise are drawn from ``(seed, e, b, p)``. So the batch at a position
``(epoch, index)`` is a pure function of the position, and ``state()`` / ``restore(state)``
(a small JSON-able dict) resume a run with the identical continuation.

**Evaluation** (:class:`EvalLoader`): one pass in order, ``ceil(N / B)`` batches; the last
one is padded and its boolean ``mask`` marks the real examples, so every example is seen
exactly once over all processes (the reference dropped the remainder).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from scoresde.data import transforms
from scoresde.data.sources import Source

#: Keys of a loader's ``state()`` dict.
STATE_KEYS = ("epoch", "index", "seed", "num_examples", "batch_size")


@dataclasses.dataclass(frozen=True)
class BatchGeometry:
    """How a global batch splits over processes and local devices.

    Attributes:
      batch_size: global batch size ``B`` (all processes, all devices).
      local_device_count: devices of this process ``D``.
      process_index: this process ``p``, ``0 <= p < P``.
      process_count: number of processes ``P``.
    """

    batch_size: int
    local_device_count: int = 1
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        for name in ("batch_size", "local_device_count", "process_count"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"BatchGeometry: {name} must be a positive int, got {value!r}.")
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(
                f"BatchGeometry: process_index must be in [0, {self.process_count}), got "
                f"{self.process_index!r}."
            )
        shards = self.process_count * self.local_device_count
        if self.batch_size % shards:
            raise ValueError(
                f"batch_size={self.batch_size} does not divide over {self.process_count} "
                f"process(es) x {self.local_device_count} local device(s) = {shards} shards; "
                f"use a multiple of {shards} (e.g. {shards * max(1, self.batch_size // shards)})."
            )

    @property
    def per_process(self) -> int:
        """Examples per process per batch, ``B / P``."""
        return self.batch_size // self.process_count

    @property
    def per_device(self) -> int:
        """Examples per device per batch, ``B / (P D)``."""
        return self.per_process // self.local_device_count

    def device_shape(self, element_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of this process's batch: ``(D, B / (P D), *element_shape)``."""
        return (self.local_device_count, self.per_device, *element_shape)


def batch_geometry(
    batch_size: int,
    local_device_count: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> BatchGeometry:
    """A :class:`BatchGeometry`, with JAX's device and process counts for arguments left out.

    Example:
      >>> batch_geometry(8, local_device_count=2, process_index=1, process_count=2).per_device
      2
    """
    if local_device_count is None or process_index is None or process_count is None:
        import jax

        local_device_count = (
            jax.local_device_count() if local_device_count is None else local_device_count
        )
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return BatchGeometry(batch_size, local_device_count, process_index, process_count)


def _batch_shape(g: BatchGeometry, element_shape, device_axis: bool) -> tuple[int, ...]:
    return g.device_shape(element_shape) if device_axis else (g.per_process, *element_shape)


def _gather(source: Source, indices: np.ndarray, pool) -> np.ndarray:
    get_batch = getattr(source, "get_batch", None)
    if get_batch is not None:
        return np.asarray(get_batch(indices))
    if pool is None:
        items = [source[int(i)] for i in indices]
    else:
        items = list(pool.map(lambda i: source[int(i)], indices))
    if not items:
        return np.zeros((0, *source.element_shape), source.dtype)
    return np.stack(items)


def _is_image_source(source: Source) -> bool:
    return np.dtype(source.dtype) == np.uint8 and len(source.element_shape) == 3


def _model_input(
    raw: np.ndarray,
    *,
    is_image: bool,
    centered: bool,
    noise_rng: np.random.Generator | None,
) -> np.ndarray:
    if not is_image:
        return raw.astype(np.float32)
    noise = None if noise_rng is None else noise_rng.random(raw.shape, dtype=np.float32)
    return transforms.scale(transforms.to_unit_interval(raw, noise), centered).astype(np.float32)


class TrainLoader:
    """Endless, shuffled, device-shaped training batches with a resumable position.

    Each ``next(loader)`` returns ``{"image": float32 (D, b, *example)}`` in the model's range
    (``[0, 1]``, or ``[-1, 1]`` when ``centered``), and for ``uint8`` image sources also
    ``"image_uint8"``: the same images (after the flip) as raw pixels. Non-image sources
    (e.g. 2-D toy points) pass through as ``float32`` without scaling.

    Args:
      source: a :class:`~scoresde.data.sources.Source`.
      batch_size: global batch size over all processes and devices.
      seed: seed of the shuffling, flips and dequantization noise.
      centered: scale images to ``[-1, 1]`` (``data.centered``).
      random_flip: flip images left-right with probability 1/2 (``data.random_flip``).
      uniform_dequantization: ``(x + u) / 256`` with ``u ~ U[0, 1)`` instead of ``x / 255``
        (``data.uniform_dequantization``).
      local_device_count, process_index, process_count: batch geometry; ``None`` asks JAX.
      num_workers: threads that read examples in parallel (0: read in the calling thread).
      device_axis: shape batches ``(D, b, *example)``; ``False`` gives this process's rows
        flat, ``(D b, *example)`` (for ``jit`` over a device mesh, where
        :func:`scoresde.process_batch_slice` gives the same rows).

    Example:
      >>> import numpy as np
      >>> from scoresde.data import ArraySource
      >>> src = ArraySource(np.zeros((10, 4, 4, 1), np.uint8))
      >>> loader = TrainLoader(src, 4, seed=0, local_device_count=2, process_index=0,
      ...                      process_count=1)
      >>> next(loader)["image"].shape
      (2, 2, 4, 4, 1)
      >>> loader.state()
      {'epoch': 0, 'index': 1, 'seed': 0, 'num_examples': 10, 'batch_size': 4}
    """

    def __init__(
        self,
        source: Source,
        batch_size: int,
        *,
        seed: int = 0,
        centered: bool = False,
        random_flip: bool = False,
        uniform_dequantization: bool = False,
        local_device_count: int | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        num_workers: int = 0,
        device_axis: bool = True,
    ):
        self.source = source
        self.geometry = batch_geometry(batch_size, local_device_count, process_index, process_count)
        self.device_axis = bool(device_axis)
        self.num_examples = len(source)
        if self.num_examples < batch_size:
            raise ValueError(
                f"TrainLoader: batch_size={batch_size} is larger than the dataset "
                f"({self.num_examples} examples)."
            )
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"TrainLoader: seed must be a non-negative int, got {seed!r}.")
        self.is_image = _is_image_source(source)
        if not self.is_image and (random_flip or uniform_dequantization):
            raise ValueError(
                "TrainLoader: random_flip and uniform_dequantization apply to uint8 HWC images "
                f"only; this source has dtype {source.dtype} and examples {source.element_shape}."
            )
        self.seed = int(seed)
        self.centered = bool(centered)
        self.random_flip = bool(random_flip)
        self.uniform_dequantization = bool(uniform_dequantization)
        self.steps_per_epoch = self.num_examples // batch_size
        self._epoch = 0
        self._index = 0
        self._perm_epoch = -1
        self._perm = np.empty(0, np.int64)
        self._pool = concurrent.futures.ThreadPoolExecutor(num_workers) if num_workers > 0 else None

    @property
    def batch_size(self) -> int:
        return self.geometry.batch_size

    def permutation(self, epoch: int) -> np.ndarray:
        """The order in which epoch ``epoch`` visits the examples (same on every process)."""
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng((self.seed, epoch)).permutation(self.num_examples)
            self._perm_epoch = epoch
        return self._perm

    def indices(self, epoch: int, index: int) -> np.ndarray:
        """Dataset indices of this process's share of global batch ``index`` of ``epoch``."""
        g = self.geometry
        start = index * g.batch_size + g.process_index * g.per_process
        return self.permutation(epoch)[start : start + g.per_process]

    def batch_at(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        """The batch at position ``(epoch, index)`` (a pure function of the position)."""
        if not 0 <= index < self.steps_per_epoch:
            raise ValueError(
                f"TrainLoader.batch_at: index must be in [0, {self.steps_per_epoch}), got {index}."
            )
        g = self.geometry
        raw = _gather(self.source, self.indices(epoch, index), self._pool)
        rng = np.random.default_rng((self.seed, epoch, index, g.process_index))
        if self.random_flip:
            raw = transforms.random_flip(raw, rng)
        noise_rng = rng if self.uniform_dequantization else None
        image = _model_input(
            raw, is_image=self.is_image, centered=self.centered, noise_rng=noise_rng
        )
        shape = _batch_shape(g, self.source.element_shape, self.device_axis)
        batch = {"image": image.reshape(shape)}
        if self.is_image:
            batch["image_uint8"] = raw.reshape(shape)
        return batch

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch_at(self._epoch, self._index)
        self._index += 1
        if self._index == self.steps_per_epoch:
            self._epoch, self._index = self._epoch + 1, 0
        return batch

    def batches(self, data_state: dict | None = None) -> Iterator[tuple[dict, dict]]:
        """``(batch, state after it)`` pairs, from ``data_state`` (``None``: the current one).

        This is the ``batches(data_state)`` contract of :func:`scoresde.run_training`.
        """
        if data_state is not None:
            self.restore(data_state)
        for batch in self:
            yield batch, self.state()

    def state(self) -> dict[str, int]:
        """The position of the next batch, as a JSON-able dict (store it in checkpoints)."""
        return {
            "epoch": self._epoch,
            "index": self._index,
            "seed": self.seed,
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continues from a position saved by :meth:`state`.

        Raises:
          ValueError: keys missing, or the saved seed, dataset size or batch size differ from
            this loader's (the continuation would not be the same).
        """
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"TrainLoader.restore: state lacks {missing}; got {dict(state)}.")
        mine = self.state()
        differ = {
            k: (state[k], mine[k])
            for k in ("seed", "num_examples", "batch_size")
            if int(state[k]) != mine[k]
        }
        if differ:
            raise ValueError(
                "TrainLoader.restore: the saved data state does not match this loader "
                f"(saved, now): {differ}. Use the same config (seed, dataset, batch size)."
            )
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index < self.steps_per_epoch:
            raise ValueError(
                f"TrainLoader.restore: position (epoch={epoch}, index={index}) out of range "
                f"(index < {self.steps_per_epoch})."
            )
        self._epoch, self._index = epoch, index


class EvalLoader:
    """One ordered pass over a split, padded to whole batches, with a mask of real examples.

    Iterating yields ``len(loader) = ceil(N / B)`` batches (the same count on every
    process), each ``{"image": float32 (D, b, *example), "mask": bool (D, b)}`` plus
    ``"image_uint8"`` for ``uint8`` image sources (what :func:`scoresde.bits_per_dim`
    takes). Padded slots repeat example 0 and have ``mask == False``. Over all processes
    and batches, every example appears exactly once with ``mask == True``.

    Args:
      source: a :class:`~scoresde.data.sources.Source`.
      batch_size: global batch size over all processes and devices.
      centered: scale images to ``[-1, 1]``.
      local_device_count, process_index, process_count: batch geometry; ``None`` asks JAX.
      num_workers: reader threads.
      device_axis: ``(D, b, ...)`` batches; ``False``: flat ``(D b, ...)`` rows.

    Example:
      >>> import numpy as np
      >>> from scoresde.data import ArraySource
      >>> src = ArraySource(np.zeros((5, 2, 2, 1), np.uint8))
      >>> loader = EvalLoader(src, 4, local_device_count=1, process_index=0, process_count=1)
      >>> [int(b["mask"].sum()) for b in loader]
      [4, 1]
    """

    def __init__(
        self,
        source: Source,
        batch_size: int,
        *,
        centered: bool = False,
        local_device_count: int | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        num_workers: int = 0,
        device_axis: bool = True,
    ):
        self.source = source
        self.geometry = batch_geometry(batch_size, local_device_count, process_index, process_count)
        self.device_axis = bool(device_axis)
        self.num_examples = len(source)
        if self.num_examples == 0:
            raise ValueError("EvalLoader: the source is empty.")
        self.centered = bool(centered)
        self.is_image = _is_image_source(source)
        self._pool = concurrent.futures.ThreadPoolExecutor(num_workers) if num_workers > 0 else None

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.geometry.batch_size)

    def batch_at(self, index: int) -> dict[str, np.ndarray]:
        """Batch ``index`` of the pass, ``0 <= index < len(self)``."""
        if not 0 <= index < len(self):
            raise ValueError(
                f"EvalLoader.batch_at: index must be in [0, {len(self)}), got {index}."
            )
        g = self.geometry
        start = index * g.batch_size + g.process_index * g.per_process
        positions = np.arange(start, start + g.per_process)
        mask = positions < self.num_examples
        raw = _gather(self.source, np.where(mask, positions, 0), self._pool)
        image = _model_input(raw, is_image=self.is_image, centered=self.centered, noise_rng=None)
        shape = _batch_shape(g, self.source.element_shape, self.device_axis)
        lead = len(shape) - len(self.source.element_shape)
        batch = {"image": image.reshape(shape), "mask": mask.reshape(shape[:lead])}
        if self.is_image:
            batch["image_uint8"] = raw.reshape(shape)
        return batch

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for index in range(len(self)):
            yield self.batch_at(index)
