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

__all__ = ["COPY_HASH_BITS", "COPY_HASH_MIN_SIDE", "COPY_PROBE_MARGIN", "COPY_THRESHOLD", "DIHEDRAL_TRANSFORMS", "HASH_BITS", "copy_hashes", "copy_pairs", "dhash",
           "dihedral", "hamming", "near_duplicate_pairs", "nearest_distances", "pack_hashes", "phash"]

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


# ----------------------------------------------------------------------------- copy detection at scale

COPY_HASH_BITS = 128
"""Bits of :func:`copy_hashes`: the 128 lowest frequencies (by ``u + v``) of a 16 x 16 DCT block."""

COPY_THRESHOLD = 12
"""The largest :func:`copy_hashes` distance (of 128 bits) that counts as a copy.

Chosen between two measured distributions, both reported by ``osteo-tf bench --only dedup``
(figures in the CHANGELOG, issue 15): the distance of copies of synthetic knee / calcaneus / DXA
radiographs to their source (flips, 90-degree rotations, brightness / contrast, JPEG
re-encoding, rescaling, and combinations), and the distance between radiographs of different
patients."""

COPY_HASH_MIN_SIDE = 32
"""Images smaller than this (px, either side) get no copy hash: the hash works on a 64 x 64
shrink, so a smaller image would be enlarged and every tiny gradient would look like every other.
Such images are still compared pixel by pixel (``sha256``)."""

COPY_PROBE_MARGIN = 0.03
"""How close (as a share of the low-frequency AC energy) an orientation cue may come to its
tipping point before both orientations are hashed (see :func:`copy_hashes`)."""

_COPY_SIZE = 16
_WORDS = COPY_HASH_BITS // 64


def _reduce(image: np.ndarray, target: int) -> np.ndarray:
    """Block-mean an image by the largest integer factor that keeps at least ``2 * target`` px per
    side (centred crop of the remainder), so shrinking a large radiograph stays cheap."""
    img = np.asarray(image, np.float64)
    k = min(img.shape) // (2 * target)
    if k < 2:
        return img
    h, w = (img.shape[0] // k) * k, (img.shape[1] // k) * k
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    img = img[top:top + h, left:left + w]
    return img.reshape(h // k, k, w // k, k).mean(axis=(1, 3))


def _orientations(a: float, b: float, tol: float) -> list[tuple[bool, bool, bool]]:
    """(transpose, flip left-right, flip up-down) choices that bring an image to its canonical
    orientation, from its first horizontal (``a``) and vertical (``b``) DCT coefficients: transpose
    when ``|b| > |a|``, then flip each axis whose coefficient is negative. A choice within ``tol``
    of its tipping point is kept both ways."""
    transposes = [abs(b) > abs(a)] if abs(abs(a) - abs(b)) > tol else [False, True]
    out = []
    for t in transposes:
        x, y = (b, a) if t else (a, b)
        lrs = [bool(x < 0)] if abs(x) > tol else [False, True]
        uds = [bool(y < 0)] if abs(y) > tol else [False, True]
        out += [(t, lr, ud) for lr in lrs for ud in uds]
    return out


def _zigzag(size: int, bits: int) -> np.ndarray:
    uu, vv = np.divmod(np.arange(size * size), size)
    return np.lexsort((np.maximum(uu, vv), uu + vv))[:bits]


_ORDER = _zigzag(_COPY_SIZE, COPY_HASH_BITS)
_SIGNS = (-1.0) ** np.arange(_COPY_SIZE)


def copy_hashes(image: np.ndarray, *, margin: float = COPY_PROBE_MARGIN) -> np.ndarray:
    """Perceptual hash of an image in its canonical orientation, which its 8 rotations / flips share.

    The image is shrunk to 64 x 64 once (block mean, then the hashes' Gaussian-prefiltered
    resize) and transformed by one 2-D DCT. A left-right flip negates the coefficients of odd
    horizontal frequency, an up-down flip those of odd vertical frequency, and a transpose swaps
    the axes, so each rotation / flip of the image is a sign pattern and a transpose of the same
    coefficients. The canonical orientation makes the first horizontal and vertical coefficients
    non-negative and the horizontal one the larger; the hash then compares the 128 lowest
    frequencies (by ``u + v``) with the median of their AC part, as :func:`phash` does. Brightness
    and contrast (a positive affine grey map) scale the AC coefficients and change neither the
    orientation nor the bits; re-encoding and rescaling move them slightly. When a cue lies within
    ``margin`` of its tipping point (a nearly symmetric image), both choices are hashed ("probes"),
    so a copy is found whichever way its own cue tips.

    Args:
        image: (H, W) grey image, any real dtype and range.
        margin: the ambiguity margin (share of the low-frequency AC energy).

    Returns:
        (P, 128) bool, 1 <= P <= 8 distinct hashes (P > 1 only for near-symmetric images);
        (0, 128) for an image smaller than :data:`COPY_HASH_MIN_SIDE` or of constant value.
    """
    from scipy import fft as sfft

    img = np.asarray(image, np.float64)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"image must be a non-empty 2-D (H, W) array. Received: image.shape={np.shape(image)}")
    if not 0.0 <= float(margin) < 1.0:
        raise ValueError(f"margin must be in [0, 1). Received: margin={margin!r}")
    empty = np.zeros((0, COPY_HASH_BITS), bool)
    if min(img.shape) < COPY_HASH_MIN_SIDE:
        return empty
    n = 4 * _COPY_SIZE
    small = _downsample(_reduce(img, n), (n, n))
    coef = sfft.dctn(small - small.mean(), type=2, norm="ortho")[:_COPY_SIZE, :_COPY_SIZE]
    scale = float(np.sqrt((coef.ravel()[_ORDER][1:] ** 2).sum()))
    if not np.isfinite(scale) or scale <= 1e-9:
        return empty
    rows = []
    for transpose, lr, ud in _orientations(float(coef[0, 1]), float(coef[1, 0]), margin * scale):
        c = coef.T if transpose else coef
        if lr:
            c = c * _SIGNS[None, :]
        if ud:
            c = c * _SIGNS[:, None]
        flat = c.ravel()[_ORDER]
        rows.append(flat > np.median(flat[1:]))
    return np.unique(np.stack(rows), axis=0)


def pack_hashes(hashes: np.ndarray) -> np.ndarray:
    """(N, 128) bool hashes as (N, 2) uint64 words (for :func:`copy_pairs`)."""
    h = _as_hashes(hashes, "hashes")
    if h.shape[1] != COPY_HASH_BITS:
        raise ValueError(f"hashes must have {COPY_HASH_BITS} bits. Received: hashes.shape={h.shape}")
    return np.packbits(h, axis=1).view(">u8").astype(np.uint64).reshape(len(h), _WORDS)


def _check_words(words: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = np.ascontiguousarray(words, dtype=np.uint64)
    own = np.asarray(owners, dtype=np.int64).ravel()
    if w.ndim != 2 or w.shape[1] != _WORDS or len(own) != len(w):
        raise ValueError(f"words must be an (M, {_WORDS}) uint64 array (pack_hashes) and owners (M,). "
                         f"Received: words.shape={w.shape}, owners.shape={own.shape}")
    return w, own


def _distances(w: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    d = np.bitwise_count(w[rows, None, 0] ^ w[None, cols, 0])
    for k in range(1, _WORDS):
        d += np.bitwise_count(w[rows, None, k] ^ w[None, cols, k])
    return d


def copy_pairs(words: np.ndarray, owners: np.ndarray, *, threshold: int = COPY_THRESHOLD,
               block_elements: int = 1 << 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of images with two hashes within ``threshold`` bits, in one vectorised pass.

    The hashes are compared block by block, a block of rows against every later hash (XOR, then
    ``np.bitwise_count``), so the work is the M x M / 2 comparisons of the M hashes while memory
    stays about ``block_elements`` comparisons. No Python loop runs per pair.

    Args:
        words: (M, 2) uint64, the packed hashes (:func:`pack_hashes`) of all images; an image may
            own several (:func:`copy_hashes` probes).
        owners: (M,) int, the image each hash belongs to.
        threshold: the largest Hamming distance that counts as a copy.
        block_elements: comparisons held in memory at once.

    Returns:
        ``(a, b, distance)``: int arrays, one entry per image pair ``a < b`` (each pair once, with
        its smallest distance), sorted by ``(a, b)``.
    """
    w, own = _check_words(words, owners)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) or not 0 <= threshold <= COPY_HASH_BITS:
        raise ValueError(f"threshold must be an integer in [0, {COPY_HASH_BITS}]. Received: threshold={threshold!r}")
    m = len(w)
    found_a, found_b, found_d = [], [], []
    start = 0
    while start < m:
        stop = min(m, start + max(1, block_elements // max(m - start, 1)))
        d = _distances(w, slice(start, stop), slice(start, m))
        ii, jj = np.nonzero(d <= threshold)
        keep = jj > ii  # (row start + ii) < (start + jj): the upper triangle only
        ii, jj = ii[keep], jj[keep]
        if len(ii):
            found_d.append(d[ii, jj].astype(np.int64))
            found_a.append(own[ii + start])
            found_b.append(own[jj + start])
        start = stop
    if not found_a:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    a, b, dist = np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_d)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = lo != hi
    lo, hi, dist = lo[keep], hi[keep], dist[keep]
    order = np.lexsort((dist, hi, lo))
    lo, hi, dist = lo[order], hi[order], dist[order]
    first = np.ones(len(lo), bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[first], hi[first], dist[first]


def nearest_distances(words: np.ndarray, owners: np.ndarray, n: int, *,
                      block_elements: int = 1 << 20) -> np.ndarray:
    """(n,) int: each image's smallest hash distance to any OTHER image (``COPY_HASH_BITS + 1``
    when it has no hash or no other image does). The same blocked pass as :func:`copy_pairs`."""
    w, own = _check_words(words, owners)
    best = np.full(n, COPY_HASH_BITS + 1, np.int64)
    m = len(w)
    start = 0
    while start < m:
        stop = min(m, start + max(1, block_elements // max(m, 1)))
        d = _distances(w, slice(start, stop), slice(0, m)).astype(np.int64)
        d[own[start:stop, None] == own[None, :]] = COPY_HASH_BITS + 1
        np.minimum.at(best, own[start:stop], d.min(axis=1))
        start = stop
    return best
