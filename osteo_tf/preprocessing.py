"""Per-image preprocessing for radiographs: denoising, contrast, ROI cropping, resizing, caching.

Every public image function is pure, takes the image first and its options keyword-only, and
returns a new ``(H, W) float32`` array in ``[0, 1]``. Preprocessing can also be described as
data, a list of ``(step_name, params)`` pairs run by :func:`apply_steps` with the functions of
the :data:`STEPS` registry, and expensive steps (BM3D: about 3 s per 224x224 image on one core)
can be run in parallel through a content-addressed disk cache with :func:`map_cached` and
:func:`cached_apply_steps`.

Input conversion rule (applied by every image function):

* the image must be a 2-D (H, W) array with finite values;
* floating point (float16/32/64) must already lie in ``[0, 1]`` and is cast to float32
  (a float image in 0-255 is rejected rather than silently clipped);
* ``uint8`` is divided by 255 and ``uint16`` by 65535 (their full ranges map onto ``[0, 1]``);
* every other dtype (bool, signed ints, other unsigned ints, complex, object) is rejected
  with a ``TypeError``: its intended range is ambiguous. Convert it explicitly first.

:func:`minmax_scale` is the one exception: it accepts any finite real 2-D array (it exists to
map arbitrary ranges onto ``[0, 1]``). Mask functions take boolean (or 0/1) 2-D arrays.

The functions keep no state. The third-party ``bm3d`` package is licensed for non-commercial
use only.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import math
import multiprocessing
import os
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
from scipy import ndimage

from osteo_tf import config

__all__ = [
    "STEPS",
    "DiskCache",
    "add_gaussian_noise",
    "adjust_contrast_brightness",
    "apply_steps",
    "bm3d_denoise",
    "bone_mask",
    "cached_apply_steps",
    "clahe",
    "equalize_hist",
    "estimate_noise_sigma",
    "gaussian_denoise",
    "largest_component",
    "map_cached",
    "mean_filter",
    "median_filter",
    "minmax_scale",
    "nlmeans_denoise",
    "psnr",
    "resize",
    "roi_bbox",
    "roi_crop",
    "smudge",
    "ssim",
    "unsharp_sharpen",
]

_BM3D_PROFILES = ("np", "lc")
_INTERPOLATIONS = {
    "area": cv2.INTER_AREA,
    "bilinear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
}
_RANGE_TOL = 1e-6


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------
def _as_image(image: Any, name: str = "image") -> np.ndarray:
    """Validate ``image`` and convert it to a float32 (H, W) array in [0, 1] (module rule)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy array of shape (H, W). "
            f"Received: {name} of type {type(image).__name__}"
        )
    if image.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (H, W) grey image; squeeze or convert channels first. "
            f"Received: {name}.shape={image.shape}"
        )
    if image.size == 0:
        raise ValueError(f"{name} must not be empty. Received: {name}.shape={image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    if image.dtype == np.uint16:
        return image.astype(np.float32) / np.float32(65535.0)
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(
            f"{name} must be float in [0, 1], uint8 or uint16. "
            f"Received: {name}.dtype={image.dtype}"
        )
    out = image.astype(np.float32, copy=True)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} must contain only finite values. Received: NaN or inf in {name}")
    lo, hi = float(out.min()), float(out.max())
    if lo < -_RANGE_TOL or hi > 1.0 + _RANGE_TOL:
        raise ValueError(
            f"{name} must lie in [0, 1] when floating point (use minmax_scale or divide by the "
            f"bit depth first). Received: {name} with min={lo:.6g}, max={hi:.6g}"
        )
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _as_mask(mask: Any, name: str = "mask") -> np.ndarray:
    """Validate a 2-D boolean (or 0/1 numeric) mask and return it as bool."""
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{name} must be a numpy array. Received: {name} of type {type(mask).__name__}")
    if mask.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W). Received: {name}.shape={mask.shape}")
    if mask.dtype == bool:
        return mask
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise TypeError(f"{name} must be bool or 0/1 numbers. Received: {name}.dtype={mask.dtype}")
    if not np.all(np.isin(mask, (0, 1))):
        raise ValueError(f"{name} must hold only 0 and 1. Received: values {np.unique(mask)[:5]}...")
    return mask.astype(bool)


def _check_positive_odd(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1 or value % 2 == 0:
        raise ValueError(f"{name} must be a positive odd integer. Received: {name}={value!r}")
    return int(value)


def _check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                  low_inclusive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number. Received: {name}={value!r}")
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad = bad or (value < low if low_inclusive else value <= low)
    if high is not None:
        bad = bad or value > high
    if bad:
        lo_s = "-inf" if low is None else f"{low:g}"
        hi_s = "inf" if high is None else f"{high:g}"
        bracket = "[" if low_inclusive else "("
        raise ValueError(f"{name} must be a finite number in {bracket}{lo_s}, {hi_s}]. Received: {name}={value!r}")
    return value


def _check_same_shape(reference: np.ndarray, image: np.ndarray) -> None:
    if reference.shape != image.shape:
        raise ValueError(
            "reference and image must have the same shape. "
            f"Received: reference.shape={reference.shape}, image.shape={image.shape}"
        )


# --------------------------------------------------------------------------------------------
# Noise, metrics and denoisers
# --------------------------------------------------------------------------------------------
def estimate_noise_sigma(image: np.ndarray) -> float:
    """Estimate the standard deviation of additive Gaussian noise.

    Wavelet-based robust median estimator (``skimage.restoration.estimate_sigma``, Donoho).

    Args:
        image: (H, W) float32 in [0, 1] (uint8/uint16 converted by the module rule).

    Returns:
        The noise standard deviation in the image's [0, 1] units (a Python float >= 0).
    """
    from skimage.restoration import estimate_sigma

    img = _as_image(image)
    return float(estimate_sigma(img.astype(np.float64), channel_axis=None))


def add_gaussian_noise(image: np.ndarray, *, sigma: float, seed: int, clip: bool = True) -> np.ndarray:
    """Add zero-mean white Gaussian noise of known standard deviation.

    Args:
        image: (H, W) float32 in [0, 1].
        sigma: noise standard deviation in [0, 1] units (e.g. 0.1 = 10% of the range).
        seed: seed of ``numpy.random.default_rng``; same seed, same noise.
        clip: clip the result to [0, 1] (keeps the module's range contract; slightly lowers
            the effective noise near black and white).

    Returns:
        (H, W) float32; in [0, 1] when ``clip``.
    """
    img = _as_image(image)
    sigma = _check_number(sigma, "sigma", low=0.0)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer. Received: seed={seed!r}")
    rng = np.random.default_rng(int(seed))
    noisy = img + rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    if clip:
        np.clip(noisy, 0.0, 1.0, out=noisy)
    return noisy.astype(np.float32)


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB with a data range of 1: ``10 log10(1 / MSE)``.

    Args:
        reference: (H, W) float32 in [0, 1], the clean image.
        image: (H, W) float32 in [0, 1], same shape.

    Returns:
        PSNR in dB; ``inf`` for identical images.
    """
    ref = _as_image(reference, "reference")
    img = _as_image(image, "image")
    _check_same_shape(ref, img)
    mse = float(np.mean((ref.astype(np.float64) - img.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(ref, img, data_range=1.0))


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    """Structural similarity (``skimage.metrics.structural_similarity``, data_range=1, 7x7 window).

    Args:
        reference: (H, W) float32 in [0, 1], at least 7x7.
        image: (H, W) float32 in [0, 1], same shape.

    Returns:
        Mean SSIM in [-1, 1]; 1.0 for identical images.
    """
    from skimage.metrics import structural_similarity

    ref = _as_image(reference, "reference")
    img = _as_image(image, "image")
    _check_same_shape(ref, img)
    if min(ref.shape) < 7:
        raise ValueError(f"ssim needs images of at least 7x7 pixels. Received: shape={ref.shape}")
    return float(structural_similarity(ref, img, data_range=1.0))


def bm3d_denoise(image: np.ndarray, *, sigma: float | None = None, profile: str = "np", threads: int = 1) -> np.ndarray:
    """Denoise with BM3D (``bm3d`` package; non-commercial licence).

    Args:
        image: (H, W) float32 in [0, 1].
        sigma: noise standard deviation in the image's [0, 1] units (``sigma_psd``). ``None``
            estimates it with :func:`estimate_noise_sigma`.
        profile: ``"np"`` (normal profile) or ``"lc"`` (low-complexity ``BM3DProfileLC()``,
            roughly 2x faster, slightly lower PSNR).
        threads: threads of the BM3D library for this one image. 1 (default) is bit-reproducible
            and lets :func:`map_cached` parallelize over images, one image per core; 0 is the
            library's own default (every core on one image), whose aggregation order varies, so
            repeat calls differ by ~3e-7 (bm4d's profile note; measured here on a 64 px image).

    Returns:
        (H, W) float32 in [0, 1]. About 3 s per 224x224 image on one core (profile ``"np"``;
        ``"lc"`` about half): use :func:`map_cached` for datasets.

    Raises:
        TypeError, ValueError: ``image`` breaks the module's input rule, ``sigma`` is negative
            or not finite, or ``profile`` is not ``"np"``/``"lc"``.
    """
    img = _as_image(image)
    if profile not in _BM3D_PROFILES:
        raise ValueError(f"profile must be one of {_BM3D_PROFILES}. Received: profile={profile!r}")
    if sigma is None:
        sigma = estimate_noise_sigma(img)
    sigma = _check_number(sigma, "sigma", low=0.0)
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 0:
        raise ValueError(f"threads must be a non-negative integer (0 = all cores). Received: threads={threads!r}")
    if sigma == 0.0:
        return img
    import bm3d

    bm3d_profile = bm3d.BM3DProfileLC() if profile == "lc" else bm3d.BM3DProfile()
    bm3d_profile.num_threads = int(threads)
    out = bm3d.bm3d(img.astype(np.float64), sigma_psd=sigma, profile=bm3d_profile)
    out = np.asarray(out).reshape(img.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def nlmeans_denoise(image: np.ndarray, *, h: float | None = None, bit_depth: int = 8,
                    template_window: int = 7, search_window: int = 21) -> np.ndarray:
    """Denoise with OpenCV non-local means (``cv2.fastNlMeansDenoising``).

    OpenCV only accepts integer images, so the [0, 1] image is quantized: ``bit_depth=8``
    rounds to uint8 and uses the L2 patch distance (OpenCV's default, best tested);
    ``bit_depth=16`` rounds to uint16 and uses the L1 distance (the only norm OpenCV allows
    for 16-bit), keeping the precision of 16-bit radiographs. The result is rescaled to [0, 1].

    Args:
        image: (H, W) float32 in [0, 1].
        h: filter strength in the image's [0, 1] units (scaled by 255 or 65535 for OpenCV).
            ``None`` uses the estimated noise sigma (:func:`estimate_noise_sigma`) for
            ``bit_depth=8`` and 0.8 x sigma for ``bit_depth=16`` (the L1 weights peak lower;
            measured on a sigma=0.1 test image: 28.1 dB for both, from 20.0 dB noisy).
        bit_depth: 8 or 16, see above.
        template_window: odd patch size in pixels.
        search_window: odd search window size in pixels.

    Returns:
        (H, W) float32 in [0, 1], quantized to ``bit_depth`` levels.
    """
    img = _as_image(image)
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16. Received: bit_depth={bit_depth!r}")
    template_window = _check_positive_odd(template_window, "template_window")
    search_window = _check_positive_odd(search_window, "search_window")
    if h is None:
        h = estimate_noise_sigma(img) * (1.0 if bit_depth == 8 else 0.8)
    h = _check_number(h, "h", low=0.0)
    scale = 255.0 if bit_depth == 8 else 65535.0
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    src = np.round(img * scale).astype(dtype)
    if h == 0.0:
        return (src.astype(np.float32) / np.float32(scale))
    if bit_depth == 8:
        out = cv2.fastNlMeansDenoising(
            src, h=h * scale, templateWindowSize=template_window, searchWindowSize=search_window
        )
    else:
        out = cv2.fastNlMeansDenoising(
            src, h=[h * scale], templateWindowSize=template_window,
            searchWindowSize=search_window, normType=cv2.NORM_L1,
        )
    return out.astype(np.float32) / np.float32(scale)


def gaussian_denoise(image: np.ndarray, *, sigma: float = 1.0) -> np.ndarray:
    """Gaussian blur (``scipy.ndimage.gaussian_filter``, mirror-reflected borders).

    Args:
        image: (H, W) float32 in [0, 1].
        sigma: kernel standard deviation in pixels (> 0; 0 returns the image).

    Returns:
        (H, W) float32 in [0, 1].
    """
    img = _as_image(image)
    sigma = _check_number(sigma, "sigma", low=0.0)
    if sigma == 0.0:
        return img
    out = ndimage.gaussian_filter(img, sigma=sigma, mode="reflect")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def mean_filter(image: np.ndarray, *, size: int = 3) -> np.ndarray:
    """Box (mean) filter of ``size`` x ``size`` pixels, half-sample symmetric borders.

    Args:
        image: (H, W) float32 in [0, 1].
        size: odd window size in pixels.

    Returns:
        (H, W) float32 in [0, 1].
    """
    img = _as_image(image)
    size = _check_positive_odd(size, "size")
    out = ndimage.uniform_filter(img.astype(np.float64), size=size, mode="reflect")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def median_filter(image: np.ndarray, *, size: int = 3) -> np.ndarray:
    """Median filter of ``size`` x ``size`` pixels (removes salt-and-pepper outliers).

    Args:
        image: (H, W) float32 in [0, 1].
        size: odd window size in pixels.

    Returns:
        (H, W) float32 in [0, 1].
    """
    img = _as_image(image)
    size = _check_positive_odd(size, "size")
    return ndimage.median_filter(img, size=size, mode="reflect").astype(np.float32)


def smudge(image: np.ndarray, *, size: int = 15) -> np.ndarray:
    """Study 03 "smudging": a mean filter with a large window (:func:`mean_filter`).

    Args:
        image: (H, W) float32 in [0, 1].
        size: odd window size in pixels.

    Returns:
        (H, W) float32 in [0, 1].
    """
    return mean_filter(image, size=size)


# --------------------------------------------------------------------------------------------
# Intensity
# --------------------------------------------------------------------------------------------
def equalize_hist(image: np.ndarray, *, nbins: int = 256) -> np.ndarray:
    """Global histogram equalization (``skimage.exposure.equalize_hist``).

    Args:
        image: (H, W) float32 in [0, 1].
        nbins: histogram bins.

    Returns:
        (H, W) float32 in [0, 1], a non-decreasing function of the input grey level. A
        constant image is returned unchanged.
    """
    from skimage import exposure

    img = _as_image(image)
    if img.min() == img.max():
        return img
    return exposure.equalize_hist(img, nbins=nbins).astype(np.float32)


def clahe(image: np.ndarray, *, clip_limit: float = 0.01, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalization (``skimage.exposure.equalize_adapthist``).

    Args:
        image: (H, W) float32 in [0, 1].
        clip_limit: normalized clip limit in (0, 1]; higher gives more contrast.
        tile_grid: number of tiles along each axis (kernel size = dimension // tile_grid).

    Returns:
        (H, W) float32 in [0, 1].
    """
    from skimage import exposure

    img = _as_image(image)
    clip_limit = _check_number(clip_limit, "clip_limit", low=0.0, high=1.0, low_inclusive=False)
    if isinstance(tile_grid, bool) or not isinstance(tile_grid, (int, np.integer)) or tile_grid < 1:
        raise ValueError(f"tile_grid must be a positive integer. Received: tile_grid={tile_grid!r}")
    kernel = (max(1, img.shape[0] // int(tile_grid)), max(1, img.shape[1] // int(tile_grid)))
    out = exposure.equalize_adapthist(img, kernel_size=kernel, clip_limit=clip_limit)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def adjust_contrast_brightness(image: np.ndarray, *, contrast: float = 0.0,
                               brightness: float = 0.0) -> np.ndarray:
    """Change contrast around the mean grey, then brightness multiplicatively (PIL ImageEnhance).

    With ``m = mean(image)``::

        y   = clip(m + (image - m) * (1 + contrast), 0, 1)   # ImageEnhance.Contrast
        out = clip(y * (1 + brightness), 0, 1)                # ImageEnhance.Brightness

    so ``contrast=0.3`` is "+30% contrast" and ``brightness=-0.3`` "-30% brightness" (study 01).
    Without clipping the two operations commute. (Study 01's paper says it changed contrast
    "using histogram equalization"; this is the ImageEnhance reading of "+30%".)

    Args:
        image: (H, W) float32 in [0, 1].
        contrast: relative contrast change, > -1 (0 = unchanged, -1 would give a flat image).
        brightness: relative brightness change, >= -1 (-1 gives black).

    Returns:
        (H, W) float32 in [0, 1].
    """
    img = _as_image(image)
    contrast = _check_number(contrast, "contrast", low=-1.0, low_inclusive=False)
    brightness = _check_number(brightness, "brightness", low=-1.0)
    x = img.astype(np.float64)
    mean = float(x.mean())
    y = np.clip(mean + (x - mean) * (1.0 + contrast), 0.0, 1.0)
    out = np.clip(y * (1.0 + brightness), 0.0, 1.0)
    return out.astype(np.float32)


def unsharp_sharpen(image: np.ndarray, *, amount: float = 0.5, radius: float = 3.0) -> np.ndarray:
    """Unsharp mask: ``clip(image + amount * (image - gaussian(image, radius)), 0, 1)``.

    Study 01: sharpness +50% with radius 3 -> ``amount=0.5, radius=3``.

    Args:
        image: (H, W) float32 in [0, 1].
        amount: strength (>= 0; 0 returns the image).
        radius: standard deviation of the Gaussian blur in pixels (> 0).

    Returns:
        (H, W) float32 in [0, 1].
    """
    img = _as_image(image)
    amount = _check_number(amount, "amount", low=0.0)
    radius = _check_number(radius, "radius", low=0.0, low_inclusive=False)
    x = img.astype(np.float64)
    blurred = ndimage.gaussian_filter(x, sigma=radius, mode="reflect")
    return np.clip(x + amount * (x - blurred), 0.0, 1.0).astype(np.float32)


def minmax_scale(image: np.ndarray) -> np.ndarray:
    """Rescale linearly so the minimum becomes 0 and the maximum 1.

    Args:
        image: (H, W) array of any finite real dtype (not restricted to [0, 1]).

    Returns:
        (H, W) float32 in [0, 1]; all zeros for a constant image.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array. Received: image of type {type(image).__name__}")
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"image must be a non-empty 2-D (H, W) array. Received: image.shape={image.shape}")
    if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"image must hold real numbers. Received: image.dtype={image.dtype}")
    x = image.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("image must contain only finite values. Received: NaN or inf in image")
    lo, hi = x.min(), x.max()
    if hi == lo:
        return np.zeros(x.shape, dtype=np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def standardize(image: np.ndarray, *, clip_sd: float = 3.0) -> np.ndarray:
    """Per-image z-score mapped back into [0, 1]: ``clip((x - mean) / (2 * clip_sd * std) + 0.5, 0, 1)``.

    Removes each radiograph's exposure, gain and offset (nuisance that is independent of the
    class) so a small CNN trained from scratch sees texture instead of brightness; ``clip_sd``
    standard deviations either side of the mean span the output range.

    Args:
        image: (H, W) float32 in [0, 1].
        clip_sd: > 0.

    Returns:
        (H, W) float32 in [0, 1] with mean 0.5 (before clipping); all 0.5 for a constant image.
    """
    x = _as_image(image).astype(np.float64)
    clip_sd = _check_number(clip_sd, "clip_sd", low=0.0, low_inclusive=False)
    sd = float(x.std())
    if sd == 0.0:
        return np.full(x.shape, 0.5, dtype=np.float32)
    return np.clip((x - x.mean()) / (2.0 * clip_sd * sd) + 0.5, 0.0, 1.0).astype(np.float32)


def resize(image: np.ndarray, size: int | tuple[int, int], *, interpolation: str = "area") -> np.ndarray:
    """Resize with OpenCV.

    Args:
        image: (H, W) float32 in [0, 1].
        size: an int for a square output, or ``(height, width)`` (NumPy order, not OpenCV's).
        interpolation: ``"area"`` (``cv2.INTER_AREA``, anti-aliased, the right choice for
            downscaling), ``"bilinear"`` or ``"nearest"``.

    Returns:
        (height, width) float32 in [0, 1].

    Raises:
        ValueError: a non-positive or malformed ``size`` or an unknown ``interpolation``.
    """
    img = _as_image(image)
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        out_hw = (int(size), int(size))
    elif (isinstance(size, (tuple, list)) and len(size) == 2
          and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)):
        out_hw = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"size must be an int or a (height, width) pair of ints. Received: size={size!r}")
    if min(out_hw) < 1:
        raise ValueError(f"size must be positive. Received: size={size!r}")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be one of {sorted(_INTERPOLATIONS)}. Received: interpolation={interpolation!r}"
        )
    if out_hw == img.shape:
        return img
    out = cv2.resize(img, (out_hw[1], out_hw[0]), interpolation=_INTERPOLATIONS[interpolation])
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Study 03 ROI
# --------------------------------------------------------------------------------------------
def bone_mask(image: np.ndarray, *, threshold: float | None = None, erosion_radius: int = 2) -> np.ndarray:
    """Binary bone mask: ``image > threshold``, then erosion with a disk.

    Erosion treats pixels outside the image as foreground, so bone touching the border is
    not eaten from the border side.

    Args:
        image: (H, W) float32 in [0, 1].
        threshold: grey level in [0, 1]; ``None`` uses Otsu's threshold.
        erosion_radius: disk radius in pixels (0 = no erosion); removes thin bridges and specks.

    Returns:
        (H, W) bool mask.
    """
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk

    img = _as_image(image)
    if isinstance(erosion_radius, bool) or not isinstance(erosion_radius, (int, np.integer)) or erosion_radius < 0:
        raise ValueError(f"erosion_radius must be a non-negative integer. Received: erosion_radius={erosion_radius!r}")
    if threshold is None:
        threshold = float(threshold_otsu(img)) if img.min() < img.max() else float(img.max())
    threshold = _check_number(threshold, "threshold", low=0.0, high=1.0)
    mask = img > threshold
    if erosion_radius > 0 and mask.any():
        mask = ndimage.binary_erosion(mask, structure=disk(int(erosion_radius)).astype(bool), border_value=1)
    return mask


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected foreground component of a mask.

    Args:
        mask: (H, W) bool (or 0/1) mask.

    Returns:
        (H, W) bool mask with only the largest component (ties: the first in raster order);
        all False when the mask is empty.
    """
    from skimage.measure import label

    m = _as_mask(mask)
    labels = label(m, connectivity=2)
    if labels.max() == 0:
        return np.zeros_like(m)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == int(np.argmax(counts))


def roi_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box of all foreground pixels (``skimage.measure.regionprops``).

    Args:
        mask: (H, W) bool (or 0/1) mask with at least one foreground pixel.

    Returns:
        ``(row0, col0, row1, col1)``, half-open: ``image[row0:row1, col0:col1]`` is the box.

    Raises:
        ValueError: when the mask is empty.
    """
    from skimage.measure import regionprops

    m = _as_mask(mask)
    if not m.any():
        raise ValueError("mask has no foreground pixel, so it has no bounding box. Received: an all-False mask")
    (region,) = regionprops(m.astype(np.uint8))
    r0, c0, r1, c1 = region.bbox
    return int(r0), int(c0), int(r1), int(c1)


def roi_crop(image: np.ndarray, *, threshold: float | None = None, erosion_radius: int = 2,
             margin: int = 0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Study 03 ROI: threshold + erosion (:func:`bone_mask`), largest component, crop its box.

    The box of the eroded component is grown by ``erosion_radius`` (undoing the shrinkage of
    the erosion, so a bright rectangle is recovered exactly) plus ``margin``, clipped to the
    image.

    Args:
        image: (H, W) float32 in [0, 1].
        threshold: grey threshold in [0, 1]; ``None`` = Otsu.
        erosion_radius: disk radius of the erosion in pixels.
        margin: extra pixels added on every side of the box.

    Returns:
        ``(cropped, bbox)``: the (h, w) float32 crop and its ``(row0, col0, row1, col1)``
        half-open box in ``image`` coordinates. When no foreground survives, the whole image
        and ``(0, 0, H, W)`` are returned with a ``UserWarning``.

    Raises:
        ValueError: ``threshold`` outside [0, 1], negative ``erosion_radius`` or ``margin``.
    """
    img = _as_image(image)
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
        raise ValueError(f"margin must be a non-negative integer. Received: margin={margin!r}")
    mask = largest_component(bone_mask(img, threshold=threshold, erosion_radius=erosion_radius))
    h, w = img.shape
    if not mask.any():
        warnings.warn(
            "roi_crop found no foreground (threshold too high, erosion too strong, or a flat "
            "image); returning the whole image. Pass a lower threshold or erosion_radius.",
            UserWarning,
            stacklevel=2,
        )
        return img, (0, 0, h, w)
    r0, c0, r1, c1 = roi_bbox(mask)
    grow = int(erosion_radius) + int(margin)
    box = (max(0, r0 - grow), max(0, c0 - grow), min(h, r1 + grow), min(w, c1 + grow))
    return img[box[0]:box[2], box[1]:box[3]].copy(), box


def _roi_crop_image(image: np.ndarray, **params: Any) -> np.ndarray:
    """:func:`roi_crop` returning only the crop (the :data:`STEPS` form)."""
    return roi_crop(image, **params)[0]


# --------------------------------------------------------------------------------------------
# Steps as data
# --------------------------------------------------------------------------------------------
STEPS: dict[str, Callable[..., np.ndarray]] = {
    "bm3d_denoise": bm3d_denoise,
    "nlmeans_denoise": nlmeans_denoise,
    "gaussian_denoise": gaussian_denoise,
    "mean_filter": mean_filter,
    "median_filter": median_filter,
    "smudge": smudge,
    "add_gaussian_noise": add_gaussian_noise,
    "equalize_hist": equalize_hist,
    "clahe": clahe,
    "adjust_contrast_brightness": adjust_contrast_brightness,
    "unsharp_sharpen": unsharp_sharpen,
    "minmax_scale": minmax_scale,
    "standardize": standardize,
    "resize": resize,
    "roi_crop": _roi_crop_image,
}
"""Registry of image -> image steps usable by :func:`apply_steps` and :func:`map_cached`.

Every entry maps an (H, W) float32 [0, 1] image and keyword parameters to a new image
(``roi_crop`` returns only the crop here). Worker processes see the registry as defined at
import time, so steps registered at run time only work with ``n_jobs=1``.
"""

_STEP_VERSIONS: dict[str, str] = {**{name: "1" for name in STEPS}, "bm3d_denoise": "2"}
"""Bump an entry when a step's output changes for the same input: old cache keys then miss.
(bm3d_denoise 2: one library thread per image by default, bit-reproducible.)"""

_STEP_LIBRARIES: dict[str, tuple[str, ...]] = {
    "bm3d_denoise": ("bm3d", "bm4d", "scikit-image"),
    "nlmeans_denoise": ("opencv-python", "opencv-python-headless", "scikit-image"),
    "resize": ("opencv-python", "opencv-python-headless"),
    "equalize_hist": ("scikit-image",),
    "clahe": ("scikit-image",),
    "roi_crop": ("scikit-image",),
}


@functools.lru_cache(maxsize=None)
def _library_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def _step_version(name: str) -> str:
    """Version string of a step: its own code version plus the libraries that compute it."""
    libs = ",".join(f"{d}={_library_version(d)}" for d in _STEP_LIBRARIES.get(name, ()))
    return f"{_STEP_VERSIONS.get(name, 'unversioned')};{libs}"


def _validate_steps(steps: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(steps, (list, tuple)):
        raise TypeError(f"steps must be a list of (name, params) pairs. Received: steps={steps!r}")
    out = []
    for i, step in enumerate(steps):
        if not (isinstance(step, (list, tuple)) and len(step) == 2 and isinstance(step[0], str)
                and isinstance(step[1], Mapping)):
            raise ValueError(f"steps[{i}] must be a (name, params dict) pair. Received: steps[{i}]={step!r}")
        name, params = step
        if name not in STEPS:
            raise ValueError(f"Unknown step. Expected one of {sorted(STEPS)}. Received: steps[{i}][0]={name!r}")
        out.append((name, dict(params)))
    return out


def apply_steps(image: np.ndarray, steps: Sequence[tuple[str, Mapping[str, Any]]]) -> np.ndarray:
    """Apply named preprocessing steps from :data:`STEPS` in order.

    Example::

        apply_steps(img, [("mean_filter", {"size": 3}), ("equalize_hist", {}),
                          ("roi_crop", {"erosion_radius": 2}), ("resize", {"size": 224}),
                          ("minmax_scale", {})])

    Args:
        image: (H, W) float32 in [0, 1] (uint8/uint16 converted by the module rule).
        steps: list of ``(step_name, params)``; params are the step's keyword options.

    Returns:
        (H', W') float32 in [0, 1] (crops and resizes change the shape).

    Raises:
        ValueError: an unknown step name or a malformed step (plus the step's own errors).
    """
    checked = _validate_steps(steps)
    out = _as_image(image)
    for name, params in checked:
        out = STEPS[name](out, **params)
    return out


# --------------------------------------------------------------------------------------------
# Content-addressed disk cache and parallel map
# --------------------------------------------------------------------------------------------
def _canonical_json(value: Any, where: str) -> str:
    def _default(obj: Any) -> Any:
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return float(obj)
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(
            f"{where} must be JSON-serializable (numbers, strings, lists, dicts) to form a cache "
            f"key. Received: a value of type {type(obj).__name__}"
        )

    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_default, allow_nan=True)


class DiskCache:
    """Content-addressed store of preprocessed images as ``.npy`` files.

    The key is the SHA-256 of the input image (bytes, shape, dtype), the step name, the
    parameters as sorted JSON and the step's version (its code version plus the versions of
    the libraries computing it), so a changed image, parameter or library never reads a stale
    result. Files live at ``root/<key[:2]>/<key>.npy`` and are written to a temporary file and
    moved into place with ``os.replace``, so a crash never leaves a partial entry under a
    final name; an unreadable entry is treated as a miss, and recomputed.

    Args:
        root: cache folder; default ``config.cache_dir() / "preprocessing"``.

    Attributes:
        root: the folder.
        hits: entries served from disk since construction.
        misses: lookups that found no readable entry.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else config.cache_dir() / "preprocessing"
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"DiskCache(root={str(self.root)!r}, hits={self.hits}, misses={self.misses})"

    @staticmethod
    def key(image: np.ndarray, name: str, params: Mapping[str, Any], version: str) -> str:
        """Return the hex SHA-256 key of ``image`` processed by step ``name`` with ``params``.

        Args:
            image: the input array (any shape/dtype; its exact bytes are hashed).
            name: step name (or ``"apply_steps"`` for a whole step list).
            params: JSON-serializable parameters; key order does not matter.
            version: the step's version string.
        """
        arr = np.ascontiguousarray(image)
        h = hashlib.sha256()
        for part in (b"osteo_tf.preprocessing/1", name.encode(), version.encode(),
                     _canonical_json(params, "params").encode(), arr.dtype.str.encode(),
                     repr(tuple(arr.shape)).encode()):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        h.update(arr.tobytes())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        """Where the entry of ``key`` lives."""
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """Return the stored array, or ``None`` when missing or unreadable (counted as a miss)."""
        p = self.path(key)
        try:
            with open(p, "rb") as fh:
                arr = np.load(fh, allow_pickle=False)
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError, EOFError) as exc:
            warnings.warn(f"Ignoring unreadable cache entry {p} ({exc}); it will be recomputed.",
                          UserWarning, stacklevel=2)
            self.misses += 1
            return None
        self.hits += 1
        return arr

    def put(self, key: str, array: np.ndarray) -> Path:
        """Store ``array`` under ``key`` atomically (temporary file + ``os.replace``)."""
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{key[:16]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.asarray(array), allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, p)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return p


_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def _init_worker() -> None:
    """Worker initializer: one thread per process (n_jobs processes share the cores)."""
    for var in _THREAD_ENV:
        os.environ[var] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pass
    cv2.setNumThreads(1)


def _run_task(task: tuple[str, Any, np.ndarray, Any]) -> np.ndarray:
    """Compute one task in a worker: ``("step", name, image, params)`` or ``("steps", ...)``."""
    kind, name, image, params = task
    if kind == "steps":
        return apply_steps(image, params)
    return STEPS[name](image, **params)


def _load_input(item: Any, index: int, skipped: list[str]) -> np.ndarray | None:
    """An input array converted by the module rule, or a loaded file (``None`` if unreadable)."""
    if isinstance(item, np.ndarray):
        return _as_image(item, f"images_or_paths[{index}]")
    if isinstance(item, (str, os.PathLike)):
        from osteo_tf import io as osteo_io  # imported lazily: io pulls in pydicom and PIL

        try:
            loaded = osteo_io.load_xray(item)
        except getattr(osteo_io, "ImageLoadError", OSError) as exc:
            skipped.append(str(exc))
            return None
        return _as_image(loaded, f"load_xray({str(item)!r})")
    raise TypeError(
        f"images_or_paths[{index}] must be an (H, W) array or a file path. "
        f"Received: {type(item).__name__}"
    )


def _resolve_cache(cache: DiskCache | bool) -> DiskCache | None:
    if cache is True:
        return DiskCache()
    if cache is False or cache is None:
        return None
    if isinstance(cache, DiskCache):
        return cache
    raise TypeError(f"cache must be a DiskCache, True (default cache) or False (no cache). Received: cache={cache!r}")


def _resolve_n_jobs(n_jobs: int | None) -> int:
    if n_jobs is None:
        return os.cpu_count() or 1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs < 1:
        raise ValueError(f"n_jobs must be a positive integer or None. Received: n_jobs={n_jobs!r}")
    return int(n_jobs)


def _map(kind: str, name: str, version: str, params: Any, items: Sequence[Any], *,
         cache: DiskCache | bool, n_jobs: int | None, backend: str) -> list[np.ndarray | None]:
    if backend not in ("processes", "serial"):
        raise ValueError(f"backend must be 'processes' or 'serial'. Received: backend={backend!r}")
    if isinstance(items, (str, os.PathLike, np.ndarray)):
        raise TypeError("images_or_paths must be a sequence of images or paths, not a single one. "
                        f"Received: {type(items).__name__}")
    store = _resolve_cache(cache)
    jobs = _resolve_n_jobs(n_jobs)
    key_params = {"params": params} if kind == "step" else {"steps": params}
    _canonical_json(key_params, "params")  # fail fast on unhashable parameters

    results: list[np.ndarray | None] = [None] * len(items)
    todo: list[tuple[int, np.ndarray, str | None]] = []
    skipped: list[str] = []
    for i, item in enumerate(items):
        image = _load_input(item, i, skipped)
        if image is None:
            continue
        key = store.key(image, name, key_params, version) if store is not None else None
        hit = store.get(key) if store is not None else None
        if hit is not None:
            results[i] = hit
        else:
            todo.append((i, image, key))

    def _store(i: int, key: str | None, out: np.ndarray) -> None:
        results[i] = out
        if store is not None and key is not None:
            store.put(key, out)

    if backend == "serial" or jobs == 1 or len(todo) <= 1:
        for i, image, key in todo:
            _store(i, key, _run_task((kind, name, image, params)))
    else:
        ctx = multiprocessing.get_context("spawn")  # never fork: TensorFlow may be loaded
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=min(jobs, len(todo)), mp_context=ctx, initializer=_init_worker
        ) as pool:
            futures = {pool.submit(_run_task, (kind, name, image, params)): (i, key)
                       for i, image, key in todo}
            try:
                for fut in concurrent.futures.as_completed(futures):
                    i, key = futures[fut]
                    _store(i, key, fut.result())
            except BrokenProcessPool as exc:
                raise RuntimeError(
                    "A preprocessing worker process died. Workers are started with 'spawn', which "
                    "re-imports the main script: guard a script's top-level code with "
                    "`if __name__ == '__main__':`, or pass n_jobs=1 (results already computed "
                    "are in the cache)."
                ) from exc
    if skipped:
        shown = "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        warnings.warn(
            f"Skipped {len(skipped)} of {len(items)} files that could not be loaded (their "
            f"results are None): {shown}",
            UserWarning,
            stacklevel=3,
        )
    return results


def map_cached(fn_name: str, images_or_paths: Sequence[np.ndarray | str | os.PathLike[str]],
               params: Mapping[str, Any] | None = None, *, cache: DiskCache | bool = True,
               n_jobs: int | None = None, backend: str = "processes") -> list[np.ndarray | None]:
    """Apply one :data:`STEPS` function to many images, in parallel, through the disk cache.

    Inputs are loaded and hashed in this process; cache hits never reach the pool. Misses run
    in a ``ProcessPoolExecutor`` using the ``spawn`` start method (forking after TensorFlow
    was imported is unsafe) with one BLAS/OpenMP/OpenCV thread per worker, and are written
    to the cache as they finish. With ``n_jobs=1``, ``backend="serial"`` or a single miss
    the work runs in this process. As with any ``spawn`` pool, a calling *script* must keep
    its top-level code under ``if __name__ == "__main__":`` (notebooks and pytest need
    nothing).

    Args:
        fn_name: a key of :data:`STEPS`, e.g. ``"bm3d_denoise"``.
        images_or_paths: (H, W) float32 [0, 1] arrays (uint8/uint16 converted by the module
            rule) and/or file paths, loaded with ``osteo_tf.io.load_xray``.
        params: keyword options of the step (JSON-serializable); ``None`` = defaults.
        cache: a :class:`DiskCache`, ``True`` for the default one, ``False`` for none.
        n_jobs: worker processes; ``None`` = ``os.cpu_count()``.
        backend: ``"processes"`` or ``"serial"``.

    Returns:
        The outputs, float32, in input order; ``None`` for a file that ``load_xray`` could
        not read (``io.ImageLoadError``), with one ``UserWarning`` counting the skipped files:
        one bad file never stops a run.

    Raises:
        ValueError: unknown ``fn_name``, bad ``n_jobs``/``backend``, or an invalid input array.
        TypeError: parameters that are not JSON-serializable, or an input that is neither an
            array nor a path.
        RuntimeError: a worker process died (see the ``__main__`` note above).
    """
    if fn_name not in STEPS:
        raise ValueError(f"Unknown step. Expected one of {sorted(STEPS)}. Received: fn_name={fn_name!r}")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of keyword options. Received: params={params!r}")
    return _map("step", fn_name, _step_version(fn_name), dict(params), images_or_paths,
                cache=cache, n_jobs=n_jobs, backend=backend)


def cached_apply_steps(paths: Sequence[np.ndarray | str | os.PathLike[str]],
                       steps: Sequence[tuple[str, Mapping[str, Any]]], *,
                       cache: DiskCache | bool = True, n_jobs: int | None = None,
                       backend: str = "processes") -> list[np.ndarray | None]:
    """Run a whole step list (:func:`apply_steps`) per image, cached as ONE entry per image.

    Used to precompute the deterministic preprocessing of a manifest before training. The key
    covers the full step list (names, parameters, versions) and the input image.

    Args:
        paths: file paths (loaded with ``osteo_tf.io.load_xray``) and/or (H, W) arrays.
        steps: ``[(step_name, params), ...]`` as for :func:`apply_steps`.
        cache: a :class:`DiskCache`, ``True`` for the default one, ``False`` for none.
        n_jobs: worker processes; ``None`` = ``os.cpu_count()``.
        backend: ``"processes"`` or ``"serial"``.

    Returns:
        The preprocessed float32 images, in input order; ``None`` for unreadable files
        (warned, as in :func:`map_cached`).

    Raises:
        ValueError: an unknown step or malformed step list (plus the errors of :func:`map_cached`).
    """
    checked = _validate_steps(steps)
    version = "|".join(f"{n}:{_step_version(n)}" for n, _ in checked)
    return _map("steps", "apply_steps", version, [[n, p] for n, p in checked], paths,
                cache=cache, n_jobs=n_jobs, backend=backend)
