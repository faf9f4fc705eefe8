"""Perceptual hashes of grey images and the near-duplicate search on them (public in ``datasets``).

A perceptual hash maps an image to a short bit string that changes little under the edits that
keep an image "the same" for a reader (brightness, contrast, re-encoding, rescaling, mild
sharpening) and a lot between different images, so the Hamming distance between two hashes
measures how alike two images look. Two hashes are given, both computed with NumPy / SciPy:

* :func:`phash`: the DCT hash (low spatial frequencies compared with their median);
* :func:`dhash`: the difference hash (brightness gradients between horizontal neighbours).

Neither is invariant to rotations and flips, so :func:`dihedral` gives the 8 rotations / flips of
an image and :func:`near_duplicate_pairs` compares each hash with every other image's 8
transformed hashes. The module is private: ``osteo_tf.datasets`` exposes its public names.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["DIHEDRAL_TRANSFORMS", "HASH_BITS", "dhash", "dihedral", "hamming", "near_duplicate_pairs", "phash"]

HASH_BITS = 64
"""Bits of :func:`phash` and :func:`dhash` with their default ``size=8`` (8 x 8)."""

DIHEDRAL_TRANSFORMS = ("identity", "flip", "rot90", "rot90+flip", "rot180", "rot180+flip", "rot270",
                       "rot270+flip")
"""Names of :func:`dihedral`'s outputs, in order (``rotK`` = ``np.rot90(image, K // 90)``, ``+flip``
then mirrors left-right)."""


def _downsample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The hashes' own shrinking to a few pixels: Gaussian prefilter against aliasing, then
    linear interpolation (float64).

    It is part of the hashes' definition (a different resize gives different bits, and so other
    distances between the same images), which is why it is not ``preprocessing.resize``.
    """
    from scipy import ndimage  # imported here: scipy.ndimage would slow every `import osteo_tf.datasets`

    img = np.asarray(image, np.float64)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"image must be a non-empty 2-D (H, W) array. Received: image.shape={np.shape(image)}")
    sig = [max(s / t / 2.0 - 0.5, 0.0) for s, t in zip(img.shape, shape)]
    if any(sig):
        img = ndimage.gaussian_filter(img, sig, mode="nearest")
    zoom = [t / s for s, t in zip(img.shape, shape)]
    out = ndimage.zoom(img, zoom, order=1, mode="nearest", grid_mode=True)
    return out[: shape[0], : shape[1]]


def _check_size(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
        raise ValueError(f"{name} must be an integer >= 2. Received: {name}={value!r}")
    return int(value)


def dhash(image: np.ndarray, *, size: int = 8) -> np.ndarray:
    """Difference hash: shrink to ``size x (size + 1)``, compare each pixel with its right neighbour.

    Args:
        image: (H, W) grey image, any real dtype and range.
        size: bits per side (``size * size`` bits in all).

    Returns:
        (size * size,) bool.

    Raises:
        ValueError: a non-2-D or empty image, or ``size`` below 2.
    """
    size = _check_size(size, "size")
    small = _downsample(image, (size, size + 1))
    return (small[:, 1:] > small[:, :-1]).ravel()


def phash(image: np.ndarray, *, size: int = 8, factor: int = 4) -> np.ndarray:
    """DCT perceptual hash: shrink to ``factor * size`` square, 2-D DCT, keep the lowest
    ``size x size`` frequencies and threshold them at the median of the non-DC ones.

    Invariant to brightness and contrast changes (a monotone affine grey map leaves the signs of
    the AC coefficients relative to their median nearly unchanged).

    Args:
        image: (H, W) grey image, any real dtype and range.
        size: frequencies kept per axis (``size * size`` bits).
        factor: the shrunk image is ``factor * size`` pixels square.

    Returns:
        (size * size,) bool.

    Raises:
        ValueError: a non-2-D or empty image, or ``size`` or ``factor`` below 2.
    """
    from scipy import fft as sfft

    size = _check_size(size, "size")
    factor = _check_size(factor, "factor")
    n = size * factor
    small = _downsample(image, (n, n))
    coef = sfft.dctn(small - small.mean(), type=2, norm="ortho")[:size, :size]
    ac = coef.ravel()[1:]
    return coef.ravel() > np.median(ac)


def dihedral(image: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations / flips of an image, in the order of :data:`DIHEDRAL_TRANSFORMS`.

    Args:
        image: an array of at least 2 dimensions (the first two are rotated).

    Returns:
        8 views of ``image`` (identity first), not copies.
    """
    img = np.asarray(image)
    if img.ndim < 2:
        raise ValueError(f"image must have at least 2 dimensions. Received: image.shape={img.shape}")
    out = []
    for k in range(4):
        r = np.rot90(img, k)
        out += [r, np.fliplr(r)]
    return out


def _as_hashes(value: object, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 2 or arr.dtype != bool:
        raise ValueError(f"{name} must be an (N, B) bool array of hash rows. "
                         f"Received: {name} with shape {arr.shape} and dtype {arr.dtype}")
    return arr


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between hash rows.

    Args:
        a: (N, B) bool hashes.
        b: (M, B) bool hashes of the same length B.

    Returns:
        (N, M) int: how many of the B bits differ between ``a[i]`` and ``b[j]``.

    Raises:
        ValueError: inputs that are not 2-D bool arrays, or hashes of different lengths.
    """
    a, b = _as_hashes(a, "a"), _as_hashes(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must hold hashes of the same length. Received: a.shape={a.shape}, b.shape={b.shape}")
    a, b = a.astype(np.int32), b.astype(np.int32)
    return a @ (1 - b).T + (1 - a) @ b.T


def near_duplicate_pairs(hashes: np.ndarray, variants: np.ndarray, *, threshold: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Pairs of images whose hash distance, minimised over the 8 rotations / flips, is <= ``threshold``.

    The distance of images i and j is ``min_t hamming(hashes[i], variants[j, t])``, made symmetric
    by taking the smaller of the (i, j) and (j, i) values. Memory and time grow as N x N x 8, fine
    for the few thousand images of a dataset card.

    Args:
        hashes: (N, B) bool, one hash per image (e.g. :func:`phash` of each image).
        variants: (N, 8, B) bool, the same hash of each image's :func:`dihedral` transforms
            (identity first).
        threshold: the largest distance (0 to B) that counts as a near-duplicate.

    Returns:
        ``(pairs, nearest)``. ``pairs``: one row per pair with columns ``a`` < ``b`` (image
        indices), ``distance`` and ``transform`` (the :data:`DIHEDRAL_TRANSFORMS` name of the
        transform of image ``b`` closest to image ``a``), in row-major (a, b) order. ``nearest``:
        (N,) int, each image's distance to its nearest OTHER image (all zeros when N < 2).

    Raises:
        ValueError: misshaped or non-bool inputs, or a ``threshold`` outside 0..B.
    """
    hashes = _as_hashes(hashes, "hashes")
    n, bits = hashes.shape
    v = np.asarray(variants)
    if v.shape != (n, len(DIHEDRAL_TRANSFORMS), bits) or v.dtype != bool:
        raise ValueError(f"variants must be an (N, 8, B) bool array matching hashes {hashes.shape}. "
                         f"Received: variants with shape {v.shape} and dtype {v.dtype}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) or not 0 <= threshold <= bits:
        raise ValueError(f"threshold must be an integer in [0, {bits}]. Received: threshold={threshold!r}")
    columns = ["a", "b", "distance", "transform"]
    if n < 2:
        return pd.DataFrame(columns=columns), np.zeros(n, int)
    # dists[i, j, t] = distance between image i and transform t of image j
    dists = hamming(hashes, v.reshape(n * len(DIHEDRAL_TRANSFORMS), bits)).reshape(n, n, len(DIHEDRAL_TRANSFORMS))
    best_t = dists.argmin(axis=2)
    best = dists.min(axis=2)
    best = np.minimum(best, best.T)
    np.fill_diagonal(best, bits + 1)
    nearest = best.min(axis=1)
    ii, jj = np.nonzero(np.triu(best <= threshold, k=1))
    pairs = pd.DataFrame({"a": ii.astype(int), "b": jj.astype(int), "distance": best[ii, jj].astype(int),
                          "transform": [DIHEDRAL_TRANSFORMS[int(t)] for t in best_t[ii, jj]]}, columns=columns)
    return pairs, nearest
