"""The one place where an experiment config's ``data`` section becomes sources and loaders.

Reads the reference's fields (``data.dataset``, ``data.image_size``, ``data.num_channels``,
``data.centered``, ``data.random_flip``, ``data.uniform_dequantization``, ``data.category``,
``data.tfrecords_path``, ``training.batch_size``, ``eval.batch_size``, ``seed``) plus three
of ours: ``data.data_dir`` (tfds data directory), ``data.path`` (custom ``FOLDER`` / ``NPZ``
data) and ``data.toy`` / ``data.num_samples`` (``TOY2D``). Everything downstream takes
explicit arguments.

Datasets (``data.dataset``, case-insensitive), with their train / eval splits:

============== ============================ =====================
CIFAR10        tfds ``cifar10``              train / test
SVHN           tfds ``svhn_cropped``         train / test
MNIST          tfds ``mnist``                train / test
FASHION_MNIST  tfds ``fashion_mnist``        train / test
CELEBA         tfds ``celeb_a``              train / validation
LSUN           tfds ``lsun/<data.category>`` train / validation
CELEBAHQ, FFHQ ``data.tfrecords_path``       the one file for both
DIGITS         scikit-learn's 8x8 digits     first 1,500 / last 297
TOY2D          ``data.toy`` 2-D points       seeded samples
FOLDER         images under ``data.path``    ``path/train`` / ``path/test`` if present
NPZ            ``.npz`` at ``data.path``     arrays ``train`` / ``test`` if present
============== ============================ =====================
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from scoresde.data import sources, toy
from scoresde.data.pipeline import EvalLoader, TrainLoader
from scoresde.data.tfrecord import TFRecordRecords

_MISSING = object()


@dataclasses.dataclass(frozen=True)
class _TFDSDataset:
    tfds_name: str
    train_split: str
    eval_split: str
    method: str


#: tfds-backed datasets: ``data.dataset`` -> (tfds name, train split, eval split, preprocessing).
TFDS_DATASETS = {
    "CIFAR10": _TFDSDataset("cifar10", "train", "test", "resize"),
    "SVHN": _TFDSDataset("svhn_cropped", "train", "test", "resize"),
    "MNIST": _TFDSDataset("mnist", "train", "test", "resize"),
    "FASHION_MNIST": _TFDSDataset("fashion_mnist", "train", "test", "resize"),
    "CELEBA": _TFDSDataset("celeb_a", "train", "validation", "celeba"),
    "LSUN": _TFDSDataset("lsun/{category}", "train", "validation", "lsun"),
}
#: Every accepted ``data.dataset`` (compared case-insensitively).
DATASETS = (*TFDS_DATASETS, "CELEBAHQ", "FFHQ", "DIGITS", "TOY2D", "FOLDER", "NPZ")
#: Logical split names: ``"train"``, or the dataset's evaluation split (``"eval"``/``"test"``).
SPLITS = ("train", "eval", "test")
#: Seed offset of the TOY2D evaluation sample, so that it differs from the training sample.
_TOY_EVAL_SEED_OFFSET = 1_000_003


def _field(config: Any, dotted: str, default: Any = _MISSING) -> Any:
    from scoresde.models.factory import config_field

    if default is _MISSING:
        return config_field(config, dotted)
    return config_field(config, dotted, default)


def dataset_name(config: Any) -> str:
    """``config.data.dataset`` upper-cased and checked against :data:`DATASETS`.

    Example:
      >>> dataset_name({"data": {"dataset": "CelebAHQ"}})
      'CELEBAHQ'
    """
    name = _field(config, "data.dataset")
    if not isinstance(name, str) or name.upper() not in DATASETS:
        raise ValueError(f"config: data.dataset must be one of {DATASETS}, got {name!r}.")
    return name.upper()


def check_data_config(config: Any, *, require_paths: bool = False) -> None:
    """Raises ``ValueError`` for an unusable ``data`` section (without reading any data).

    Args:
      config: the experiment config.
      require_paths: also require the file paths the dataset reads (``data.tfrecords_path``
        for CELEBAHQ/FFHQ, ``data.path`` for FOLDER/NPZ); loading a config for sampling
        does not need them, reading data does.

    Example:
      >>> try:
      ...     check_data_config({"data": {"dataset": "IMAGENET"}})
      ... except ValueError as e:
      ...     print(str(e)[:40])
      config: data.dataset must be one of ('CI
    """
    name = dataset_name(config)
    if name == "TOY2D":
        toy_name = _field(config, "data.toy")
        if toy_name not in toy.TOY2D_NAMES:
            raise ValueError(
                f"config: data.toy must be one of {toy.TOY2D_NAMES}, got {toy_name!r}."
            )
        return
    size = _field(config, "data.image_size")
    channels = _field(config, "data.num_channels")
    if not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"config: data.image_size must be a positive int, got {size!r}.")
    if channels not in (1, 3):
        raise ValueError(f"config: data.num_channels must be 1 or 3, got {channels!r}.")
    if name == "LSUN" and not _field(config, "data.category", None):
        raise ValueError("config: data.dataset='LSUN' needs data.category (e.g. 'bedroom').")
    if name == "DIGITS" and size < 8:
        raise ValueError(f"config: DIGITS needs data.image_size >= 8, got {size}.")
    if not require_paths:
        return
    if name in ("CELEBAHQ", "FFHQ") and not _field(config, "data.tfrecords_path", None):
        raise ValueError(
            f"config: data.dataset={name!r} reads the reference's .tfrecords file; set "
            "data.tfrecords_path (e.g. --config.data.tfrecords_path=/data/ffhq-r10.tfrecords)."
        )
    if name in ("FOLDER", "NPZ") and not _field(config, "data.path", None):
        raise ValueError(f"config: data.dataset={name!r} needs data.path.")


def source_from_config(config: Any, split: str = "train") -> sources.Source:
    """The examples of a split of the dataset a config names.

    Args:
      config: ConfigDict or nested dict with the reference's ``data`` fields.
      split: ``"train"``, or ``"eval"`` / ``"test"`` for the dataset's evaluation split
        (the reference's ``eval.bpd_dataset`` values ``"train"``/``"test"`` work as is).

    Returns:
      A source of ``uint8`` ``(image_size, image_size, num_channels)`` images, or of
      ``float32`` ``(2,)`` points for ``TOY2D``.

    Example:
      >>> src = source_from_config({"data": {"dataset": "DIGITS", "image_size": 8,
      ...                                    "num_channels": 1}}, "test")
      >>> len(src), src.element_shape
      (297, (8, 8, 1))
    """
    if split not in SPLITS:
        raise ValueError(f"source_from_config: split must be one of {SPLITS}, got {split!r}.")
    check_data_config(config, require_paths=True)
    name = dataset_name(config)
    train = split == "train"
    if name == "TOY2D":
        num = int(_field(config, "data.num_samples", 10_000))
        seed = int(_field(config, "seed", 0)) + (0 if train else _TOY_EVAL_SEED_OFFSET)
        return sources.ArraySource(toy.toy2d_samples(_field(config, "data.toy"), num, seed))
    size = int(_field(config, "data.image_size"))
    channels = int(_field(config, "data.num_channels"))
    if name == "DIGITS":
        images = toy.digits_images("train" if train else "test", size)
        return sources.image_array_source(images, size, channels)
    if name in TFDS_DATASETS:
        spec = TFDS_DATASETS[name]
        tfds_name = spec.tfds_name.format(category=_field(config, "data.category", ""))
        return sources.tfds_source(
            tfds_name,
            spec.train_split if train else spec.eval_split,
            size,
            channels,
            method=spec.method,
            data_dir=_field(config, "data.data_dir", None) or None,
        )
    if name in ("CELEBAHQ", "FFHQ"):
        records = TFRecordRecords(_field(config, "data.tfrecords_path"))

        def fn(record: dict) -> np.ndarray:
            return sources.preprocess_image(record["image"], size, channels, "crop_resize")

        return sources.MappedSource(records, fn, (size, size, channels))
    path = _field(config, "data.path")
    split_name = "train" if train else "test"
    if name == "FOLDER":
        return sources.folder_source(path, size, channels, split=split_name)
    return sources.image_array_source(sources.npz_images(path, split_name), size, channels)


def train_loader_from_config(
    config: Any,
    *,
    local_device_count: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int = 0,
    device_axis: bool = True,
) -> TrainLoader:
    """The training :class:`~scoresde.data.pipeline.TrainLoader` of a config.

    Uses ``training.batch_size``, ``seed``, ``data.centered``, ``data.random_flip`` and
    ``data.uniform_dequantization`` (the last two only for image data).

    Example:
      >>> cfg = {"seed": 0, "training": {"batch_size": 8},
      ...        "data": {"dataset": "DIGITS", "image_size": 8, "num_channels": 1,
      ...                 "centered": True, "random_flip": False}}
      >>> next(train_loader_from_config(cfg, local_device_count=1))["image"].shape
      (1, 8, 8, 8, 1)
    """
    source = source_from_config(config, "train")
    is_toy = dataset_name(config) == "TOY2D"
    return TrainLoader(
        source,
        int(_field(config, "training.batch_size")),
        seed=int(_field(config, "seed", 0)),
        centered=bool(_field(config, "data.centered", False)),
        random_flip=not is_toy and bool(_field(config, "data.random_flip", False)),
        uniform_dequantization=not is_toy
        and bool(_field(config, "data.uniform_dequantization", False)),
        local_device_count=local_device_count,
        process_index=process_index,
        process_count=process_count,
        num_workers=num_workers,
        device_axis=device_axis,
    )


def eval_loader_from_config(
    config: Any,
    split: str = "eval",
    *,
    batch_size: int | None = None,
    local_device_count: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int = 0,
    device_axis: bool = True,
) -> EvalLoader:
    """The evaluation :class:`~scoresde.data.pipeline.EvalLoader` of a config's split.

    Args:
      config: the experiment config.
      split: ``"eval"``/``"test"`` (the dataset's evaluation split) or ``"train"``.
      batch_size: global batch size; default ``eval.batch_size``.
      local_device_count, process_index, process_count: batch geometry; ``None`` asks JAX.
      num_workers: reader threads.
      device_axis: ``(D, b, ...)`` batches; ``False``: flat ``(D b, ...)`` rows.

    Example:
      >>> cfg = {"eval": {"batch_size": 100},
      ...        "data": {"dataset": "DIGITS", "image_size": 8, "num_channels": 1}}
      >>> len(eval_loader_from_config(cfg, local_device_count=1))  # 297 test digits
      3
    """
    if batch_size is None:
        batch_size = int(_field(config, "eval.batch_size"))
    return EvalLoader(
        source_from_config(config, split),
        batch_size,
        centered=bool(_field(config, "data.centered", False)),
        local_device_count=local_device_count,
        process_index=process_index,
        process_count=process_count,
        num_workers=num_workers,
        device_axis=device_axis,
    )
