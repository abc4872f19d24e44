"""Random-access sources of examples: tfds array_record datasets, image folders, ``.npz`` files.

A *source* is anything with ``len(source)``, ``source[i] -> np.ndarray`` (one example,
already at its final shape), and the attributes ``element_shape`` and ``dtype``. Images come
out ``uint8`` HWC at the experiment's size; the loaders in :mod:`scoresde.data.pipeline` do
the shuffling, batching, scaling and dequantization.

Real datasets are read through ``tfds.data_source`` (array_record files, random access, no
TensorFlow). ``tensorflow_datasets`` is imported inside the functions that need it, so this
package imports without it. Nothing here downloads: a dataset that is not prepared locally
raises :class:`DatasetNotPreparedError` saying how to prepare it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from scoresde.data import transforms

#: Side of the central crop the reference takes of a CelebA image (178 x 218) before resizing.
CELEBA_CROP = 140
#: LSUN size at which the reference shrinks-then-crops instead of crops-then-resizes.
LSUN_SHRINK_THEN_CROP_SIZE = 128
#: File extensions a folder source reads.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: How a tfds image becomes an image of the experiment's size (see :func:`preprocess_image`).
PREPROCESS_METHODS = ("resize", "celeba", "lsun", "crop_resize")


class DatasetNotPreparedError(FileNotFoundError):
    """A tfds dataset is not prepared (as array_record) in the data directory."""


@runtime_checkable
class Source(Protocol):
    """What the loaders need: length, random access, and the shape and dtype of one example."""

    element_shape: tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
    """Examples held in one in-memory array ``(N, *element_shape)``.

    Example:
      >>> import numpy as np
      >>> src = ArraySource(np.zeros((5, 8, 8, 1), np.uint8))
      >>> len(src), src.element_shape, src[0].shape
      (5, (8, 8, 1), (8, 8, 1))
    """

    array: np.ndarray

    def __post_init__(self):
        array = np.asarray(self.array)
        if array.ndim < 2:
            raise ValueError(
                f"ArraySource: array must be (N, *element_shape) with at least 2 dims, got "
                f"shape {array.shape}."
            )
        object.__setattr__(self, "array", array)

    @property
    def element_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __len__(self) -> int:
        return self.array.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        return self.array[index]

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        """All examples at ``indices`` as one array (fast path for the loaders)."""
        return self.array[np.asarray(indices, dtype=np.int64)]


@dataclasses.dataclass(frozen=True, eq=False)
class MappedSource:
    """A record source with a function applied to each record on access.

    Attributes:
      records: random-access records (``len`` and ``[i]``), e.g. a tfds data source.
      fn: record -> example (``np.ndarray`` of shape ``element_shape``).
      element_shape: shape of one example after ``fn``.
      dtype: dtype of one example after ``fn``.
    """

    records: Any
    fn: Callable[[Any], np.ndarray]
    element_shape: tuple[int, ...]
    dtype: np.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> np.ndarray:
        out = np.asarray(self.fn(self.records[int(index)]))
        if out.shape != self.element_shape:
            raise ValueError(
                f"MappedSource: example {index} has shape {out.shape}, expected "
                f"{self.element_shape}."
            )
        return out


def preprocess_image(
    image: np.ndarray, image_size: int, num_channels: int, method: str = "resize"
) -> np.ndarray:
    """Brings one ``uint8`` HWC image to ``(image_size, image_size, num_channels)``.

    Methods, following the reference's input pipeline (Song et al., 2021):

    - ``"resize"``: antialiased bilinear resize (CIFAR-10, SVHN, MNIST); a no-op at the
      native size.
    - ``"celeba"``: central 140 x 140 crop, then an antialiased bilinear resize.
    - ``"lsun"``: at size 128, shrink the shorter side to the size and crop the centre;
      otherwise crop the largest central square and resize it (bicubic, antialiased).
    - ``"crop_resize"``: largest central square, bicubic antialiased resize (image folders).

    The result is rounded back to ``uint8`` so that likelihoods are computed on 8-bit data.

    Args:
      image: ``uint8`` array ``(H, W, C)`` (or ``(H, W)``).
      image_size: side of the output.
      num_channels: 1 (luminance) or 3 (RGB).
      method: one of :data:`PREPROCESS_METHODS`.

    Returns:
      ``uint8`` array ``(image_size, image_size, num_channels)``.

    Example:
      >>> import numpy as np
      >>> preprocess_image(np.zeros((218, 178, 3), np.uint8), 64, 3, "celeba").shape
      (64, 64, 3)
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype != np.uint8:
        raise TypeError(f"preprocess_image: images must be uint8, got dtype {image.dtype}.")
    image = transforms.convert_channels(image, num_channels)
    if method == "resize":
        image = transforms.resize(image, (image_size, image_size), "bilinear")
    elif method == "celeba":
        image = transforms.central_crop(image, CELEBA_CROP)
        image = transforms.resize(image, (image_size, image_size), "bilinear")
    elif method == "lsun":
        if image_size == LSUN_SHRINK_THEN_CROP_SIZE:
            image = transforms.resize_small(image, image_size, "bilinear")
            image = transforms.central_crop(image, image_size)
        else:
            image = transforms.crop_resize(image, image_size, "bicubic")
    elif method == "crop_resize":
        image = transforms.crop_resize(image, image_size, "bicubic")
    else:
        raise ValueError(
            f"preprocess_image: method must be one of {PREPROCESS_METHODS}, got {method!r}."
        )
    return np.ascontiguousarray(image)


def _prepare_instructions(name: str, data_dir: str | None) -> str:
    dir_flag = f" --data_dir={data_dir}" if data_dir else ""
    dir_arg = f", data_dir={str(data_dir)!r}" if data_dir else ""
    return (
        "Prepare it once; this step needs TensorFlow (pip install 'scoresde[prepare]'), "
        "training and evaluation do not:\n"
        f"    tfds build {name} --file_format=array_record{dir_flag}\n"
        "or in Python:\n"
        "    import tensorflow_datasets as tfds\n"
        f"    tfds.builder({name!r}{dir_arg}, file_format='array_record')"
        ".download_and_prepare()\n"
        "(Some datasets, e.g. celeb_a and lsun, may need a manual download first; tfds says "
        "which when you run the command.)"
    )


def tfds_records(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Any:
    """Opens a prepared tfds dataset split as a random-access array_record source.

    Never downloads. Reading needs no TensorFlow.

    Args:
      name: tfds name, e.g. ``"cifar10"`` or ``"lsun/bedroom"``.
      split: tfds split, e.g. ``"train"``, ``"test"``, ``"train[:90%]"``.
      data_dir: tfds data directory; ``None`` means tfds' default (``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).

    Returns:
      A sequence of feature dicts (``record["image"]`` is ``uint8`` HWC).

    Raises:
      DatasetNotPreparedError: the dataset is not prepared, or was prepared as tfrecord;
        the message says the command that prepares it.
    """
    import tensorflow_datasets as tfds

    data_dir = None if data_dir is None else str(data_dir)
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"tfds_records: name={name!r} is not a tfds dataset ({e}).") from None
    except Exception as e:  # tfds raises several types here; find out which case it is.
        try:
            builder = tfds.builder(name, data_dir=data_dir)
            prepared = builder.is_prepared()
            where = str(builder.data_dir)
        except Exception:
            prepared, where = False, str(data_dir or "the default tfds data_dir")
        if not prepared:
            raise DatasetNotPreparedError(
                f"tfds dataset {name!r} is not prepared in {where}; scoresde never downloads "
                f"implicitly.\n{_prepare_instructions(name, data_dir)}"
            ) from e
        if "file format" in str(e).lower() or isinstance(e, NotImplementedError):
            raise DatasetNotPreparedError(
                f"tfds dataset {name!r} is prepared in {where} but not as array_record, which "
                "random access (and hence scoresde) needs. Convert it (needs TensorFlow):\n"
                f"    tfds convert_format --dataset_version_dir={where} "
                "--out_file_format=array_record\n"
                f"or prepare it again into another data_dir.\n"
                f"{_prepare_instructions(name, data_dir)}"
            ) from e
        raise


def tfds_source(
    name: str,
    split: str,
    image_size: int,
    num_channels: int,
    *,
    method: str = "resize",
    data_dir: str | os.PathLike | None = None,
) -> MappedSource:
    """A tfds image dataset as a source of ``uint8`` images at the experiment's size.

    Args:
      name: tfds name (``"cifar10"``, ``"svhn_cropped"``, ``"mnist"``, ``"fashion_mnist"``,
        ``"celeb_a"``, ``"lsun/<category>"`` ...).
      split: tfds split name.
      image_size: side of the images the source returns.
      num_channels: channels of the images the source returns (1 or 3).
      method: how to crop/resize, see :func:`preprocess_image`.
      data_dir: tfds data directory (``None``: tfds' default).

    Returns:
      A :class:`MappedSource` of ``uint8`` ``(image_size, image_size, num_channels)`` images.

    Example:
      >>> import tensorflow_datasets as tfds
      >>> with tfds.testing.mock_data(num_examples=3):
      ...     src = tfds_source("cifar10", "test", 16, 3)
      ...     len(src), src[0].shape
      (3, (16, 16, 3))
    """
    if method not in PREPROCESS_METHODS:
        raise ValueError(
            f"tfds_source: method must be one of {PREPROCESS_METHODS}, got {method!r}."
        )
    _check_image_geometry(image_size, num_channels, "tfds_source")
    records = tfds_records(name, split, data_dir)

    def fn(record: dict) -> np.ndarray:
        return preprocess_image(record["image"], image_size, num_channels, method)

    return MappedSource(records, fn, (image_size, image_size, num_channels), np.dtype(np.uint8))


def _check_image_geometry(image_size: int, num_channels: int, where: str) -> None:
    if not isinstance(image_size, int | np.integer) or image_size < 1:
        raise ValueError(f"{where}: image_size must be a positive int, got {image_size!r}.")
    if num_channels not in (1, 3):
        raise ValueError(f"{where}: num_channels must be 1 or 3, got {num_channels!r}.")


def folder_source(
    path: str | os.PathLike,
    image_size: int,
    num_channels: int,
    *,
    split: str | None = None,
    method: str = "crop_resize",
) -> MappedSource:
    """Images from a folder (searched recursively), in sorted path order.

    If ``path/<split>`` is a folder, only it is read (e.g. ``path/train`` and ``path/test``);
    otherwise the whole folder is the split.

    Args:
      path: folder of ``.png``/``.jpg``/... images.
      image_size: side of the images returned.
      num_channels: 1 or 3.
      split: optional subfolder name.
      method: crop/resize method, see :func:`preprocess_image`.

    Returns:
      A :class:`MappedSource` of ``uint8`` images.
    """
    _check_image_geometry(image_size, num_channels, "folder_source")
    root = pathlib.Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"folder_source: path={str(path)!r} is not a folder.")
    if split is not None and (root / split).is_dir():
        root = root / split
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise FileNotFoundError(
            f"folder_source: no images ({', '.join(IMAGE_EXTENSIONS)}) under {str(root)!r}."
        )

    def fn(file: pathlib.Path) -> np.ndarray:
        with Image.open(file) as im:
            image = np.asarray(im.convert("L" if num_channels == 1 else "RGB"))
        return preprocess_image(image, image_size, num_channels, method)

    return MappedSource(files, fn, (image_size, image_size, num_channels), np.dtype(np.uint8))


def npz_images(path: str | os.PathLike, split: str | None = None) -> np.ndarray:
    """Loads ``uint8`` images ``(N, H, W, C)`` from an ``.npz`` (or ``.npy``) file.

    The array is the one named ``split`` if the file has it, else ``images``, else the only
    array in the file. ``(N, H, W)`` arrays get a channel axis.

    Example:
      >>> import numpy as np, tempfile, os
      >>> f = os.path.join(tempfile.mkdtemp(), "x.npz")
      >>> np.savez(f, train=np.zeros((3, 4, 4), np.uint8))
      >>> npz_images(f, "train").shape
      (3, 4, 4, 1)
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz_images: path={str(path)!r} is not a file.")
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        images = loaded
    else:
        with loaded:
            names = list(loaded.keys())
            if split is not None and split in names:
                key = split
            elif "images" in names:
                key = "images"
            elif len(names) == 1:
                key = names[0]
            else:
                raise ValueError(
                    f"npz_images: {str(path)!r} holds arrays {names}; name one {split!r} or "
                    "'images', or store a single array."
                )
            images = loaded[key]
    if images.dtype != np.uint8:
        raise TypeError(f"npz_images: images must be uint8, got dtype {images.dtype} in {path}.")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"npz_images: images must be (N, H, W[, C]), got shape {images.shape}.")
    return images


def image_array_source(images: np.ndarray, image_size: int, num_channels: int) -> ArraySource:
    """An in-memory ``uint8`` image array brought to the experiment's size (crop + resize).

    Example:
      >>> import numpy as np
      >>> image_array_source(np.zeros((2, 8, 8, 1), np.uint8), 16, 1).element_shape
      (16, 16, 1)
    """
    _check_image_geometry(image_size, num_channels, "image_array_source")
    images = np.asarray(images)
    if images.shape[1:] != (image_size, image_size, num_channels):
        images = np.stack(
            [preprocess_image(im, image_size, num_channels, "crop_resize") for im in images]
        )
    return ArraySource(images)
