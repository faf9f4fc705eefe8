"""The built-in synthetic radiograph generator.

Three modes share one latent patient model and one texture core:

* ``calcaneus``: a trabecular texture ROI (default 256 x 256, texture pixel 0.1 mm).
* ``knee``: an AP knee radiograph (default 256 x 256 over a 154 mm field) with soft tissue, femur
  and condyles, tibial plateau, fibular head, cortical shells and a textured trabecular interior;
  the tibial subchondral ROI box is stored in ``roi_bbox``.
* ``dxa``: a lumbar-spine DXA image (default 256 x 128, H x W) with L1-L4, discs and pedicles;
  labels come from a TBS-like score (>= 1.350 normal, 1.200-1.350 partially degraded,
  <= 1.200 degraded).

Public API: :data:`PRESETS`, :func:`oracle_accuracy`, :func:`generate`, :func:`write_dataset`,
:func:`variogram`, :func:`variogram_slope`, :func:`texture_features`.

Latent model. Each patient ``p`` draws its traits from
``SeedSequence(seed, spawn_key=(p, 0))`` and image ``k`` from ``spawn_key=(p, k + 1)``, so every
image is a function of (seed, patient, image) only, whatever the order or the number of
patients. Classes are assigned by balanced block randomisation (blocks of ``classes`` patients,
each block permuted with ``spawn_key=(2**32 - 1, block)``).

* binary (calcaneus, knee): ``q | c ~ N(+-d'/2, 1)`` (normal positive); Bayes accuracy Phi(d'/2).
* 3-class (calcaneus, knee): ``T ~ TruncN(-1.5, 1.2^2)`` on the WHO interval of the class,
  ``z = (T + 1.5) / 1.2``, ``q = rho z + sqrt(1 - rho^2) xi``.
* dxa: ``TBS ~ N(1.31, 0.11^2)`` truncated to the class interval (2 classes: normal >= 1.350
  vs degraded <= 1.200, the partially degraded middle band is not generated, as in study 04;
  this makes the binary task much easier than the 3-class one). ``T`` has corr 0.4 with TBS,
  ``aBMD = 1.0 + 0.11 T``; per vertebra ``H_v = g^-1(TBS + eps_v + eps_scan)``, with
  ``eps_v ~ N(0, 0.02)`` and ``eps_scan ~ N(0, preset.tbs_scan_sd)``; ``g`` is the stored
  calibration of the lags-1-4 variogram slope of the clean field (``_TBS_CALIBRATION``).
  ``TBS_measured`` is that slope measured on the clean field inside the L1-L4 masks (never the
  label). ``q`` is ``(TBS - 1.31) / 0.11``.

Parameter maps (*design*): ``H = 0.62 + 0.10 q`` in [0.40, 0.85]; ``BVTV = 0.20 e^{0.12 q}``;
``TbTh = 0.15 mm e^{0.04 q}``; spacing ``0.8 mm e^{-0.10 q}``; anisotropy ``1.3 - 0.08 q`` (+ a
patient offset N(0, 0.05)) in [1, 2]; knee cortex ``2.5 mm e^{0.12 q}``; per-image jitter
N(0, 0.1 x slope) on each. Visits: image 0 is visit 0, each further image is a new visit with
probability 1/2 (else a repeat / other side of the same visit); ``q`` drifts by a patient rate
N(-0.1, 0.1) per visit. The label is the patient's baseline class.

Texture: ``tex = w_s P + (1 - w_s) F_H`` with ``w_s ~ U(0.1, 0.2)`` per patient, both
standardised. ``F_H`` is anisotropic spectral fBm with an outer scale (PSD
``(|k|_a^2 + k0^2)^-(H+1)``, 1/k0 = 256 px for calcaneus, 32 px for knee), synthesised on a 2n
grid and sampled through the image pose; wavelengths longer than 24 px come from the patient's
own noise (the shared low-frequency seed). ``P`` is the mean of 8 double-cut band-pass GRF slices
``|G| < c``, ``c = sqrt(2) erfinv(BVTV)``, ring at 1/spacing with relative width 0.18, blurred by
TbTh/2. The texture is rendered at 0.1 mm per output pixel in every mode but dxa (spacing 8 px at
any ``size``; in the knee this magnifies the trabecular texture about 6x at 256 px so that it is
resolved). The mean attenuation does not depend on the class: the class signal is the texture
(its amplitude in the knee) and the knee cortex, so global intensity statistics are not a
shortcut (logistic regression on them stays at AUC <= 0.65 on the knee, tests/test_synthetic.py).

Attenuation: calcaneus ``base + 0.6 tex``, base ~ U(1, 2) per patient; knee soft tissue
``0.019 mm^-1 x`` a super-ellipse depth 0.9 x leg width (90-140 mm), bones with depth
``2 sqrt(d (2R - d))`` from the inside distance ``d`` (rows weighted 4x so the bone ends close
within a few mm), cortical shell at ``mu_bone = mu_soft (1 + 1.5 b)`` with a per-image beam-quality
factor ``b`` log-uniform in ``exp(+-0.5)`` (kVp, filtration, scatter: bone brightness is nuisance),
trabecular interior ``0.6 (mu_bone - mu_soft) x depth x max(1 + 0.8 (BVTV / 0.2)^0.75 tex, 0)``
(bone loss washes out the trabecular pattern; the exponent 0.75 is *design*, the largest of
0.5 / 0.75 / 1 that keeps the global-statistics shortcut AUC below 0.65); knee counts are referenced to 1
below the maximum attenuation (I0 is the count behind the soft tissue). The knee ROI is the
enclosing box of a 1.2 x plateau-half-width by 0.9 x half-width rectangle starting 8 mm below the
subchondral plate. dxa pixel = ``aBMD_v (1 + 0.6 F_{H_v})`` (see ``_DXA_TAU``; + 15 % in the
pedicles) plus a BMI-scaled soft-tissue band.

Imaging, all independent of class: pose (rotation +-20 / 8 / 3 deg for calcaneus / knee /
dxa, translation +-5 %, scale 0.9-1.1, L/R flip from the side), I0 log-U [500, 1e4] /
[1e3, 3e4] / [200, 2000], Poisson counts, log, Gaussian MTF sigma U[0.3, 1.2] px (dxa
U[0.5, 1.0]), heel ramp +-10 %, percentile window (0.5-99.5 %), gamma log-U [0.8, 1.25], then
``0.5 + offset + 0.32 gain (2 v - 1)`` with gain log-U [0.8, 1.25] and offset +-0.1 (a half-range
of at most 0.4, so the window is never clipped a second time). JPEG artefacts and the optional
``site`` profiles are not implemented (``site`` is always ``"S0"``).

Design values calibrated against the acceptance tests (``tests/test_synthetic.py``: variogram-slope
baseline in [0.70, 0.95], shortcut AUC <= 0.65, knee ROI above chance):

* H slope 0.10 per unit q: a weaker slope leaves the lags-4-16 variogram slope, the only one that
  survives blur and Poisson noise, too weak to carry the class;
* w_s U(0.1, 0.2): the network's variogram shape differs from the fBm's, so a wide,
  class-independent mixing weight would dominate the variogram features;
* fBm outer scale 256 px calcaneus / 32 px knee; texture contrast 0.6 (calcaneus) and 0.8
  (knee), chosen against the Poisson noise;
* display gain/offset applied inside the window (no extra clipping): clipping erased the
  texture of the bright tibial ROI.

The version history of the generator is in the changelog.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from osteo_tf import _synth_shapes as shapes

GENERATOR_VERSION = "1.2.0"  # bumped whenever the same arguments give other pixels
MODES = ("calcaneus", "knee", "dxa")
DEFAULT_SIZE = {"calcaneus": 256, "knee": 256, "dxa": 256}
"""Default image size per mode (dxa images are size x size/2)."""

CLASS_NAMES: dict[tuple[str, int], tuple[str, ...]] = {
    ("calcaneus", 2): ("normal", "osteoporosis"),
    ("calcaneus", 3): ("normal", "osteopenia", "osteoporosis"),
    ("knee", 2): ("normal", "osteoporosis"),
    ("knee", 3): ("normal", "osteopenia", "osteoporosis"),
    ("dxa", 2): ("normal", "degraded"),
    ("dxa", 3): ("normal", "partially_degraded", "degraded"),
}
"""Class folder names per (mode, classes), ordered from healthy to most degraded."""

_DISPLAY_NAMES = {
    "normal": "Normal",
    "osteopenia": "Osteopenia",
    "osteoporosis": "Osteoporosis",
    "partially_degraded": "Partially degraded",
    "degraded": "Degraded",
}

COLUMNS = (
    "image_id", "patient_id", "mode", "label", "label_name", "T_latent", "q", "H", "BVTV", "TbTh",
    "spacing", "anisotropy", "theta", "TBS_true", "TBS_measured", "aBMD", "site", "side", "visit",
    "roi_bbox", "seed", "generator_version", "path",
)  # fmt: skip
"""Columns of ``metadata.csv`` in order. ``label`` is the class folder name, ``label_name`` its
display name, ``roi_bbox`` is ``"x0,y0,x1,y1"`` (half-open, output pixels, ``image[y0:y1, x0:x1]``),
``theta`` in degrees, ``TbTh`` and ``spacing`` in mm, ``path`` relative to the dataset root."""

# WHO T-score intervals in z = (T + 1.5) / 1.2 units, class 0 = normal (highest).
_WHO_Z = (math.inf, (-1.0 + 1.5) / 1.2, (-2.5 + 1.5) / 1.2, -math.inf)
_TBS_MEAN, _TBS_SD = 1.31, 0.11
_TBS_NORMAL, _TBS_DEGRADED = 1.350, 1.200

# Lags-1-4 variogram slope of the clean dxa field inside the vertebra masks vs H, g(H). Measured
# once with ``_calibrate_tbs(reps=16)`` at the default size for H = 0.25 ... 1.00 (SD 0.02-0.04 per
# field) and stored as its least-squares quadratic fit g(H) = 0.5229 + 1.3910 H - 0.1768 H^2
# (monotone on [0.25, 1]); g^-1 by interpolation, TBS outside [g(0.25), g(1)] is clipped.
_CAL_H = np.round(np.arange(0.25, 1.0001, 0.05), 2)
_TBS_CALIBRATION = (tuple(_CAL_H), tuple(0.52290389 + 1.3909965 * _CAL_H - 0.17682073 * _CAL_H**2))


@dataclass(frozen=True)
class Preset:
    """A difficulty preset: how strongly the latent bone quality q separates the classes.

    Attributes:
        name: preset name.
        rho: 3-class coupling of q to the T-score.
        d_prime: binary class separation of q.
        oracle_3class: documented Bayes accuracy of the 3-class task given q.
        oracle_op_vs_rest: documented balanced accuracy, osteoporosis vs rest, given q.
        oracle_binary: documented Bayes accuracy of the binary task given q, Phi(d'/2).
        auc_binary: documented binary AUC given q, Phi(d'/sqrt(2)).
        tbs_scan_sd: dxa per-scan TBS error SD (*design*).
    """

    name: str
    rho: float
    d_prime: float
    oracle_3class: float
    oracle_op_vs_rest: float
    oracle_binary: float
    auc_binary: float
    tbs_scan_sd: float


PRESETS: dict[str, Preset] = {
    "easy": Preset("easy", 0.97, 3.0, 0.88, 0.94, 0.93, 0.98, 0.010),
    "default": Preset("default", 0.95, 2.5, 0.84, 0.92, 0.89, 0.96, 0.020),
    "hard": Preset("hard", 0.90, 1.7, 0.77, 0.89, 0.80, 0.89, 0.030),
    "realistic": Preset("realistic", 0.80, 0.8, 0.68, 0.83, 0.66, 0.71, 0.040),
}


# --- validation ---------------------------------------------------------------------------------
def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an integer {rng}. Received: {name}={value!r}")
    return int(value)


def _check_choice(name: str, value: object, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}. Received: {name}={value!r}")


def _get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    _check_choice("preset", preset, list(PRESETS))
    return PRESETS[preset]


def _check_args(mode, classes, patients, preset, size, seed, images_per_patient) -> tuple[Preset, int]:
    _check_choice("mode", mode, MODES)
    _check_choice("classes", classes, (2, 3))
    _check_int("patients", patients, 1)
    p = _get_preset(preset)
    if size is not None:
        _check_int("size", size, 32, 4096)
    _check_int("seed", seed, 0)
    if images_per_patient is not None:
        _check_int("images_per_patient", images_per_patient, 1, 50)
    return p, DEFAULT_SIZE[mode] if size is None else int(size)


# --- oracle -------------------------------------------------------------------------------------
def _three_class_likelihood(q: np.ndarray, rho: float) -> np.ndarray:
    """p(q | c) up to a common factor, classes ordered normal, osteopenia, osteoporosis."""
    s = math.sqrt(1.0 - rho * rho)
    hi = np.array(_WHO_Z[:-1])
    lo = np.array(_WHO_Z[1:])
    mass = ndtr(hi) - ndtr(lo)
    q = np.asarray(q, np.float64)[:, None]
    return (ndtr((hi - rho * q) / s) - ndtr((lo - rho * q) / s)) / mass


def oracle_accuracy(preset: str | Preset, classes: int, *, n: int = 200_000, seed: int = 0) -> float:
    """Monte-Carlo Bayes accuracy given the latent q (balanced classes).

    Args:
        preset: a name in ``PRESETS`` or a ``Preset``.
        classes: 2 (binary ``q | c ~ N(+-d'/2, 1)``) or 3 (truncated WHO T-score model).
        n: simulated patients.
        seed: random seed.

    Returns:
        The fraction of simulated patients whose Bayes decision from q is their class.

    Raises:
        ValueError: on an invalid argument.
    """
    p = _get_preset(preset)
    _check_choice("classes", classes, (2, 3))
    n = _check_int("n", n, 100)
    _check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)
    c = rng.integers(0, classes, n)
    if classes == 2:
        q = np.where(c == 0, p.d_prime / 2.0, -p.d_prime / 2.0) + rng.standard_normal(n)
        return float(np.mean((q < 0).astype(int) == c))
    q = _latent_q3(rng, c, p.rho)
    return float(np.mean(_three_class_likelihood(q, p.rho).argmax(axis=1) == c))


def _trunc_std_normal(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    u = rng.uniform(ndtr(lo), ndtr(hi))
    return ndtri(u)


def _latent_q3(rng: np.random.Generator, c: np.ndarray, rho: float) -> np.ndarray:
    z = _trunc_std_normal(rng, np.array(_WHO_Z[1:])[c], np.array(_WHO_Z[:-1])[c])
    return rho * z + math.sqrt(1.0 - rho * rho) * rng.standard_normal(np.shape(c))


# --- variogram features -------------------------------------------------------------------------
def _check_image(image: object, name: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be a 2-D numeric array (H, W). Received: {name} with shape {arr.shape}, dtype {arr.dtype}")
    return arr.astype(np.float64)


def variogram(image: np.ndarray, lags: Sequence[int], *, mask: np.ndarray | None = None, axis: int | None = None) -> np.ndarray:
    """Mean squared increment V(h) = mean [I(x + h) - I(x)]^2 along rows and columns.

    Args:
        image: (H, W) numeric array, any range.
        lags: positive integer lags in pixels, each smaller than the image side.
        mask: optional (H, W) bool array; only pairs with both pixels inside count.
        axis: 0 (vertical pairs), 1 (horizontal pairs) or None (both, pooled).

    Returns:
        (len(lags),) float64 array.

    Raises:
        ValueError: on a non-2-D image, bad lags or mask, or a lag with no valid pair.
    """
    img = _check_image(image)
    lags = [int(h) for h in lags] if isinstance(lags, (Sequence, np.ndarray)) else None
    if not lags or any(h < 1 or h >= min(img.shape) for h in lags):
        raise ValueError(f"lags must be positive integers smaller than the image side {min(img.shape)}. Received: lags={lags!r}")
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != img.shape:
            raise ValueError(f"mask must have the image shape {img.shape}. Received: mask with shape {mask.shape}")
    _check_choice("axis", axis, (None, 0, 1))
    out = np.empty(len(lags))
    for i, h in enumerate(lags):
        total, count = 0.0, 0
        for ax in (0, 1) if axis is None else (axis,):
            a = img[h:, :] - img[:-h, :] if ax == 0 else img[:, h:] - img[:, :-h]
            if mask is None:
                total += float(np.einsum("ij,ij->", a, a))
                count += a.size
            else:
                valid = mask[h:, :] & mask[:-h, :] if ax == 0 else mask[:, h:] & mask[:, :-h]
                total += float(np.sum(a[valid] ** 2))
                count += int(valid.sum())
        if count == 0:
            raise ValueError(f"no pixel pair at lag {h} lies inside the mask. Received: lags={lags!r}")
        out[i] = total / count
    return out


def variogram_slope(image: np.ndarray, lags: Sequence[int] = (1, 2, 3, 4), *, mask: np.ndarray | None = None, axis: int | None = None) -> float:
    """Slope of log V(h) vs log h (a TBS-like score; 2H for fBm).

    Args:
        image: (H, W) numeric array, any range.
        lags: at least two distinct positive integer lags.
        mask: optional (H, W) bool array (see :func:`variogram`).
        axis: 0, 1 or None (see :func:`variogram`).

    Returns:
        The least-squares slope, a float.

    Raises:
        ValueError: on bad arguments or a constant image (V = 0).
    """
    if len(set(int(h) for h in lags)) < 2:
        raise ValueError(f"lags must hold at least two distinct lags. Received: lags={lags!r}")
    v = variogram(image, lags, mask=mask, axis=axis)
    if np.any(v <= 0):
        raise ValueError("image is constant over the lags (variogram is zero); the slope is undefined")
    x = np.log(np.asarray(lags, np.float64))
    y = np.log(v)
    x = x - x.mean()
    return float(np.dot(x, y - y.mean()) / np.dot(x, x))


TEXTURE_FEATURES = ("slope_1_4", "slope_4_16", "nugget_ratio", "anisotropy", "slope_x_minus_y")
"""Names of :func:`texture_features` outputs, in order."""

_LAGS_SMALL = (1, 2, 3, 4)
_LAGS_LARGE = (4, 5, 6, 8, 10, 12, 14, 16)


def _detrend_quadratic(img: np.ndarray) -> np.ndarray:
    """Subtract the least-squares quadratic surface (removes exposure ramps and projection trends)."""
    h, w = img.shape
    y, x = np.mgrid[0:h, 0:w]
    y = (y - (h - 1) / 2.0) / h
    x = (x - (w - 1) / 2.0) / w
    basis = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)
    coef, *_ = np.linalg.lstsq(basis, img.reshape(-1), rcond=None)
    return img - (basis @ coef).reshape(h, w)


def texture_features(image: np.ndarray) -> np.ndarray:
    """Variogram texture features, invariant to gain and offset.

    Args:
        image: (H, W) numeric array, both sides >= 17 px.

    The image is first detrended by its least-squares quadratic surface.

    Returns:
        (5,) float64 array named by ``TEXTURE_FEATURES``: slope at lags 1-4, slope at lags 4-16,
        log V(1) / variance (nugget ratio), |log Vx(4) / Vy(4)| (anisotropy), and the
        difference of the horizontal and vertical slopes at lags 1-4.

    Raises:
        ValueError: on a non-2-D, too small or constant image.
    """
    img = _check_image(image)
    if min(img.shape) < 17:
        raise ValueError(f"image sides must be >= 17 px. Received: image with shape {img.shape}")
    img = _detrend_quadratic(img)
    lags = sorted(set(_LAGS_SMALL + _LAGS_LARGE))
    vx = variogram(img, lags, axis=1)
    vy = variogram(img, lags, axis=0)
    if np.any(vx <= 0) or np.any(vy <= 0):
        raise ValueError("image is constant; texture features are undefined")
    v = 0.5 * (vx + vy)
    idx = {h: i for i, h in enumerate(lags)}

    def slope(vals: np.ndarray, sel: Sequence[int]) -> float:
        x = np.log(np.asarray(sel, np.float64))
        y = np.log(vals[[idx[h] for h in sel]])
        x = x - x.mean()
        return float(np.dot(x, y - y.mean()) / np.dot(x, x))

    var = float(img.var())
    return np.array(
        [
            slope(v, _LAGS_SMALL),
            slope(v, _LAGS_LARGE),
            math.log(v[idx[1]] / var),
            abs(math.log(vx[idx[4]] / vy[idx[4]])),
            slope(vx, _LAGS_SMALL) - slope(vy, _LAGS_SMALL),
        ]
    )


# --- latent patient model -----------------------------------------------------------------------
def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _patient_class(seed: int, p: int, classes: int) -> int:
    block, pos = divmod(p, classes)
    return int(_rng(seed, 2**32 - 1, block).permutation(classes)[pos])


def _patient(mode: str, classes: int, preset: Preset, seed: int, p: int, images_per_patient: int | None, size: int) -> dict:
    """All patient-level traits (deterministic in (seed, p))."""
    rng = _rng(seed, p, 0)
    c = _patient_class(seed, p, classes)
    n_img = images_per_patient if images_per_patient is not None else min(1 + int(rng.poisson(1.5)), 6)
    visits = [0]
    for _ in range(1, n_img):
        visits.append(visits[-1] + int(rng.random() < 0.5))
    pat = {"index": p, "class": c, "n_images": n_img, "visits": visits, "drift": rng.normal(-0.1, 0.1)}
    if mode == "dxa":
        lo_hi = {
            2: ((_TBS_NORMAL, math.inf), (-math.inf, _TBS_DEGRADED)),
            3: ((_TBS_NORMAL, math.inf), (_TBS_DEGRADED, _TBS_NORMAL), (-math.inf, _TBS_DEGRADED)),
        }[classes][c]
        z = float(_trunc_std_normal(rng, (lo_hi[0] - _TBS_MEAN) / _TBS_SD, (lo_hi[1] - _TBS_MEAN) / _TBS_SD))
        tbs = _TBS_MEAN + _TBS_SD * z
        t_score = -1.5 + 1.2 * (0.4 * z + math.sqrt(1 - 0.16) * rng.standard_normal())
        pat.update(T=t_score, q=z, TBS=tbs, aBMD=1.0 + 0.11 * t_score, shape=shapes.dxa_shape_traits(rng))
        return pat
    if classes == 2:
        q = (preset.d_prime / 2.0 if c == 0 else -preset.d_prime / 2.0) + rng.standard_normal()
        t_score = math.nan
    else:
        z = float(_trunc_std_normal(rng, np.array(_WHO_Z[c + 1]), np.array(_WHO_Z[c])))
        t_score = -1.5 + 1.2 * z
        q = preset.rho * z + math.sqrt(1 - preset.rho**2) * rng.standard_normal()
    pat.update(
        T=t_score,
        q=float(q),
        theta=rng.uniform(-math.pi / 2, math.pi / 2),
        aniso_offset=rng.normal(0.0, 0.05),
        w_s=rng.uniform(*_W_S_RANGE),
        base=rng.uniform(1.0, 2.0),
    )
    m = _fbm_grid(mode, size)
    pat["low_noise"] = shapes.complex_noise(rng, (m, m // 2 + 1))
    if mode == "knee":
        pat["shape"] = shapes.knee_shape_traits(rng)
    return pat


def _px_scale(mode: str, size: int) -> float:
    """Texture pixels per output pixel (1: the texture is rendered at the output resolution)."""
    return 1.0


def _fbm_grid(mode: str, size: int) -> int:
    return 2 * int(math.ceil(size * _px_scale(mode, size)))


def _texture_params(pat: dict, q: float, rng: np.random.Generator, px_scale: float) -> dict:
    j = rng.standard_normal(6)
    spacing = 0.8 * math.exp(-0.10 * q + 0.010 * j[3])
    tbth = 0.15 * math.exp(0.04 * q + 0.004 * j[2])
    return {
        "H": float(np.clip(0.62 + _H_SLOPE * q + 0.1 * _H_SLOPE * j[0], 0.40, 0.85)),
        "BVTV": float(np.clip(0.20 * math.exp(0.12 * q + 0.012 * j[1]), 0.02, 0.6)),
        "TbTh": tbth,
        "TbTh_px": tbth / shapes.TEXTURE_PX_MM,
        "spacing": spacing,
        "spacing_px": spacing / shapes.TEXTURE_PX_MM,
        "anisotropy": float(np.clip(1.3 - 0.08 * q + pat["aniso_offset"] + 0.008 * j[4], 1.0, 2.0)),
        "theta": pat["theta"],
        "w_s": pat["w_s"],
        "cortex": 2.5 * math.exp(0.12 * q + 0.012 * j[5]),
    }


def _measured_tbs(clean: np.ndarray, masks: list[np.ndarray]) -> float:
    """Mean lags-1-4 slope over the vertebrae large enough to hold pairs at lag 4 (NaN if none)."""
    slopes = []
    for m in masks:
        if (m[4:, :] & m[:-4, :]).any() and (m[:, 4:] & m[:, :-4]).any():
            slopes.append(variogram_slope(clean, _LAGS_SMALL, mask=m))
    return float(np.mean(slopes)) if slopes else math.nan


def _tbs_to_hurst(tbs: np.ndarray) -> np.ndarray:
    h, g = _TBS_CALIBRATION
    return np.interp(tbs, g, h)


# --- rendering ----------------------------------------------------------------------------------
_ROT = {"calcaneus": 20.0, "knee": 8.0, "dxa": 3.0}
_I0 = {"calcaneus": (500.0, 1e4), "knee": (1e3, 3e4), "dxa": (200.0, 2000.0)}
_MTF = {"calcaneus": (0.3, 1.2), "knee": (0.3, 1.2), "dxa": (0.5, 1.0)}
_DXA_TAU = 0.6
"""Texture amplitude of the dxa vertebrae: pixel = aBMD (1 + tau F_H), F unit-variance fBm. Large
enough that the fine-scale texture carrying the TBS label survives the shot noise of the low-count
DXA exposure: the variogram-feature baseline (grouped 5-fold logistic regression) then lies in its
acceptance band [0.70, 0.95] (``tests/test_synthetic.py``). The variogram slope is scale-invariant,
so the stored TBS calibration g(H) does not depend on tau. 1 + tau F dips below zero in ~5% of
bone pixels; the exposure model takes that as locally thinner bone (more counts), not an error."""
_CALC_CONTRAST = 0.6
_W_S_RANGE = (0.1, 0.2)
_H_SLOPE = 0.10


def _render(mode: str, classes: int, preset: Preset, seed: int, size: int, pat: dict, k: int) -> tuple[np.ndarray, dict]:
    rng = _rng(seed, pat["index"], k + 1)
    visit = pat["visits"][k]
    side = "" if mode == "dxa" else ("L" if rng.random() < 0.5 else "R")
    names = CLASS_NAMES[(mode, classes)]
    label = names[pat["class"]]
    meta = {
        "image_id": f"P{pat['index']:05d}-{k:02d}",
        "patient_id": f"P{pat['index']:05d}",
        "mode": mode,
        "label": label,
        "label_name": _DISPLAY_NAMES[label],
        "T_latent": pat["T"],
        "site": "S0",
        "side": side,
        "visit": visit,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
    }
    nan = math.nan
    if mode == "dxa":
        h, w = size, size // 2
        pose = shapes.Pose.draw(rng, max_rot_deg=_ROT[mode], flip=False, size=h)
        nz = shapes.Nuisance.draw(rng, i0_range=_I0[mode], mtf_range=_MTF[mode])
        eps_scan = rng.normal(0.0, preset.tbs_scan_sd)
        hursts = _tbs_to_hurst(pat["TBS"] + eps_scan + rng.normal(0.0, 0.02, 4))
        abmd = pat["aBMD"] * np.array([0.94, 0.98, 1.02, 1.06]) + rng.normal(0.0, 0.01, 4)
        image, clean, masks, bbox = shapes.render_dxa(
            rng, h, w, traits=pat["shape"], hursts=hursts, abmd=abmd, pose=pose, nz=nz, tau=_DXA_TAU
        )
        measured = _measured_tbs(clean, masks)
        meta.update(q=pat["q"], H=float(np.mean(hursts)), BVTV=nan, TbTh=nan, spacing=nan, anisotropy=1.0, theta=nan,
                    TBS_true=pat["TBS"], TBS_measured=measured, aBMD=float(np.mean(abmd)))  # fmt: skip
    else:
        q = pat["q"] + pat["drift"] * visit
        px_scale = _px_scale(mode, size)
        params = _texture_params(pat, q, rng, px_scale)
        pose = shapes.Pose.draw(rng, max_rot_deg=_ROT[mode], flip=side == "L", size=size)
        nz = shapes.Nuisance.draw(rng, i0_range=_I0[mode], mtf_range=_MTF[mode])
        if mode == "calcaneus":
            base = pat["base"] + rng.normal(0.0, 0.05)
            image = shapes.render_calcaneus(
                rng, size, params=params, pose=pose, nz=nz, shared_noise=pat["low_noise"],
                base_attenuation=base, contrast=_CALC_CONTRAST,
            )  # fmt: skip
            bbox = (0, 0, size, size)
        else:
            image, bbox = shapes.render_knee(
                rng, size, traits=pat["shape"], params=params, pose=pose, nz=nz,
                shared_noise=pat["low_noise"], cortex_mm=params["cortex"],
            )  # fmt: skip
        meta.update(q=q, H=params["H"], BVTV=params["BVTV"], TbTh=params["TbTh"], spacing=params["spacing"],
                    anisotropy=params["anisotropy"], theta=math.degrees(params["theta"]),
                    TBS_true=nan, TBS_measured=nan, aBMD=nan)  # fmt: skip
    meta["roi_bbox"] = ",".join(str(int(v)) for v in bbox)
    return image, meta


def generate(
    mode: str,
    *,
    classes: int = 2,
    patients: int = 100,
    preset: str | Preset = "default",
    size: int | None = None,
    seed: int = 0,
    images_per_patient: int | None = None,
) -> Iterator[tuple[np.ndarray, dict]]:
    """Generate synthetic radiographs, patient by patient.

    Args:
        mode: ``"calcaneus"``, ``"knee"`` or ``"dxa"``.
        classes: 2 or 3 (names in ``CLASS_NAMES``).
        patients: number of patients (>= 1).
        preset: a name in ``PRESETS`` (or a ``Preset``).
        size: image side in px (dxa: height; width = size // 2); None for ``DEFAULT_SIZE``.
        seed: non-negative integer; same arguments give identical images.
        images_per_patient: fixed images per patient, or None for 1 + Poisson(1.5) capped at 6.

    Returns:
        An iterator of ``(image, metadata)``: image (H, W) float32 in [0, 1], metadata a dict with
        the ``COLUMNS`` except ``path``.

    Raises:
        ValueError: on an invalid argument (raised at the call, not at the first ``next``).
    """
    p, size = _check_args(mode, classes, patients, preset, size, seed, images_per_patient)
    return _iterate(mode, int(classes), p, int(seed), size, int(patients), images_per_patient)


def _iterate(mode, classes, preset, seed, size, patients, images_per_patient) -> Iterator[tuple[np.ndarray, dict]]:
    for index in range(patients):
        pat = _patient(mode, classes, preset, seed, index, images_per_patient, size)
        for k in range(pat["n_images"]):
            yield _render(mode, classes, preset, seed, size, pat, k)


# --- writing ------------------------------------------------------------------------------------
def _write_png(image: np.ndarray, path: Path, bit_depth: int) -> None:
    """Deterministic grey PNG (8-bit 'L' or 16-bit 'I;16', no metadata chunks) via ``io.save_png``."""
    from osteo_tf.io import save_png

    save_png(np.clip(image, 0.0, 1.0), path, bit_depth=bit_depth)


def _prepare_out(out: Path) -> None:
    """Refuse a non-empty folder unless it only holds a previous synthetic dataset (then clear it)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out must be a folder (it exists and is a file). Received: out={str(out)!r}")
    if not out.exists() or not any(out.iterdir()):
        return
    refuse = ValueError(
        "out is not empty and does not hold a previous synthetic dataset (only metadata.csv and the "
        f"PNGs it lists are allowed); choose an empty folder. Received: out={str(out)!r}"
    )
    meta = out / "metadata.csv"
    if not meta.is_file():
        raise refuse
    try:
        old = pd.read_csv(meta, dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise refuse from exc
    if not {"generator_version", "path", "patient_id"} <= set(old.columns):
        raise refuse
    listed = set(old["path"])
    files = [f for f in out.rglob("*") if not f.is_dir()]
    for f in files:
        rel = f.relative_to(out).as_posix()
        if rel != "metadata.csv" and (rel not in listed or not rel.endswith(".png") or "/" not in rel):
            raise refuse
    for f in files:
        f.unlink()
    for d in sorted((d for d in out.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
        d.rmdir()


def write_dataset(
    out: str | Path,
    *,
    mode: str,
    classes: int = 2,
    patients: int = 100,
    preset: str | Preset = "default",
    size: int | None = None,
    seed: int = 0,
    images_per_patient: int | None = None,
    bit_depth: int = 8,
) -> pd.DataFrame:
    """Write ``out/<label>/<image_id>.png`` and ``out/metadata.csv``; byte-identical per arguments.

    Args:
        out: the output folder; it must be empty, absent, or a previous synthetic dataset (which
            is replaced).
        mode, classes, patients, preset, size, seed, images_per_patient: see :func:`generate`.
        bit_depth: 8 or 16 (PNG grey levels).

    Returns:
        The metadata DataFrame (``COLUMNS``; ``path`` relative to ``out``, POSIX), one row per
        image in (patient, image) order, which is image_id order below 100,000 patients.

    Raises:
        ValueError: on an invalid argument or an unsuitable ``out``.
    """
    if not isinstance(out, (str, Path)) or str(out) == "":
        raise ValueError(f"out must be a path to a folder. Received: out={out!r}")
    _check_choice("bit_depth", bit_depth, (8, 16))
    items = generate(mode, classes=classes, patients=patients, preset=preset, size=size, seed=seed,
                     images_per_patient=images_per_patient)  # fmt: skip
    out = Path(out)
    _prepare_out(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for image, meta in items:
        rel = f"{meta['label']}/{meta['image_id']}.png"
        (out / meta["label"]).mkdir(exist_ok=True)
        _write_png(image, out / rel, bit_depth)
        rows.append({**meta, "path": rel})
    df = pd.DataFrame(rows, columns=list(COLUMNS))  # rows in (patient, image) order
    df.to_csv(out / "metadata.csv", index=False, float_format="%.6f", lineterminator="\n")
    return df


def _calibrate_tbs(hursts: Sequence[float] = tuple(np.arange(0.3, 1.01, 0.05)), reps: int = 24, size: int = 256) -> pd.DataFrame:
    """Measure the lags-1-4 slope of the clean dxa field vs H (source of ``_TBS_CALIBRATION``)."""
    rows = []
    for h in hursts:
        vals = []
        for r in range(reps):
            rng = _rng(12345, int(round(h * 1000)), r)
            traits = shapes.dxa_shape_traits(rng)
            pose = shapes.Pose.draw(rng, max_rot_deg=3.0, flip=False, size=size)
            nz = shapes.Nuisance.draw(rng, i0_range=_I0["dxa"], mtf_range=_MTF["dxa"])
            _, clean, masks, _ = shapes.render_dxa(
                rng, size, size // 2, traits=traits, hursts=np.full(4, h), abmd=np.ones(4), pose=pose, nz=nz, tau=_DXA_TAU
            )
            vals.append(np.mean([variogram_slope(clean, _LAGS_SMALL, mask=m) for m in masks]))
        rows.append({"H": float(h), "slope": float(np.mean(vals)), "sd": float(np.std(vals))})
    return pd.DataFrame(rows)
