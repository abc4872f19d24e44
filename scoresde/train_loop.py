"""The training loop: resume, step, log, checkpoint, stop on a non-finite loss.

:func:`run_training` is what the ``scoresde train`` command calls once it has built the model,
the loss, the optimizer and the data pipeline from a config; it takes explicit arguments
only.

Data pipeline contract: ``batches(data_state)`` is called once with the data position
restored from the checkpoint (``None`` for a fresh run) and returns an iterator of
``(local_batch, data_state)`` pairs: this process's rows of one step's global batch (see
:func:`scoresde.process_batch_slice`) and the JSON-able position *after* that batch. The
position saved with a checkpoint is the one after the last batch the saved state was
trained on, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from scoresde.checkpoints import CheckpointManager
from scoresde.train import TrainState, TrainStep, _host_value, check_finite

BatchesFn = Callable[[dict | None], Iterator[tuple[Any, dict]]]
"""``batches(data_state) -> iterator of (local_batch, data_state_after)``."""

LogFn = Callable[[int, dict[str, float]], None]
"""``log_fn(step, metrics)``: called on process 0 after every update (1-based step)."""


def _check_freq(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"run_training: {name} must be an integer >= 1, got {name}={value!r}.")


def _crossed(before: int, after: int, freq: int) -> bool:
    return after // freq > before // freq


def run_training(
    state: TrainState,
    train_step: TrainStep,
    batches: BatchesFn,
    *,
    workdir: str | os.PathLike,
    num_steps: int,
    checkpoint_freq: int,
    snapshot_freq: int,
    keep_snapshots: int | None = None,
    log_fn: LogFn | None = None,
    async_checkpointing: bool = True,
) -> TrainState:
    """Trains until ``num_steps`` updates, resuming from ``workdir`` if it holds a checkpoint.

    Each call's metrics are checked on the host once the next call has been dispatched (so
    the device never idles while the host reads them; a checkpoint waits for its own
    state's check): a non-finite loss or gradient norm raises
    :class:`~scoresde.train.NonFiniteLossError` naming the step, after pending checkpoint
    writes finish, so the newest checkpoint on disk is the last good state. A pre-emption
    checkpoint (only the newest kept) is saved whenever the step count crosses a multiple
    of ``checkpoint_freq``, a permanent snapshot whenever it crosses a multiple of
    ``snapshot_freq``, and a pre-emption checkpoint at the end.
    With ``n_jitted_steps > 1`` a call may run past ``num_steps`` to the next multiple.

    Args:
      state: a fresh train state (the restore target when resuming; its values seed a
        fresh run).
      train_step: from :func:`scoresde.make_train_step`.
      batches: the data pipeline (module docstring).
      workdir: the run's directory (checkpoints in ``workdir/checkpoints``).
      num_steps: total number of updates of the run.
      checkpoint_freq: updates between pre-emption checkpoints.
      snapshot_freq: updates between permanent snapshots.
      keep_snapshots: permanent snapshots to keep (``None``: all).
      log_fn: ``log_fn(step, {"loss": ..., "grad_norm": ...})`` on process 0.
      async_checkpointing: write checkpoints in the background.

    Returns:
      The final train state (replicated on the step's mesh).

    Example:
      >>> import tempfile, jax, jax.numpy as jnp, numpy as np, optax, scoresde as sd
      >>> loss_fn = lambda p, ms, x, keys: (jnp.mean((x - p["w"]) ** 2), ms)
      >>> opt = optax.sgd(0.1)
      >>> step = sd.make_train_step(loss_fn, opt, mesh=sd.data_mesh(jax.devices()[:1]))
      >>> def batches(pos):
      ...     i = (pos or {"i": 0})["i"]
      ...     while True:
      ...         yield np.ones((4, 2), np.float32), {"i": i + 1}; i += 1
      >>> state = sd.TrainState.create({"w": jnp.zeros(2)}, opt, 0)
      >>> out = sd.run_training(state, step, batches, workdir=tempfile.mkdtemp(), num_steps=3,
      ...                checkpoint_freq=2, snapshot_freq=10)
      >>> int(out.step)
      3
    """
    _check_freq("num_steps", num_steps)
    _check_freq("checkpoint_freq", checkpoint_freq)
    _check_freq("snapshot_freq", snapshot_freq)
    if not isinstance(train_step, TrainStep):
        raise TypeError(
            "run_training: train_step must be a TrainStep from make_train_step, got "
            f"{type(train_step).__name__}."
        )
    n_per_call = train_step.n_jitted_steps
    primary = jax.process_index() == 0

    with CheckpointManager(
        workdir, keep_snapshots=keep_snapshots, async_save=async_checkpointing
    ) as manager:
        restored = manager.restore(state)
        data_state = None
        if restored is not None:
            state, data_state = restored
        state = train_step.replicate(state)
        step = int(_host_value(state.step))
        saved_step = step
        iterator = batches(data_state)

        def settle(first: int, metrics: Any) -> None:
            """Checks (and logs) the metrics of the call whose first update is ``first + 1``."""
            try:
                host = check_finite(first + 1, metrics)
            except FloatingPointError:
                manager.wait_until_finished()
                raise
            if primary and log_fn is not None:
                for i in range(n_per_call):
                    log_fn(first + i + 1, {k: float(v[i]) for k, v in host.items()})

        # A call's metrics are read only after the next call is dispatched, so the device
        # never waits for the host between steps; a checkpoint is written only after its
        # state's own metrics have passed the check.
        pending = None
        while step < num_steps:
            local = []
            for _ in range(n_per_call):
                batch, data_state = next(iterator)
                local.append(batch)
            if n_per_call > 1:
                local_batch = jax.tree.map(lambda *xs: np.stack(xs), *local)
            else:
                local_batch = local[0]
            state, metrics = train_step(state, train_step.shard_batch(local_batch))
            before, step = step, step + n_per_call
            if pending is not None:
                settle(*pending)
            pending = (before, metrics)
            snapshot = _crossed(before, step, snapshot_freq)
            if snapshot or _crossed(before, step, checkpoint_freq):
                settle(*pending)
                pending = None
                manager.save(state, data_state, snapshot=snapshot)
                saved_step = step
        if pending is not None:
            settle(*pending)
        if saved_step != step:
            manager.save(state, data_state)
    return state


__all__ = ["BatchesFn", "LogFn", "run_training"]
