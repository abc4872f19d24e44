"""Embedded datasets that need no download: scikit-learn's 8x8 digits and 2-D toy distributions.

- :func:`digits_images`: the 1,797 handwritten digits (8 x 8, 17 grey levels) that ship with
  scikit-learn, as ``uint8`` single-channel images, resized or zero-padded to any size.
- :func:`toy2d_samples`: a fixed, seeded sample of a 2-D distribution: ``"checkerboard"``,
  ``"two_moons"`` or ``"gaussian_mixture"`` (8 Gaussians on a circle, whose exact diffused
  score is :func:`toy2d_mixture`'s).
"""

from __future__ import annotations

import math

import numpy as np

from scoresde.data import transforms

#: Images of scikit-learn's digits set that form the ``"train"`` split; the rest (297) are
#: ``"test"``. The set is ordered by writer, so this is a split by writer, like MNIST's.
DIGITS_NUM_TRAIN = 1500
#: Grey levels of the digits: pixel values 0..16.
DIGITS_MAX_VALUE = 16
#: Names of the 2-D toy distributions.
TOY2D_NAMES = ("checkerboard", "two_moons", "gaussian_mixture")
#: Gaussian mixture: number of modes, radius of the circle they sit on, and their std.
MIXTURE_MODES = 8
MIXTURE_RADIUS = 2.0
MIXTURE_STD = 0.2
#: Two moons: std of the Gaussian noise added to the arcs.
MOONS_NOISE = 0.1


def digits_images(split: str = "train", image_size: int = 8, mode: str = "resize") -> np.ndarray:
    """scikit-learn's 8x8 digits as ``uint8`` images ``(N, image_size, image_size, 1)``.

    Pixel values ``v`` in ``0..16`` become ``round(255 v / 16)``.

    Args:
      split: ``"train"`` (first 1,500 images), ``"test"`` (the other 297) or ``"all"``.
      image_size: side of the returned images; at least 8.
      mode: ``"resize"`` (antialiased bicubic) or ``"pad"`` (zero border, digit centred).

    Returns:
      ``uint8`` array ``(N, image_size, image_size, 1)``.

    Example:
      >>> digits_images("test", 16).shape
      (297, 16, 16, 1)
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test", "all"):
        raise ValueError(f"digits_images: split must be 'train', 'test' or 'all', got {split!r}.")
    if mode not in ("resize", "pad"):
        raise ValueError(f"digits_images: mode must be 'resize' or 'pad', got {mode!r}.")
    if not isinstance(image_size, int | np.integer) or image_size < 8:
        raise ValueError(f"digits_images: image_size must be an int >= 8, got {image_size!r}.")
    raw = load_digits().images  # (1797, 8, 8) floats in 0..16
    images = np.round(raw * (transforms.PIXEL_MAX / DIGITS_MAX_VALUE)).astype(np.uint8)[..., None]
    if split == "train":
        images = images[:DIGITS_NUM_TRAIN]
    elif split == "test":
        images = images[DIGITS_NUM_TRAIN:]
    if image_size == 8:
        return images
    if mode == "pad":
        before = (image_size - 8) // 2
        after = image_size - 8 - before
        return np.pad(images, ((0, 0), (before, after), (before, after), (0, 0)))
    return np.stack([transforms.resize(im, (image_size, image_size), "bicubic") for im in images])


def toy2d_mixture():
    """The ``"gaussian_mixture"`` toy as a :class:`scoresde.GaussianMixture` (exact scores).

    Eight equally weighted isotropic Gaussians (std 0.2) at angles ``2 pi k / 8`` on the
    circle of radius 2.

    Example:
      >>> toy2d_mixture().means.shape
      (8, 2)
    """
    import jax.numpy as jnp

    from scoresde.mixture import GaussianMixture

    angles = 2.0 * math.pi * np.arange(MIXTURE_MODES) / MIXTURE_MODES
    means = MIXTURE_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    weights = np.full(MIXTURE_MODES, 1.0 / MIXTURE_MODES)
    return GaussianMixture.isotropic(
        jnp.asarray(weights, jnp.float32), jnp.asarray(means, jnp.float32), MIXTURE_STD
    )


def toy2d_samples(name: str, num_samples: int, seed: int = 0) -> np.ndarray:
    """A seeded sample ``(num_samples, 2)`` (``float32``) of a 2-D toy distribution.

    - ``"checkerboard"``: uniform on the 8 dark squares of a 4 x 4 board on ``[-2, 2]^2``.
    - ``"two_moons"``: two interleaved half circles (radius 1) with Gaussian noise 0.1,
      shifted to be centred at the origin.
    - ``"gaussian_mixture"``: :func:`toy2d_mixture`.

    Args:
      name: one of :data:`TOY2D_NAMES`.
      num_samples: number of points.
      seed: seed of the numpy generator; equal seeds give equal samples.

    Returns:
      ``float32`` array ``(num_samples, 2)``.

    Example:
      >>> x = toy2d_samples("checkerboard", 1000)
      >>> x.shape, bool(abs(x).max() <= 2.0)
      ((1000, 2), True)
    """
    if name not in TOY2D_NAMES:
        raise ValueError(f"toy2d_samples: name must be one of {TOY2D_NAMES}, got {name!r}.")
    if not isinstance(num_samples, int | np.integer) or num_samples < 1:
        raise ValueError(f"toy2d_samples: num_samples must be a positive int, got {num_samples!r}.")
    rng = np.random.default_rng(seed)
    if name == "checkerboard":
        # Pick a column (4 of width 1 in [-2, 2)), then one of the 2 dark squares in it:
        # square (i, j) is dark when i + j is even.
        col = rng.integers(0, 4, num_samples)
        row = 2 * rng.integers(0, 2, num_samples) + (col % 2)
        x = np.stack([col, row], axis=1) + rng.random((num_samples, 2)) - 2.0
    elif name == "two_moons":
        upper = rng.random(num_samples) < 0.5
        theta = math.pi * rng.random(num_samples)
        x = np.where(
            upper[:, None],
            np.stack([np.cos(theta), np.sin(theta)], axis=1),
            np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], axis=1),
        )
        x = x - np.array([0.5, 0.25]) + MOONS_NOISE * rng.standard_normal((num_samples, 2))
    else:
        mixture = toy2d_mixture()
        means = np.asarray(mixture.means)
        component = rng.integers(0, MIXTURE_MODES, num_samples)
        x = means[component] + MIXTURE_STD * rng.standard_normal((num_samples, 2))
    return x.astype(np.float32)
