"""Private rendering helpers of :mod:`osteo_tf.synthetic`: texture core, imaging chain, modes.

Everything here is deterministic given the ``numpy.random.Generator`` passed in. Coordinates:
``X`` (columns, to the right) and ``Y`` (rows, downwards) in pixels of the output image, centred.
A per-image pose maps output coordinates to the patient frame, ``x = M @ X + t``, with
``M = s * R(phi) * Flip``; shapes are evaluated in the patient frame, so shape jitter is a
patient fingerprint while the pose is per-image nuisance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import erfinv

# --- design constants (see the module docstring of osteo_tf.synthetic) ---------------------------
FBM_OUTER_SCALE_PX = 256.0  # outer scale of the power-law spectrum (px at the texture resolution)
FBM_SHARED_WAVELENGTH_PX = 24.0  # wavelengths longer than this come from the patient's own noise
NETWORK_SLICES = 8  # L, number of projected double-cut slices
NETWORK_REL_BANDWIDTH = 0.18  # Gaussian ring width relative to its centre frequency
KNEE_OUTER_SCALE_PX = 32.0  # finer-grained fBm in the knee so the tibial ROI holds many blobs
KNEE_ROW_WEIGHT = 4.0  # vertical weight of the inside distance that sets the projected depth
KNEE_TRABECULAR_FRACTION = 0.6  # trabecular excess attenuation relative to cortical bone
KNEE_BONE_CONTRAST_LOG = 0.5  # per-image bone contrast factor, log-uniform in exp(+-this)
KNEE_REFERENCE_BVTV = 0.20  # BV/TV at which the texture modulates by KNEE_TEXTURE_CONTRAST
KNEE_TEXTURE_BVTV_POWER = 0.75  # *design*: texture amplitude ~ BV/TV^this (see osteo_tf.synthetic, attenuation)
KNEE_TEXTURE_CONTRAST = 0.8  # relative modulation of the trabecular attenuation by tex
TEXTURE_PX_MM = 0.1  # texture pixel size (calcaneus px; knee texture is rendered at this scale x n/256)


@dataclass(frozen=True)
class Pose:
    """Per-image pose: output pixel (X, Y) -> patient frame ``M @ (X, Y) + t`` (pixels)."""

    matrix: np.ndarray  # (2, 2)
    shift: np.ndarray  # (2,)

    @classmethod
    def draw(cls, rng: np.random.Generator, *, max_rot_deg: float, flip: bool, size: float) -> Pose:
        phi = math.radians(rng.uniform(-max_rot_deg, max_rot_deg))
        scale = rng.uniform(0.9, 1.1)
        shift = rng.uniform(-0.05, 0.05, size=2) * size
        c, s = math.cos(phi), math.sin(phi)
        rot = np.array([[c, -s], [s, c]])
        flip_m = np.diag([-1.0 if flip else 1.0, 1.0])
        return cls(matrix=scale * rot @ flip_m, shift=shift)

    def to_patient(self, gx: np.ndarray, gy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = self.matrix
        return m[0, 0] * gx + m[0, 1] * gy + self.shift[0], m[1, 0] * gx + m[1, 1] * gy + self.shift[1]

    def to_output(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inv = np.linalg.inv(self.matrix)
        x0, y0 = np.asarray(x) - self.shift[0], np.asarray(y) - self.shift[1]
        return inv[0, 0] * x0 + inv[0, 1] * y0, inv[1, 0] * x0 + inv[1, 1] * y0

    @property
    def scale(self) -> float:
        return float(math.sqrt(abs(np.linalg.det(self.matrix))))


def centred_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (X right, Y down) with the origin at the image centre."""
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    return gx - (w - 1) / 2.0, gy - (h - 1) / 2.0


# --- texture core ---------------------------------------------------------------------------------
def _freq_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.fft.fftfreq(h).astype(np.float32)[:, None], np.fft.rfftfreq(w).astype(np.float32)[None, :]


def _aniso_radius(h: int, w: int, a: float, theta: float, frame: np.ndarray | None = None) -> np.ndarray:
    """|k|_a = |diag(1, a) R(theta) k_patient| on an rfft grid; ``frame`` maps output k to patient k."""
    ky, kx = _freq_grid(h, w)
    if frame is not None:  # k_patient = frame @ k_output
        kx, ky = frame[0, 0] * kx + frame[0, 1] * ky, frame[1, 0] * kx + frame[1, 1] * ky
    c, s = math.cos(theta), math.sin(theta)
    k1 = c * kx + s * ky
    k2 = -s * kx + c * ky
    return np.sqrt(k1 * k1 + (a * a) * (k2 * k2)).astype(np.float32)


def complex_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    z = rng.standard_normal((*shape, 2), dtype=np.float32)
    return z.view(np.complex64)[..., 0]


def fbm(
    rng: np.random.Generator,
    h: int,
    w: int,
    *,
    hurst: float,
    a: float = 1.0,
    theta: float = 0.0,
    outer_scale: float | None = None,
    shared_noise: np.ndarray | None = None,
    shared_wavelength: float = FBM_SHARED_WAVELENGTH_PX,
) -> np.ndarray:
    """Anisotropic spectral fBm with an outer scale, standardised to zero mean, unit variance.

    PSD ~ (|k|_a^2 + k0^2)^-(H+1) with k0 = 1/outer_scale: fBm (variogram ~ h^2H) below the outer
    scale, flat above it. Frequencies below 1/shared_wavelength take ``shared_noise`` (the
    patient's low-frequency seed) when given.
    """
    r = _aniso_radius(h, w, a, theta)
    k0 = 1.0 / (FBM_OUTER_SCALE_PX if outer_scale is None else outer_scale)
    amp = np.power(r * r + k0 * k0, -(hurst + 1.0) / 2.0, dtype=np.float32)
    amp[0, 0] = 0.0
    noise = complex_noise(rng, amp.shape)
    if shared_noise is not None:
        ky, kx = _freq_grid(h, w)
        low = np.sqrt(kx * kx + ky * ky) < 1.0 / shared_wavelength
        noise = np.where(low, shared_noise, noise)
    field = np.fft.irfft2(noise * amp, s=(h, w)).astype(np.float32)
    return _standardise(field)


def network(
    rng: np.random.Generator,
    h: int,
    w: int,
    *,
    spacing_px: float,
    bvtv: float,
    a: float,
    theta: float,
    frame: np.ndarray | None = None,
    slices: int = NETWORK_SLICES,
) -> np.ndarray:
    """Projected double-cut band-pass GRF network: mean over ``slices`` of 1[|G| < c]."""
    r = _aniso_radius(h, w, a, theta, frame)
    k0 = 1.0 / spacing_px
    ring = np.exp(-0.5 * ((r - k0) / (NETWORK_REL_BANDWIDTH * k0)) ** 2).astype(np.float32)
    support = np.nonzero(ring > 1e-4)  # the ring covers a few % of the plane: draw noise there only
    spec = np.zeros((slices, *ring.shape), np.complex64)
    spec[:, support[0], support[1]] = complex_noise(rng, (slices, support[0].size)) * ring[support]
    g = np.fft.irfft2(spec, s=(h, w), axes=(-2, -1))
    g /= g.std(axis=(-2, -1), keepdims=True) + 1e-12
    cut = math.sqrt(2.0) * float(erfinv(bvtv))
    return (np.abs(g) < cut).mean(axis=0, dtype=np.float32)


def _standardise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(dtype=np.float64)
    return (x / (x.std(dtype=np.float64) + 1e-12)).astype(np.float32)


def texture(
    rng: np.random.Generator,
    n_h: int,
    n_w: int,
    *,
    params: dict,
    pose: Pose,
    shared_noise: np.ndarray | None,
    px_scale: float = 1.0,
    outer_scale: float | None = None,
) -> np.ndarray:
    """tex = w_s * P + (1 - w_s) * F_H on the output grid (standardised, float32).

    F_H is synthesised in the patient frame on a 2n grid and sampled through ``pose`` (so the
    patient's low-frequency seed moves with the image); P is synthesised directly on the output
    grid with its orientation and spacing mapped through the pose. ``px_scale`` = texture pixels
    per output pixel.
    """
    m = 2 * int(math.ceil(max(n_h, n_w) * px_scale))
    theta, a = params["theta"], params["anisotropy"]
    field = fbm(rng, m, m, hurst=params["H"], a=a, theta=theta, shared_noise=shared_noise, outer_scale=outer_scale)
    gx, gy = centred_grid(n_h, n_w)
    px, py = pose.to_patient(gx * px_scale, gy * px_scale)
    coords = np.stack([py + (m - 1) / 2.0, px + (m - 1) / 2.0])
    f_img = ndimage.map_coordinates(field, coords, order=1, mode="wrap")
    # output k -> patient k: k_p = M^-T k_out / px_scale
    frame = np.linalg.inv(pose.matrix).T / px_scale
    p_img = network(rng, n_h, n_w, spacing_px=params["spacing_px"], bvtv=params["BVTV"], a=a, theta=theta, frame=frame)
    tb_sigma = 0.5 * params["TbTh_px"] / (px_scale * pose.scale)
    if tb_sigma > 0.3:
        p_img = ndimage.gaussian_filter(p_img, tb_sigma, mode="wrap")
    w_s = params["w_s"]
    return _standardise(w_s * _standardise(p_img) + (1.0 - w_s) * _standardise(f_img))


# --- imaging chain --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Nuisance:
    """Per-image acquisition and display nuisance, independent of class."""

    i0: float
    mtf_sigma: float
    gain: float
    offset: float
    gamma: float
    heel: float
    heel_angle: float

    @classmethod
    def draw(cls, rng: np.random.Generator, *, i0_range: tuple[float, float], mtf_range: tuple[float, float]) -> Nuisance:
        return cls(
            i0=float(math.exp(rng.uniform(math.log(i0_range[0]), math.log(i0_range[1])))),
            mtf_sigma=float(rng.uniform(*mtf_range)),
            gain=float(math.exp(rng.uniform(math.log(0.8), math.log(1.25)))),
            offset=float(rng.uniform(-0.1, 0.1)),
            gamma=float(math.exp(rng.uniform(math.log(0.8), math.log(1.25)))),
            heel=float(rng.uniform(-0.1, 0.1)),
            heel_angle=float(rng.uniform(0.0, 2.0 * math.pi)),
        )


def expose(rng: np.random.Generator, attenuation: np.ndarray, nz: Nuisance, *, reference: float = 0.0) -> np.ndarray:
    """Beer-Lambert + heel ramp + Poisson counts -> log image -> Gaussian MTF (float32).

    ``nz.i0`` is the expected count where the attenuation equals ``reference`` (e.g. behind the
    soft tissue of the knee), so thick body parts are not photon-starved by construction.
    """
    h, w = attenuation.shape
    gx, gy = centred_grid(h, w)
    ramp = (math.cos(nz.heel_angle) * gx + math.sin(nz.heel_angle) * gy) / (0.5 * max(h, w))
    flux = nz.i0 * (1.0 + nz.heel * ramp)
    counts = rng.poisson(flux * np.exp(reference - attenuation)).astype(np.float32)
    log_img = reference - np.log(np.maximum(counts, 0.5) / np.float32(nz.i0))
    return ndimage.gaussian_filter(log_img, nz.mtf_sigma, mode="nearest")


def display(log_img: np.ndarray, nz: Nuisance, *, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Percentile window, gamma, gain and offset into [0, 1] (attenuation shown bright)."""
    lo, hi = np.percentile(log_img, [low_pct, high_pct])
    v = np.clip((log_img - lo) / max(hi - lo, 1e-6), 0.0, 1.0) ** nz.gamma
    # gain in [0.8, 1.25] scales a half-range of at most 0.4 around 0.5 + offset: no extra clipping
    v = 0.5 + nz.offset + (0.4 / 1.25) * nz.gain * (2.0 * v - 1.0)
    return np.clip(v, 0.0, 1.0).astype(np.float32)


# --- calcaneus ------------------------------------------------------------------------------------
def render_calcaneus(
    rng: np.random.Generator,
    size: int,
    *,
    params: dict,
    pose: Pose,
    nz: Nuisance,
    shared_noise: np.ndarray | None,
    base_attenuation: float,
    contrast: float,
) -> np.ndarray:
    """A calcaneus texture ROI: attenuation = base + contrast * tex, then the imaging chain."""
    tex = texture(rng, size, size, params=params, pose=pose, shared_noise=shared_noise)
    log_img = expose(rng, base_attenuation + contrast * tex, nz)
    return display(log_img, nz)


# --- knee -----------------------------------------------------------------------------------------
def _chord(inside_dist: np.ndarray, radius: np.ndarray | float) -> np.ndarray:
    """Projected path length through a rounded body at distance d inside its outline (mm)."""
    d = np.minimum(inside_dist, radius)
    return 2.0 * np.sqrt(np.maximum(d * (2.0 * radius - d), 0.0))


def _inside_distance(mask: np.ndarray, row_weight: float = KNEE_ROW_WEIGHT) -> np.ndarray:
    """Distance (px) to the outside with rows weighted ``row_weight`` x, on the mask's bbox only.

    Long bones are roughly cylinders along the image's vertical axis, so the projected depth is set
    by the lateral distance; the heavier row weight closes the bone ends (condyles, plateau)
    within a few mm instead of letting the depth grow with the distance from the joint.
    """
    out = np.zeros(mask.shape, np.float32)
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return out
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, mask.shape[0])
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, mask.shape[1])
    sub = np.pad(mask[r0:r1, c0:c1], 1)  # the image border counts as outside
    out[r0:r1, c0:c1] = ndimage.distance_transform_edt(sub, sampling=(row_weight, 1.0))[1:-1, 1:-1]
    return out


def _flare(y: np.ndarray, y0: float, w_end: float, w_shaft: float, length: float) -> np.ndarray:
    return w_shaft + (w_end - w_shaft) / (1.0 + ((y - y0) / length) ** 2)


def knee_shape_traits(rng: np.random.Generator) -> dict:
    """Patient-level knee anatomy (mm), the shape fingerprint."""
    traits = {
        "leg_width": rng.uniform(90.0, 140.0),
        "leg_power": rng.uniform(2.5, 4.0),
        "joint_y": rng.normal(0.0, 4.0),
        "joint_space": rng.uniform(4.0, 7.0),
        "fem_shaft": rng.uniform(12.5, 16.0),
        "fem_cond": rng.uniform(34.0, 42.0),
        "fem_cond_h": rng.uniform(20.0, 28.0),
        "tib_plateau": rng.uniform(34.0, 41.0),
        "tib_shaft": rng.uniform(13.0, 17.0),
        "tib_head_h": rng.uniform(18.0, 26.0),
        "notch_w": rng.uniform(6.0, 9.0),
        "fib_dx": rng.uniform(-6.0, -1.0),
        "fib_dy": rng.uniform(26.0, 36.0),
        "x_shift": rng.normal(0.0, 3.0),
        "soft_mu": rng.uniform(0.017, 0.021),
    }
    return {k: float(v) for k, v in traits.items()}


def render_knee(
    rng: np.random.Generator,
    size: int,
    *,
    traits: dict,
    params: dict,
    pose: Pose,
    nz: Nuisance,
    shared_noise: np.ndarray | None,
    cortex_mm: float,
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A knee AP radiograph and the tibial subchondral ROI bbox (x0, y0, x1, y1), half-open."""
    fov = 154.0  # mm across the image (512 px at 0.3 mm/px)
    px_mm = fov / size
    gx, gy = centred_grid(size, size)
    xp, yp = pose.to_patient(gx, gy)
    x, y = xp * px_mm - traits["x_shift"], yp * px_mm  # patient frame, mm
    t = traits
    mu_soft = t["soft_mu"]
    # beam quality (kVp, filtration, scatter) varies per image and scales the bone contrast
    mu_bone = mu_soft * (1.0 + 1.5 * math.exp(rng.uniform(-KNEE_BONE_CONTRAST_LOG, KNEE_BONE_CONTRAST_LOG)))

    half_leg = 0.5 * t["leg_width"] * (1.0 - 0.08 * y / 77.0)
    u = np.clip(np.abs(x) / half_leg, 0.0, 1.0)
    soft = 0.9 * t["leg_width"] * (1.0 - u ** t["leg_power"]) ** (1.0 / t["leg_power"])
    soft = np.where(np.abs(x) < half_leg, soft, 0.0)

    yj, gap = t["joint_y"], t["joint_space"]
    # femur: shaft flaring to the condyles, super-elliptic condyles, intercondylar notch
    f_bottom = yj - 0.5 * gap
    f_centre = f_bottom - t["fem_cond_h"]
    f_half = _flare(np.minimum(y, f_centre), f_centre, t["fem_cond"], t["fem_shaft"], 28.0)
    cond = (np.abs(x) / t["fem_cond"]) ** 3 + (np.maximum(y - f_centre, 0.0) / t["fem_cond_h"]) ** 3
    notch = (x / t["notch_w"]) ** 2 + ((y - f_bottom) / 9.0) ** 2 < 1.0
    femur = (np.abs(x) < f_half) & (cond < 1.0) & ~notch
    # tibia: super-elliptic plateau narrowing to the shaft, tibial spines
    t_top = yj + 0.5 * gap
    t_centre = t_top + t["tib_head_h"]
    spines = 3.0 * np.exp(-((x / 5.0) ** 2))
    t_half = _flare(np.maximum(y, t_centre), t_centre, t["tib_plateau"], t["tib_shaft"], 26.0)
    head = (np.abs(x) / t["tib_plateau"]) ** 4 + (np.maximum(t_centre - y, 0.0) / (t["tib_head_h"] + spines)) ** 4
    tibia = (np.abs(x) < t_half) & (head < 1.0)
    # fibula: head below the lateral plateau plus its shaft
    fx = t["tib_plateau"] + t["fib_dx"]
    fy = t_top + t["fib_dy"]
    fibula = (((x - fx) / 9.0) ** 2 + ((y - fy) / 11.0) ** 2 < 1.0) | ((np.abs(x - fx - 2.0) < 5.5) & (y > fy))

    tex = texture(rng, size, size, params=params, pose=pose, shared_noise=shared_noise, px_scale=1.0,
                  outer_scale=KNEE_OUTER_SCALE_PX)
    atten = mu_soft * soft
    # trabecular density: fewer trabeculae wash out the pattern, so its contrast scales with BV/TV
    amp = KNEE_TEXTURE_CONTRAST * (params["BVTV"] / KNEE_REFERENCE_BVTV) ** KNEE_TEXTURE_BVTV_POWER
    trab = np.maximum(1.0 + amp * tex, 0.0)
    for mask, radius in ((femur, f_half), (tibia, t_half), (fibula, 7.0)):
        d = _inside_distance(mask) * (px_mm * pose.scale)
        outer = _chord(d, radius)
        inner = _chord(np.maximum(d - cortex_mm, 0.0), np.maximum(radius - cortex_mm, 1.0))
        inner = np.where(d > cortex_mm, inner, 0.0)
        atten = atten + (mu_bone - mu_soft) * (outer - inner) + KNEE_TRABECULAR_FRACTION * (mu_bone - mu_soft) * inner * trab
    log_img = expose(rng, atten.astype(np.float32), nz, reference=float(atten.max()) - 1.0)
    image = display(log_img, nz)

    # tibial subchondral ROI (patient frame, mm) -> output pixels, enclosing box
    half_w = 0.6 * t["tib_plateau"]
    y0 = t_top + cortex_mm + 8.0  # clear of the plateau's subchondral plate under +-8 deg rotation
    y1 = y0 + 0.9 * t["tib_plateau"]
    cx = np.array([-half_w, half_w, half_w, -half_w]) + t["x_shift"]
    cy = np.array([y0, y0, y1, y1])
    ox, oy = pose.to_output(cx / px_mm, cy / px_mm)
    ox, oy = ox + (size - 1) / 2.0, oy + (size - 1) / 2.0
    bbox = (
        int(np.clip(np.floor(ox.min()), 0, size - 1)),
        int(np.clip(np.floor(oy.min()), 0, size - 1)),
        int(np.clip(np.ceil(ox.max()) + 1, 1, size)),
        int(np.clip(np.ceil(oy.max()) + 1, 1, size)),
    )
    return image, bbox


# --- lumbar spine DXA -----------------------------------------------------------------------------
def dxa_shape_traits(rng: np.random.Generator) -> dict:
    """Patient-level spine anatomy (mm) and soft tissue."""
    return {
        "widths": np.sort(rng.uniform(38.0, 52.0, 4)),
        "heights": np.sort(rng.uniform(24.0, 31.0, 4)),
        "discs": rng.uniform(8.0, 10.0, 3),
        "curve": rng.normal(0.0, 4.0),
        "tilt": rng.normal(0.0, 0.04),
        "soft": rng.uniform(0.6, 1.4),  # BMI-like soft-tissue factor
        "top": rng.uniform(-6.0, 6.0),
    }


def render_dxa(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    traits: dict,
    hursts: np.ndarray,
    abmd: np.ndarray,
    pose: Pose,
    nz: Nuisance,
    tau: float,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], tuple[int, int, int, int]]:
    """A lumbar DXA image; returns (image, clean field, vertebra masks L1-L4, bbox of L1-L4)."""
    px_mm = 0.75 * 256.0 / height
    gx, gy = centred_grid(height, width)
    xp, yp = pose.to_patient(gx, gy)
    x, y = xp * px_mm, yp * px_mm
    t = traits
    span = t["heights"].sum() + t["discs"].sum()
    top = -0.5 * span + t["top"]
    clean = np.zeros((height, width), np.float32)
    masks = []
    y_cur = top
    for v in range(4):
        hv, wv = t["heights"][v], t["widths"][v]
        cy = y_cur + 0.5 * hv
        cx = t["curve"] * math.sin(math.pi * (cy - top) / span) + t["tilt"] * (cy - top)
        dx, dy = np.abs(x - cx) - (0.5 * wv - 4.0), np.abs(y - cy) - (0.5 * hv - 4.0)
        rounded = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0)) + np.minimum(np.maximum(dx, dy), 0.0)
        body = rounded < 4.0
        pedicle = (((np.abs(x - cx) - 0.3 * wv) / 4.0) ** 2 + ((y - cy + 0.15 * hv) / 6.0) ** 2) < 1.0
        masks.append(body & ~ndimage.binary_dilation(pedicle, iterations=1))
        field = fbm(rng, height, width, hurst=float(hursts[v]))
        clean = np.where(body, abmd[v] * (1.0 + tau * field), clean)
        clean = clean + np.where(pedicle & body, 0.15 * abmd[v], 0.0)
        y_cur += hv + (t["discs"][v] if v < 3 else 0.0)
    soft = 0.25 * t["soft"] * np.exp(-((x / (0.9 * 60.0 * t["soft"])) ** 2)).astype(np.float32)
    log_img = expose(rng, (1.2 * clean + soft).astype(np.float32), nz)
    image = display(log_img, nz)
    union = np.any(masks, axis=0)
    rows, cols = np.nonzero(union)
    bbox = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1) if rows.size else (0, 0, width, height)
    return image, clean, masks, bbox
