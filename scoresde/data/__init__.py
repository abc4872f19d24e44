"""Data: tfds array_record sources, embedded datasets, scaling, dequantization, loaders.

- Sources (random access, ``uint8`` HWC images at the experiment's size):
  :func:`tfds_source` (no TensorFlow needed to read), :func:`folder_source`,
  :func:`npz_images` + :func:`image_array_source`, :class:`ArraySource`,
  :class:`TFRecordRecords` (the reference's CelebA-HQ / FFHQ files).
- Embedded data, no download: :func:`digits_images`, :func:`toy2d_samples`,
  :func:`toy2d_mixture`.
- Transforms: :func:`scale` / :func:`inverse_scale` (``data.centered``),
  :func:`to_unit_interval` (uniform dequantization), :func:`random_flip`.
- Loaders: :class:`TrainLoader` (deterministic shuffling, ``state()`` / ``restore()``),
  :class:`EvalLoader` (every example once, padded batches with a mask).
- From a config: :func:`source_from_config`, :func:`train_loader_from_config`,
  :func:`eval_loader_from_config`.
"""

from scoresde.data.factory import (
    DATASETS,
    TFDS_DATASETS,
    check_data_config,
    dataset_name,
    eval_loader_from_config,
    source_from_config,
    train_loader_from_config,
)
from scoresde.data.pipeline import BatchGeometry, EvalLoader, TrainLoader, batch_geometry
from scoresde.data.sources import (
    ArraySource,
    DatasetNotPreparedError,
    MappedSource,
    Source,
    folder_source,
    image_array_source,
    npz_images,
    preprocess_image,
    tfds_records,
    tfds_source,
)
from scoresde.data.tfrecord import TFRecordRecords, parse_example
from scoresde.data.toy import TOY2D_NAMES, digits_images, toy2d_mixture, toy2d_samples
from scoresde.data.transforms import (
    central_crop,
    crop_resize,
    inverse_scale,
    random_flip,
    resize,
    resize_small,
    scale,
    to_unit_interval,
)

__all__ = [
    "DATASETS",
    "TFDS_DATASETS",
    "TOY2D_NAMES",
    "ArraySource",
    "BatchGeometry",
    "DatasetNotPreparedError",
    "EvalLoader",
    "MappedSource",
    "Source",
    "TFRecordRecords",
    "TrainLoader",
    "batch_geometry",
    "central_crop",
    "check_data_config",
    "crop_resize",
    "dataset_name",
    "digits_images",
    "eval_loader_from_config",
    "folder_source",
    "image_array_source",
    "inverse_scale",
    "npz_images",
    "parse_example",
    "preprocess_image",
    "random_flip",
    "resize",
    "resize_small",
    "scale",
    "source_from_config",
    "tfds_records",
    "tfds_source",
    "to_unit_interval",
    "toy2d_mixture",
    "toy2d_samples",
    "train_loader_from_config",
]
