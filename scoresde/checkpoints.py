"""Pre-emption-safe checkpoints of a :class:`~scoresde.train.TrainState` with Orbax.

Layout under ``workdir/checkpoints``::

    preemption/<step>/   frequent snapshots for resuming; only the newest is kept
    snapshots/<step>/    permanent snapshots (all, or the newest ``keep_snapshots``)
    corrupt/             bad checkpoints moved aside on resume

Each checkpoint is an Orbax composite of three items: ``state`` (the train state's
leaves), ``data_state`` (the data pipeline's position, a JSON-able dict) and ``manifest``
(JSON: the step, every leaf's path, shape, dtype and CRC-32 checksum). Orbax writes each
checkpoint into a temporary directory and renames it when complete, so a run killed
mid-save leaves no half-written ``<step>`` directory; the manifest's checksums catch
checkpoints damaged afterwards. On resume the newest checkpoint that reads back intact is
used; any newer, damaged one is reported with a warning naming its directory and moved
to ``corrupt/``. Restoring into a state of another structure, shape or dtype is an error
listing every mismatch.

Multi-host: every process calls :meth:`CheckpointManager.save` and
:meth:`CheckpointManager.restore` (Orbax coordinates; the primary process writes the JSON
items); the checkpoint directory must be shared by all processes.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time
import warnings
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from scoresde.train import TrainState, _host_value

PREEMPTION_DIR = "preemption"
SNAPSHOT_DIR = "snapshots"
CORRUPT_DIR = "corrupt"
_MANIFEST_VERSION = 1


class CheckpointWarning(UserWarning):
    """A checkpoint could not be read and was skipped."""


def _leaf_key(i: int) -> str:
    return f"leaf_{i:05d}"


def _flatten(state: Any) -> tuple[list[str], list[Any], Any]:
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    paths = [jax.tree_util.keystr(p) for p, _ in paths_leaves]
    return paths, [leaf for _, leaf in paths_leaves], treedef


def _crc(value: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(value).tobytes())


def _manifest(step: int, paths: list[str], host_leaves: list[np.ndarray]) -> dict:
    return {
        "version": _MANIFEST_VERSION,
        "step": step,
        "leaves": [
            {"path": p, "shape": list(v.shape), "dtype": str(v.dtype), "crc32": _crc(v)}
            for p, v in zip(paths, host_leaves, strict=True)
        ],
    }


def _mismatches(manifest: dict, paths: list[str], leaves: list[Any]) -> list[str]:
    saved = {e["path"]: e for e in manifest["leaves"]}
    problems = []
    for p, leaf in zip(paths, leaves, strict=True):
        if p not in saved:
            problems.append(f"{p}: in the target state but not in the checkpoint")
            continue
        e = saved[p]
        shape = list(np.shape(leaf))
        dtype = str(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype)
        if e["shape"] != shape or e["dtype"] != dtype:
            problems.append(
                f"{p}: checkpoint has shape {tuple(e['shape'])} {e['dtype']}, target has "
                f"shape {tuple(shape)} {dtype}"
            )
    for p in saved.keys() - set(paths):
        problems.append(f"{p}: in the checkpoint but not in the target state")
    return sorted(problems)


class CheckpointManager:
    """Saves and restores train states (plus the data pipeline's position) in ``workdir``.

    Args:
      workdir: the run's directory; checkpoints go to ``workdir/checkpoints``.
      keep_snapshots: how many permanent snapshots to keep (``None``: all).
      async_save: write in a background thread (the arrays are copied to the host
        before :meth:`save` returns, so the caller may donate or modify them).

    Example:
      >>> import tempfile, jax.numpy as jnp, optax, scoresde as sd
      >>> state = sd.TrainState.create({"w": jnp.ones(2)}, optax.sgd(0.1), 0)
      >>> with sd.CheckpointManager(tempfile.mkdtemp()) as mgr:
      ...     mgr.save(state, {"epoch": 0})
      ...     restored, data_state = mgr.restore(state)
      >>> data_state
      {'epoch': 0}
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        keep_snapshots: int | None = None,
        async_save: bool = True,
    ):
        if keep_snapshots is not None and (
            isinstance(keep_snapshots, bool)
            or not isinstance(keep_snapshots, int)
            or keep_snapshots < 1
        ):
            raise ValueError(
                "CheckpointManager: keep_snapshots must be None (keep all) or an integer >= 1, "
                f"got keep_snapshots={keep_snapshots!r}."
            )
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        self.keep_snapshots = keep_snapshots
        self.async_save = async_save
        self._open()

    # -- managers -------------------------------------------------------------------------
    def _make(self, name: str, max_to_keep: int | None) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=self.async_save,
        )
        return ocp.CheckpointManager(self.directory / name, options=options)

    def _open(self) -> None:
        self._preemption = self._make(PREEMPTION_DIR, 1)
        self._snapshots = self._make(SNAPSHOT_DIR, self.keep_snapshots)

    def close(self) -> None:
        """Waits for pending saves and releases the managers."""
        self._preemption.close()
        self._snapshots.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_until_finished(self) -> None:
        """Blocks until every pending (async) save is on disk."""
        self._preemption.wait_until_finished()
        self._snapshots.wait_until_finished()

    # -- queries --------------------------------------------------------------------------
    def steps(self) -> list[tuple[int, str]]:
        """All complete checkpoints as ``(step, kind)``, newest first (kind: the subdirectory)."""
        found = [(s, PREEMPTION_DIR) for s in self._preemption.all_steps()]
        found += [(s, SNAPSHOT_DIR) for s in self._snapshots.all_steps()]
        # at equal steps prefer the permanent snapshot
        return sorted(found, key=lambda e: (e[0], e[1] == SNAPSHOT_DIR), reverse=True)

    def latest_step(self) -> int | None:
        """The newest saved step, or ``None`` when there is no checkpoint."""
        steps = self.steps()
        return steps[0][0] if steps else None

    # -- save -----------------------------------------------------------------------------
    def save(
        self,
        state: TrainState,
        data_state: dict | None = None,
        *,
        snapshot: bool = False,
    ) -> None:
        """Saves ``state`` at its step, as a pre-emption checkpoint or a permanent snapshot.

        Args:
          state: the train state (``state.step`` names the checkpoint).
          data_state: the data pipeline's position after the batches consumed so far; a
            JSON-serializable dict (or ``None``).
          snapshot: save as a permanent snapshot instead of a pre-emption checkpoint.
        """
        if data_state is not None and not isinstance(data_state, dict):
            raise TypeError(
                f"save: data_state must be a dict or None, got {type(data_state).__name__}."
            )
        try:
            json.dumps(data_state)
        except TypeError as e:
            raise TypeError(f"save: data_state must be JSON-serializable: {e}") from None
        paths, leaves, _ = _flatten(state)
        host = [_host_value(x) for x in leaves]
        step = int(_host_value(state.step))
        manifest = _manifest(step, paths, host)
        items = {_leaf_key(i): v for i, v in enumerate(host)}
        manager = self._snapshots if snapshot else self._preemption
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(items),
                data_state=ocp.args.JsonSave({"value": data_state}),
                manifest=ocp.args.JsonSave(manifest),
            ),
            force=True,
        )

    # -- restore --------------------------------------------------------------------------
    def restore(self, target: TrainState) -> tuple[TrainState, dict | None] | None:
        """Restores the newest intact checkpoint into the structure of ``target``.

        Damaged checkpoints (unreadable, missing items, checksum mismatch) are skipped with a
        :class:`CheckpointWarning` naming the directory, and moved to ``corrupt/``.

        Args:
          target: a train state of the expected structure, shapes and dtypes (e.g. a fresh
            one); its values are not used.

        Returns:
          ``(state, data_state)`` as host/NumPy-backed values, or ``None`` if there is no
          checkpoint.

        Raises:
          ValueError: the checkpoint's structure, shapes or dtypes differ from ``target``
            (the message lists every mismatch).
        """
        self.wait_until_finished()
        paths, leaves, treedef = _flatten(target)
        bad: list[pathlib.Path] = []
        result = None
        for step, kind in self.steps():
            manager = self._snapshots if kind == SNAPSHOT_DIR else self._preemption
            directory = self.directory / kind / str(step)
            try:
                manifest = manager.restore(
                    step, args=ocp.args.Composite(manifest=ocp.args.JsonRestore())
                )["manifest"]
                if manifest.get("version") != _MANIFEST_VERSION or manifest.get("step") != step:
                    raise ValueError(
                        f"unexpected manifest {manifest.get('version')}/{manifest.get('step')}"
                    )
            except Exception as e:  # noqa: BLE001 - any read failure means a damaged checkpoint
                self._warn(directory, e)
                bad.append(directory)
                continue
            problems = _mismatches(manifest, paths, leaves)
            if problems:
                raise ValueError(
                    f"checkpoint {directory} does not match the train state "
                    f"({len(problems)} mismatches):\n  " + "\n  ".join(problems)
                )
            try:
                abstract = {
                    _leaf_key(i): np.zeros(e["shape"], e["dtype"])
                    for i, e in enumerate(manifest["leaves"])
                }
                order = {e["path"]: i for i, e in enumerate(manifest["leaves"])}
                restored = manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract),
                        data_state=ocp.args.JsonRestore(),
                    ),
                )
                values = []
                for p in paths:
                    i = order[p]
                    v = np.asarray(restored["state"][_leaf_key(i)])
                    if _crc(v) != manifest["leaves"][i]["crc32"]:
                        raise ValueError(f"checksum mismatch for leaf {p}")
                    values.append(v)
                data_state = restored["data_state"]["value"]
            except Exception as e:  # noqa: BLE001
                self._warn(directory, e)
                bad.append(directory)
                continue
            result = (jax.tree_util.tree_unflatten(treedef, values), data_state)
            break
        if bad:
            self._quarantine(bad)
        return result

    @staticmethod
    def _warn(directory: pathlib.Path, error: Exception) -> None:
        warnings.warn(
            f"checkpoint {directory} is damaged and was skipped ({type(error).__name__}: "
            f"{str(error)[:300]}); falling back to the previous checkpoint.",
            CheckpointWarning,
            stacklevel=3,
        )

    def _quarantine(self, bad: list[pathlib.Path]) -> None:
        """Moves damaged checkpoints aside so that they never shadow newer good ones."""
        self.wait_until_finished()
        if jax.process_index() == 0:
            dest = self.directory / CORRUPT_DIR
            dest.mkdir(parents=True, exist_ok=True)
            for d in bad:
                if d.exists():
                    target = dest / f"{d.parent.name}-{d.name}-{time.time_ns()}"
                    shutil.move(str(d), str(target))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("scoresde_checkpoint_quarantine")
        self.close()
        self._open()


__all__ = [
    "CORRUPT_DIR",
    "PREEMPTION_DIR",
    "SNAPSHOT_DIR",
    "CheckpointManager",
    "CheckpointWarning",
]
