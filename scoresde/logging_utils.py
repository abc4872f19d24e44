"""What a run shows while it goes: a log file, TensorBoard events, a progress bar, PNG grids.

- :class:`RunLog`: lines to ``workdir/log.txt`` and the terminal, scalars and images to
  TensorBoard event files under ``workdir/tensorboard`` (written with ``tensorboardX``,
  which needs no TensorFlow). Only process 0 writes.
- :func:`progress_bar`: a tqdm bar with rate and ETA on stderr.
- :func:`image_grid` / :func:`save_image_grid`: tile images (in ``[0, 1]``) into one PNG;
  :func:`scatter_image` draws 2-D points instead.
- :func:`write_json_atomic`: results files that a pre-empted run never leaves half written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import sys
import tempfile
import time
from typing import Any

import numpy as np

#: Names inside the workdir.
LOG_FILE = "log.txt"
TENSORBOARD_DIR = "tensorboard"
#: Smallest side (pixels) of one tile in a saved grid; small images are enlarged to it.
MIN_TILE_PIXELS = 32
#: Pixels between tiles.
GRID_PADDING = 2
#: Side of the canvas of :func:`scatter_image`.
SCATTER_PIXELS = 256


def _file_mode() -> int:
    """The mode a plainly created file gets (0o666 less the umask); mkstemp uses 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _publish(tmp: str, path: pathlib.Path) -> None:
    """Gives a finished temporary file the usual permissions and renames it into place."""
    os.chmod(tmp, _file_mode())
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` through a temporary file and :func:`os.replace`.

    Example:
      >>> import tempfile, json, pathlib
      >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.json"
      >>> write_json_atomic(p, {"bpd": 1.5})
      >>> json.loads(p.read_text())
      {'bpd': 1.5}
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` through a temporary file and :func:`os.replace`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images in ``[0, 1]`` (clipped) to ``uint8`` ``round(255 x)``.

    Example:
      >>> to_uint8(np.array([-0.5, 0.0, 0.5, 1.0, 2.0]))
      array([  0,   0, 128, 255, 255], dtype=uint8)
    """
    x = np.nan_to_num(np.asarray(images, np.float64), nan=0.0)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def image_grid(
    images: np.ndarray,
    ncols: int | None = None,
    padding: int = GRID_PADDING,
    min_tile: int = MIN_TILE_PIXELS,
) -> np.ndarray:
    """Tiles ``(B, H, W, C)`` images in ``[0, 1]`` into one ``uint8`` ``(H', W', C)`` image.

    Tiles fill rows of ``ncols`` (default ``ceil(sqrt(B))``) on a white background with
    ``padding`` pixels between them; images smaller than ``min_tile`` pixels are enlarged by
    an integer factor (nearest neighbour) so that the grid is legible.

    Args:
      images: ``(B, H, W, C)`` floats in ``[0, 1]`` (or ``uint8``), ``C`` in {1, 3}.
      ncols: tiles per row.
      padding: pixels between tiles.
      min_tile: enlarge tiles to at least this many pixels per side.

    Returns:
      The grid, ``uint8`` ``(rows (H f + p) + p, ncols (W f + p) + p, C)``.

    Example:
      >>> image_grid(np.zeros((5, 8, 8, 1)), ncols=3, padding=1, min_tile=8).shape
      (19, 28, 1)
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] < 1:
        raise ValueError(
            f"image_grid: images must be (B, H, W, C) with B >= 1 and C in (1, 3), got shape "
            f"{images.shape}."
        )
    if images.dtype != np.uint8:
        images = to_uint8(images)
    b, h, w, c = images.shape
    factor = max(1, math.ceil(min_tile / max(h, w)))
    if factor > 1:
        images = images.repeat(factor, axis=1).repeat(factor, axis=2)
        h, w = h * factor, w * factor
    ncols = max(1, math.ceil(math.sqrt(b)) if ncols is None else int(ncols))
    nrows = math.ceil(b / ncols)
    grid = np.full((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c), 255)
    for i in range(b):
        r, col = divmod(i, ncols)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = images[i]
    return grid.astype(np.uint8)


def scatter_image(points: np.ndarray, size: int = SCATTER_PIXELS, extent: float | None = None):
    """Draws 2-D points ``(B, 2)`` as dark pixels on a white ``uint8`` ``(size, size, 1)`` canvas.

    The canvas spans ``[-extent, extent]^2`` (default: the points' largest ``|x|``, at least
    1); points outside are dropped, non-finite ones ignored.

    Example:
      >>> img = scatter_image(np.array([[0.0, 0.0], [1.0, 1.0]]), size=16, extent=1.0)
      >>> img.shape, int((img < 255).sum())
      ((16, 16, 1), 2)
    """
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"scatter_image: points must be (B, 2), got shape {points.shape}.")
    points = points[np.isfinite(points).all(axis=1)]
    if extent is None:
        extent = max(1.0, float(np.abs(points).max())) if len(points) else 1.0
    canvas = np.full((size, size), 255, np.uint8)
    ij = np.floor((points / extent + 1.0) / 2.0 * (size - 1) + 0.5).astype(np.int64)
    inside = ((ij >= 0) & (ij < size)).all(axis=1)
    ij = ij[inside]
    canvas[size - 1 - ij[:, 1], ij[:, 0]] = 0  # y axis up
    return canvas[..., None]


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Saves a ``uint8`` ``(H, W, C)`` image (C in {1, 3}) as PNG, atomically."""
    from PIL import Image

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.asarray(image, np.uint8)
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        pil.save(tmp, format="PNG")
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def samples_picture(samples: np.ndarray) -> np.ndarray:
    """A picture of samples: a grid of images ``(B, H, W, C)`` in ``[0, 1]``, or a scatter
    plot of 2-D points ``(B, 2)``."""
    samples = np.asarray(samples)
    if samples.ndim == 2 and samples.shape[1] == 2:
        return scatter_image(samples)
    return image_grid(samples)


def save_image_grid(path: str | os.PathLike, samples: np.ndarray) -> np.ndarray:
    """Saves :func:`samples_picture` of ``samples`` as a PNG and returns the picture.

    Example:
      >>> import tempfile, pathlib
      >>> p = pathlib.Path(tempfile.mkdtemp()) / "grid.png"
      >>> save_image_grid(p, np.random.default_rng(0).random((4, 8, 8, 1))).shape
      (70, 70, 1)
    """
    picture = samples_picture(samples)
    save_png(path, picture)
    return picture


def progress_bar(total: int, initial: int = 0, desc: str = "", enabled: bool = True):
    """A tqdm progress bar on stderr showing count, rate and ETA (a no-op when disabled).

    Example:
      >>> bar = progress_bar(10, enabled=False)
      >>> bar.update(3); bar.set_postfix(loss=0.5); bar.close()
    """
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=0.5,
        smoothing=0.1,
    )


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


class _TqdmHandler(logging.StreamHandler):
    """Writes log lines through ``tqdm.write`` so that they do not break a running bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never crash the run
            self.handleError(record)


class RunLog:
    """A run's log file, terminal output and TensorBoard event files, all inside ``workdir``.

    Lines go to ``workdir/log.txt`` (appended, so a resumed run continues the file) and to
    stderr; :meth:`scalars` and :meth:`image` go to TensorBoard event files in
    ``workdir/tensorboard`` (``tensorboard --logdir workdir/tensorboard``). On processes
    other than 0 everything is a no-op.

    Args:
      workdir: the run's directory.
      name: the logger name (one per command, e.g. ``"train"``).
      enabled: write anything at all (``jax.process_index() == 0`` by default).
      tensorboard: write TensorBoard events.
      terminal: also print lines on stderr.

    Example:
      >>> import tempfile, os
      >>> d = tempfile.mkdtemp()
      >>> with RunLog(d, "doc", enabled=True, terminal=False) as log:
      ...     log.info("hello"); log.scalars(1, {"loss": 0.5})
      >>> sorted(os.listdir(d))
      ['log.txt', 'tensorboard']
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        name: str,
        *,
        enabled: bool | None = None,
        tensorboard: bool = True,
        terminal: bool = True,
    ):
        if enabled is None:
            import jax

            enabled = jax.process_index() == 0
        self.enabled = bool(enabled)
        self.workdir = pathlib.Path(workdir)
        self._logger = logging.getLogger(f"scoresde.{name}.{id(self)}")
        self._logger.setLevel(logging.INFO)
        self._logger.propagate = False
        self._writer = None
        self._handlers: list[logging.Handler] = []
        if not self.enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(self.workdir / LOG_FILE, encoding="utf-8")
        file_handler.setFormatter(
            logging.Formatter(f"%(asctime)s {name}: %(message)s", "%Y-%m-%d %H:%M:%S")
        )
        self._handlers.append(file_handler)
        if terminal:
            stream = _TqdmHandler(sys.stderr)
            stream.setFormatter(logging.Formatter("%(message)s"))
            self._handlers.append(stream)
        for h in self._handlers:
            self._logger.addHandler(h)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.workdir / TENSORBOARD_DIR), flush_secs=30)

    def info(self, message: str) -> None:
        """Logs one line (file and terminal)."""
        if self.enabled:
            self._logger.info(message)

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        """Writes scalars to TensorBoard at ``step`` (tags ``prefix + name``)."""
        if self._writer is not None:
            now = time.time()
            for k, v in values.items():
                self._writer.add_scalar(prefix + k, float(v), int(step), walltime=now)

    def image(self, tag: str, step: int, picture: np.ndarray) -> None:
        """Writes a ``uint8`` ``(H, W, C)`` picture to TensorBoard at ``step``."""
        if self._writer is not None:
            picture = np.asarray(picture, np.uint8)
            if picture.shape[-1] == 1:
                picture = np.repeat(picture, 3, axis=-1)
            self._writer.add_image(tag, picture, int(step), dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()
        for h in self._handlers:
            h.flush()

    def close(self) -> None:
        """Flushes and closes the event file and the log file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for h in self._handlers:
            self._logger.removeHandler(h)
            h.close()
        self._handlers = []

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_duration(seconds: float) -> str:
    """``"1h02m03s"`` / ``"4m05s"`` / ``"6.0s"``.

    Example:
      >>> format_duration(3723), format_duration(245), format_duration(6)
      ('1h02m03s', '4m05s', '6.0s')
    """
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


__all__ = [
    "LOG_FILE",
    "TENSORBOARD_DIR",
    "RunLog",
    "format_duration",
    "image_grid",
    "progress_bar",
    "samples_picture",
    "save_image_grid",
    "save_npz_atomic",
    "save_png",
    "scatter_image",
    "to_uint8",
    "write_json_atomic",
]
