"""Per-image preprocessing for radiographs: denoising, contrast, ROI cropping, resizing.

Every public image function is pure, takes the image first and its options keyword-only, and
returns a new ``(H, W) float32`` array in ``[0, 1]``. Preprocessing can also be described as
data, a list of ``(step_name, params)`` pairs checked by :func:`validate_steps` and run by
:func:`apply_steps` with the functions of the :data:`STEPS` registry. Expensive steps (BM3D:
seconds per 224x224 image on one core) are run over many images in parallel, through a
content-addressed disk cache, by :mod:`osteo_tf.cache`.

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

import functools
import math
import warnings
from importlib import metadata
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
from scipy import ndimage

__all__ = [
    "STEPS",
    "add_gaussian_noise",
    "adjust_contrast_brightness",
    "apply_steps",
    "bm3d_denoise",
    "bone_mask",
    "clahe",
    "equalize_hist",
    "estimate_noise_sigma",
    "gaussian_denoise",
    "largest_component",
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
    "standardize",
    "step_version",
    "unsharp_sharpen",
    "validate_steps",
]

_BM3D_PROFILES = ("np", "lc")
_INTERPOLATIONS = {
    "area": cv2.INTER_AREA,
    "bilinear": cv2.INTER_LINEAR,
    "nearest": None,  # pixel-centre nearest, :func:`nearest_indices_take`
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
            and lets :func:`osteo_tf.cache.map_cached` parallelize over images, one image per core; 0 is the
            library's own default (every core on one image), whose aggregation order varies, so
            repeat calls differ by a few 1e-7 (bm4d's profile note).

    Returns:
        (H, W) float32 in [0, 1]. About 3 s per 224x224 image on one core (profile ``"np"``;
        ``"lc"`` about half): use :func:`osteo_tf.cache.map_cached` for datasets.

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
            with 0.8 both bit depths denoise a sigma=0.1 test image to the same PSNR).
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
    """Resize an image (the package's one NumPy resize).

    Args:
        image: (H, W) float32 in [0, 1].
        size: an int for a square output, or ``(height, width)`` (NumPy order, not OpenCV's).
        interpolation: ``"area"`` (``cv2.INTER_AREA``, anti-aliased, the right choice for
            downscaling), ``"bilinear"`` (``cv2.INTER_LINEAR``) or ``"nearest"`` (the input
            pixel whose centre is nearest each output pixel's centre, as scikit-image's order-0
            resize; for masks and label maps).

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
    if interpolation == "nearest":
        return nearest_indices_take(img, out_hw)
    out = cv2.resize(img, (out_hw[1], out_hw[0]), interpolation=_INTERPOLATIONS[interpolation])
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def nearest_indices_take(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``array`` (H, W, ...) of any dtype resampled to ``size`` by pixel-centre nearest neighbour.

    Output pixel ``i`` takes input pixel ``floor((i + 0.5) * H / h_out)`` (clipped), i.e. the one
    whose centre is nearest, rounding ties up: scikit-image's order-0 resize, without its float
    round trip, so boolean masks stay boolean.
    """
    h, w = array.shape[:2]
    rows = np.clip(np.floor((np.arange(size[0]) + 0.5) * (h / size[0])).astype(int), 0, h - 1)
    cols = np.clip(np.floor((np.arange(size[1]) + 0.5) * (w / size[1])).astype(int), 0, w - 1)
    return array[rows][:, cols]


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
"""Registry of image -> image steps usable by :func:`apply_steps` and :func:`osteo_tf.cache.map_cached`.

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


def step_version(name: str) -> str:
    """Version string of a step: its own code version plus the libraries that compute it.

    Part of every disk-cache key (:mod:`osteo_tf.cache`), so a changed step or library never
    reads a stale result.
    """
    libs = ",".join(f"{d}={_library_version(d)}" for d in _STEP_LIBRARIES.get(name, ()))
    return f"{_STEP_VERSIONS.get(name, 'unversioned')};{libs}"


def validate_steps(steps: Any) -> list[tuple[str, dict[str, Any]]]:
    """Check a step list and return it as fresh ``(name, params dict)`` pairs.

    The one validator of preprocessing steps as data, used by :func:`apply_steps`, the disk
    cache (:mod:`osteo_tf.cache`) and the tf.data pipeline (:mod:`osteo_tf.pipeline`).

    Args:
        steps: a list or tuple (``None`` = no steps) whose items are a step name of
            :data:`STEPS` (default parameters) or a ``(name, params)`` pair, params a dict of the
            step's keyword options (``None`` = defaults).

    Returns:
        ``[(name, params), ...]`` with each params a new dict (safe to modify).

    Raises:
        TypeError: ``steps`` is not a list, tuple or None.
        ValueError: a malformed step, or a name that is not in :data:`STEPS`.
    """
    if steps is None:
        return []
    if not isinstance(steps, (list, tuple)):
        raise TypeError(
            f"steps must be a list of step names or (name, params) pairs. Received: steps={steps!r}"
        )
    out = []
    for i, step in enumerate(steps):
        if isinstance(step, str):
            name, params, where = step, {}, f"steps[{i}]"
        elif (isinstance(step, (list, tuple)) and len(step) == 2 and isinstance(step[0], str)
              and (step[1] is None or isinstance(step[1], Mapping))):
            name, params, where = step[0], step[1] or {}, f"steps[{i}][0]"
        else:
            raise ValueError(
                f"steps[{i}] must be a step name or a (name, params dict) pair. Received: steps[{i}]={step!r}"
            )
        if name not in STEPS:
            raise ValueError(
                f"unknown preprocessing step {name!r}. Expected one of {sorted(STEPS)}. Received: {where}={name!r}"
            )
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
    checked = validate_steps(steps)
    out = _as_image(image)
    for name, params in checked:
        out = STEPS[name](out, **params)
    return out
