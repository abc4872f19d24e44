"""Per-image transforms: scaling to the model's range, dequantization, flips, crops, resizes.

Images are NHWC (or HWC for one image). Pixel data are ``uint8`` in ``[0, 255]``; the model
sees ``float32`` in ``[0, 1]`` or, when ``centered``, in ``[-1, 1]`` (Song et al., 2021,
``data.centered``). Resizing runs on the host with Pillow, whose resampling filters widen
their support when they shrink an image, i.e. they are antialiased like the reference's
``tf.image.resize(..., antialias=True)``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Number of levels of an 8-bit pixel; dequantized data are ``(x + u) / 256``.
PIXEL_LEVELS = 256
#: Largest 8-bit pixel value; non-dequantized data are ``x / 255``.
PIXEL_MAX = 255.0

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
}


def scale(x: np.ndarray, centered: bool) -> np.ndarray:
    r"""Maps data in :math:`[0, 1]` to the model's range.

    .. math:: s(x) = 2x - 1 \text{ if centered else } x.

    Args:
      x: array with values in ``[0, 1]``.
      centered: scale to ``[-1, 1]`` (the reference's ``data.centered``).

    Returns:
      The scaled array, same shape and dtype.

    Example:
      >>> import numpy as np
      >>> scale(np.array([0.0, 0.5, 1.0]), centered=True)
      array([-1.,  0.,  1.])
    """
    return x * 2.0 - 1.0 if centered else x


def inverse_scale(x: np.ndarray, centered: bool) -> np.ndarray:
    r"""Inverse of :func:`scale`: model range back to :math:`[0, 1]`.

    .. math:: s^{-1}(y) = (y + 1) / 2 \text{ if centered else } y.

    Args:
      x: array in the model's range.
      centered: whether the data were scaled to ``[-1, 1]``.

    Returns:
      The array in ``[0, 1]`` (not clipped), same shape.

    Example:
      >>> import numpy as np
      >>> inverse_scale(np.array([-1.0, 0.0, 1.0]), centered=True)
      array([0. , 0.5, 1. ])
    """
    return (x + 1.0) / 2.0 if centered else x


def to_unit_interval(images: np.ndarray, uniform_noise: np.ndarray | None = None) -> np.ndarray:
    r"""Turns ``uint8`` pixels into ``float32`` in :math:`[0, 1]`, optionally dequantized.

    Without noise: :math:`x / 255`. With uniform noise :math:`u \in [0, 1)` (uniform
    dequantization, Theis et al., 2016; Song et al., 2021, ``data.uniform_dequantization``):
    :math:`(x + u) / 256 \in [0, 1)`.

    Args:
      images: ``uint8`` array.
      uniform_noise: ``None`` or an array shaped like ``images`` with values in ``[0, 1)``.

    Returns:
      ``float32`` array shaped like ``images``.

    Example:
      >>> import numpy as np
      >>> to_unit_interval(np.array([0, 255], np.uint8))
      array([0., 1.], dtype=float32)
      >>> to_unit_interval(np.array([255], np.uint8), np.array([0.5]))
      array([0.9980469], dtype=float32)
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"to_unit_interval: images must be uint8, got dtype {images.dtype}.")
    if uniform_noise is None:
        return images.astype(np.float32) / np.float32(PIXEL_MAX)
    if np.shape(uniform_noise) != images.shape:
        raise ValueError(
            f"to_unit_interval: uniform_noise must have the shape of images {images.shape}, "
            f"got {np.shape(uniform_noise)}."
        )
    y = ((images.astype(np.float64) + uniform_noise) / PIXEL_LEVELS).astype(np.float32)
    # Rounding to float32 can carry x + u up to x + 1; keep y strictly inside its bin
    # [x / 256, (x + 1) / 256) so that floor(256 y) == x exactly.
    upper = np.nextafter((images.astype(np.float32) + 1) / PIXEL_LEVELS, np.float32(0))
    return np.minimum(y, upper)


def random_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips each image of an NHWC batch left-right with probability 1/2.

    Args:
      images: ``(N, H, W, C)`` array.
      rng: numpy generator that draws the ``N`` coin flips.

    Returns:
      The batch with a random subset of images mirrored along W.

    Example:
      >>> import numpy as np
      >>> x = np.arange(4).reshape(1, 1, 4, 1)
      >>> random_flip(x, np.random.default_rng(0)).ravel().tolist() in ([0, 1, 2, 3], [3, 2, 1, 0])
      True
    """
    if images.ndim != 4:
        raise ValueError(f"random_flip: images must be NHWC (4-D), got shape {images.shape}.")
    flip = rng.random(images.shape[0]) < 0.5
    return np.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def central_crop(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Crops the centre ``size`` x ``size`` (or ``(h, w)``) window of an HWC image.

    Example:
      >>> import numpy as np
      >>> central_crop(np.zeros((218, 178, 3)), 140).shape
      (140, 140, 3)
    """
    h, w = (size, size) if isinstance(size, int) else size
    height, width = image.shape[:2]
    if h > height or w > width:
        raise ValueError(
            f"central_crop: crop size {(h, w)} is larger than the image {(height, width)}."
        )
    top, left = (height - h) // 2, (width - w) // 2
    return image[top : top + h, left : left + w]


def resize(image: np.ndarray, size: tuple[int, int], method: str = "bilinear") -> np.ndarray:
    """Resizes a ``uint8`` HWC image to ``(height, width)`` with Pillow (antialiased).

    Args:
      image: ``uint8`` array ``(H, W, C)`` with ``C`` in ``{1, 3, 4}``.
      size: ``(height, width)`` of the result.
      method: ``"bilinear"``, ``"bicubic"``, ``"lanczos"``, ``"box"`` or ``"nearest"``.

    Returns:
      ``uint8`` array ``(height, width, C)``.

    Example:
      >>> import numpy as np
      >>> resize(np.zeros((32, 32, 3), np.uint8), (16, 16)).shape
      (16, 16, 3)
    """
    if method not in _RESAMPLE:
        raise ValueError(f"resize: method must be one of {sorted(_RESAMPLE)}, got {method!r}.")
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    channels = image.shape[2]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out = np.asarray(pil.resize((w, h), resample=_RESAMPLE[method]))
    return out[..., None] if channels == 1 else out


def resize_small(image: np.ndarray, size: int, method: str = "bilinear") -> np.ndarray:
    """Resizes so that the shorter side is ``size``, keeping the aspect ratio.

    Example:
      >>> import numpy as np
      >>> resize_small(np.zeros((256, 341, 3), np.uint8), 128).shape
      (128, 170, 3)
    """
    height, width = image.shape[:2]
    ratio = size / min(height, width)
    return resize(image, (round(height * ratio), round(width * ratio)), method)


def crop_resize(image: np.ndarray, size: int, method: str = "bicubic") -> np.ndarray:
    """Crops the largest central square and resizes it to ``size`` x ``size``.

    Example:
      >>> import numpy as np
      >>> crop_resize(np.zeros((256, 341, 3), np.uint8), 64).shape
      (64, 64, 3)
    """
    side = min(image.shape[:2])
    return resize(central_crop(image, side), (size, size), method)


def convert_channels(image: np.ndarray, num_channels: int) -> np.ndarray:
    """Converts an HWC ``uint8`` image to 1 (luminance) or 3 (RGB) channels.

    Example:
      >>> import numpy as np
      >>> convert_channels(np.zeros((4, 4, 1), np.uint8), 3).shape
      (4, 4, 3)
    """
    channels = image.shape[2]
    if channels == num_channels:
        return image
    if num_channels not in (1, 3):
        raise ValueError(f"convert_channels: num_channels must be 1 or 3, got {num_channels}.")
    if channels == 1:
        return np.repeat(image, 3, axis=2)
    if channels not in (3, 4):
        raise ValueError(f"convert_channels: images must have 1, 3 or 4 channels, got {channels}.")
    pil = Image.fromarray(image)
    out = np.asarray(pil.convert("L" if num_channels == 1 else "RGB"))
    return out[..., None] if num_channels == 1 else out
