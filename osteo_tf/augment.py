"""Data augmentation and class balancing for the studies.

* Study 01 offline datasets N / A / B / C (:func:`study01_variants`, :func:`build_offline_set`,
  :func:`write_offline_set`). Every derived image keeps the ``source_id`` of the image it came
  from: split by that group BEFORE augmenting (the clean protocol), or the same source ends up
  on both sides of the split (the paper protocol).
* On-the-fly training augmentation for studies 04 and 05 as a seeded ``keras.Sequential`` of
  Keras 3 preprocessing layers (:func:`training_augmenter`, :func:`augmenter_for`). Those layers
  only act with ``training=True``; call them on the training split only.
* Class balancing for study 04: :func:`class_weights`, :func:`oversample_indices` and the
  offline minority augmentation :func:`augment_to_fraction`.

Images are (H, W) float32 in [0, 1] as in :mod:`osteo_tf.preprocessing`; Keras is imported
lazily, so the offline (NumPy) part does not load TensorFlow.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping, Sequence

import cv2
import numpy as np

from osteo_tf import preprocessing as pp
from osteo_tf.io import save_png

if TYPE_CHECKING:  # pragma: no cover
    import keras

__all__ = [
    "OFFLINE_SETS",
    "STUDY01_VARIANTS",
    "STUDY04_AUGMENT",
    "STUDY05_AUGMENT",
    "augment_to_fraction",
    "augmenter_for",
    "build_offline_set",
    "class_weights",
    "oversample_indices",
    "sharpen",
    "study01_variants",
    "study04_transform",
    "training_augmenter",
    "write_offline_set",
]

# --------------------------------------------------------------------------------------------
# Study 01: offline sets
# --------------------------------------------------------------------------------------------
STUDY01_VARIANTS: tuple[str, ...] = (
    "rot90",
    "rot270",
    "contrast+30_brightness-30",
    "brightness+20_contrast-20",
)
"""Names of the four study 01 "A" transforms, in output order."""

OFFLINE_SETS: tuple[str, ...] = ("N", "A", "B", "C")
"""Study 01 datasets: sizes 1x, 4x, 8x and 9x the sources."""

SHARPEN_SUFFIX = "+sharpen"
"""Appended to the ``aug`` name of a sharpened B copy (``"rot90+sharpen"``)."""


def sharpen(image: np.ndarray) -> np.ndarray:
    """Study 01 sharpening: "sharpness +50%, radius 3" as an unsharp mask.

    Args:
        image: (H, W) float32 in [0, 1].

    Returns:
        (H, W) float32 in [0, 1]: ``preprocessing.unsharp_sharpen(image, amount=0.5, radius=3)``.
    """
    return pp.unsharp_sharpen(image, amount=0.5, radius=3.0)


def study01_variants(image: np.ndarray) -> dict[str, np.ndarray]:
    """The four study 01 "A" transforms of one image.

    * ``rot90`` / ``rot270``: exact ``np.rot90`` (counter-clockwise 90 and 270 degrees; a
      non-square (H, W) image becomes (W, H));
    * ``contrast+30_brightness-30`` and ``brightness+20_contrast-20``:
      :func:`osteo_tf.preprocessing.adjust_contrast_brightness` (contrast around the mean
      grey, brightness multiplicative, as PIL ImageEnhance).

    Args:
        image: (H, W) float32 in [0, 1] (uint8/uint16 converted by the preprocessing rule).

    Returns:
        ``{name: (H, W) or (W, H) float32 in [0, 1]}`` with the keys of
        :data:`STUDY01_VARIANTS`, in that order.
    """
    img = pp._as_image(image)
    return {
        "rot90": np.ascontiguousarray(np.rot90(img, k=1)),
        "rot270": np.ascontiguousarray(np.rot90(img, k=3)),
        "contrast+30_brightness-30": pp.adjust_contrast_brightness(img, contrast=0.3, brightness=-0.3),
        "brightness+20_contrast-20": pp.adjust_contrast_brightness(img, contrast=-0.2, brightness=0.2),
    }


def _check_parallel(images: Sequence[Any], others: Mapping[str, Sequence[Any]]) -> int:
    if isinstance(images, np.ndarray) and images.ndim == 2:
        raise TypeError("images must be a sequence of (H, W) images, not a single image. "
                        f"Received: images.shape={images.shape}")
    n = len(images)
    for name, seq in others.items():
        if len(seq) != n:
            raise ValueError(f"{name} must have one entry per image ({n}). Received: len({name})={len(seq)}")
    return n


def build_offline_set(images: Sequence[np.ndarray], ids: Sequence[str], labels: Sequence[Hashable], *,
                      set_name: str) -> list[dict[str, Any]]:
    """Build one of the study 01 offline datasets.

    * ``N``: the originals (``aug="orig"``), 1x;
    * ``A``: the four :func:`study01_variants` of every source, 4x;
    * ``B``: A plus a :func:`sharpen`-ed copy of every A image (``aug`` + ``"+sharpen"``), 8x;
    * ``C``: B followed by N, 9x (174 sources -> 174 / 696 / 1392 / 1566).

    Args:
        images: source images, each (H, W) float32 in [0, 1].
        ids: one unique source id per image; it becomes every derived record's group.
        labels: one class label per image (int or str), copied to derived records.
        set_name: ``"N"``, ``"A"``, ``"B"`` or ``"C"``.

    Returns:
        Records ``{"image", "source_id", "aug", "label"}``; for A and B grouped by source in
        :data:`STUDY01_VARIANTS` order.

    Raises:
        ValueError: unknown ``set_name``, lengths that differ, or duplicate ``ids``.
    """
    if set_name not in OFFLINE_SETS:
        raise ValueError(f"set_name must be one of {OFFLINE_SETS}. Received: set_name={set_name!r}")
    n = _check_parallel(images, {"ids": ids, "labels": labels})
    ids = [str(i) for i in ids]
    if len(set(ids)) != n:
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"ids must be unique (they are the split groups). Received duplicates: {dup}")
    sources = [pp._as_image(img, f"images[{k}]") for k, img in enumerate(images)]
    originals = [dict(image=img, source_id=sid, aug="orig", label=lab)
                 for img, sid, lab in zip(sources, ids, labels)]
    if set_name == "N":
        return originals
    a_set = [dict(image=var, source_id=sid, aug=name, label=lab)
             for img, sid, lab in zip(sources, ids, labels)
             for name, var in study01_variants(img).items()]
    if set_name == "A":
        return a_set
    sharpened = [dict(rec, image=sharpen(rec["image"]), aug=rec["aug"] + SHARPEN_SUFFIX) for rec in a_set]
    b_set = a_set + sharpened
    if set_name == "B":
        return b_set
    return b_set + originals


_SAFE = re.compile(r"[^A-Za-z0-9._+=-]")


def _safe_name(text: str) -> str:
    return _SAFE.sub("_", text)


def write_offline_set(records: Sequence[Mapping[str, Any]], out_dir: str | Path) -> Path:
    """Write records as ``out_dir/<label>/<source_id>__<aug>.png`` plus ``manifest.csv``.

    File-name characters outside ``[A-Za-z0-9._+=-]`` become ``_``. The manifest has the
    columns ``path`` (relative to ``out_dir``, POSIX separators), ``label`` and ``group``
    (= ``source_id``, the unit a split must keep together).

    Args:
        records: output of :func:`build_offline_set` (or :func:`augment_to_fraction`).
        out_dir: destination folder (created; existing files of the same name are replaced).

    Returns:
        The path of ``manifest.csv``.

    Raises:
        ValueError: when two records would map to the same file.
    """
    out = Path(out_dir)
    rows = []
    seen: set[str] = set()
    for k, rec in enumerate(records):
        missing = {"image", "source_id", "aug", "label"} - set(rec)
        if missing:
            raise ValueError(f"records[{k}] lacks keys {sorted(missing)}. Received keys: {sorted(rec)}")
        rel = f"{_safe_name(str(rec['label']))}/{_safe_name(str(rec['source_id']))}__{_safe_name(str(rec['aug']))}.png"
        if rel in seen:
            raise ValueError(f"two records map to the same file {rel!r} (duplicate source_id/aug). Received: records[{k}]")
        seen.add(rel)
        rows.append((rel, rec))
    out.mkdir(parents=True, exist_ok=True)
    for rel, rec in rows:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(pp._as_image(rec["image"]), path)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "group"])
        for rel, rec in rows:
            writer.writerow([rel, rec["label"], rec["source_id"]])
    return manifest


# --------------------------------------------------------------------------------------------
# Studies 04 / 05: on-the-fly Keras augmentation
# --------------------------------------------------------------------------------------------
STUDY04_AUGMENT: Mapping[str, Any] = MappingProxyType(dict(
    rotation_deg=10.0, width_shift=0.0, height_shift=0.0, shear=0.0, zoom=0.0,
    horizontal_flip=True, brightness=0.4,
))
"""Study 04: horizontal flip, rotation within +-10 deg, brightness up or down; no vertical
flip, no zoom. Keras ``RandomBrightness`` draws an additive change uniformly in +-40% of the
range; it cannot exclude changes below the paper's 10% (the NumPy :func:`study04_transform`
does draw 10-40%)."""

STUDY05_AUGMENT: Mapping[str, Any] = MappingProxyType(dict(
    rotation_deg=20.0, width_shift=0.2, height_shift=0.2, shear=0.2, zoom=0.2,
    horizontal_flip=True, brightness=None,
))
"""Study 05: rotation up to 20 deg, width/height shift 20%, shear 20%, zoom 20%, horizontal flip."""

_PRESETS = {"study04": STUDY04_AUGMENT, "study05": STUDY05_AUGMENT}


def _check_fraction(value: Any, name: str, *, high: float = 1.0) -> float:
    return pp._check_number(value, name, low=0.0, high=high)


def training_augmenter(*, rotation_deg: float = 20.0, width_shift: float = 0.2, height_shift: float = 0.2,
                       shear: float = 0.2, zoom: float = 0.2, horizontal_flip: bool = True,
                       brightness: float | tuple[float, float] | None = None, seed: int = 0,
                       fill_mode: str = "nearest", name: str = "training_augmenter") -> "keras.Sequential":
    """A seeded ``keras.Sequential`` of Keras 3 random preprocessing layers.

    Layers, in order, each only when its option is non-zero: ``RandomRotation`` (factor =
    ``rotation_deg / 360``), ``RandomTranslation`` (height/width factors = the shifts),
    ``RandomShear`` (x and y factor = ``shear``, random sign), ``RandomZoom`` (+-``zoom``, aspect
    kept), ``RandomFlip("horizontal")``, ``RandomBrightness(brightness, value_range=(0, 1))``
    (additive, clipped to [0, 1]). Layer i gets ``seed + i``. Layers are active only when
    called with ``training=True``; with ``training=False`` the model is the identity.

    Args:
        rotation_deg: maximum absolute rotation in degrees.
        width_shift: maximum horizontal shift as a fraction of the width.
        height_shift: maximum vertical shift as a fraction of the height.
        shear: maximum shear factor (fraction of the image, Keras ``RandomShear``).
        zoom: maximum zoom in or out as a fraction.
        horizontal_flip: flip left-right with probability 0.5.
        brightness: ``None`` (off), ``f`` for a change in ``[-f, f]`` of the range, or
            ``(low, high)`` in [-1, 1].
        seed: base seed; the same seed gives the same sequence of augmentations.
        fill_mode: how geometric transforms fill uncovered pixels (``"nearest"`` as Keras'
            ``ImageDataGenerator`` default, ``"reflect"``, ``"constant"``, ``"wrap"``).
        name: model name.

    Returns:
        An unbuilt ``keras.Sequential`` taking (B, H, W, C) float32 in [0, 1] (any C, e.g. 1
        or 3) and returning the same shape. With every option off it holds no layer.

    Raises:
        ValueError: an option out of range (shifts/shear/zoom in [0, 1), rotation in
            [0, 180], brightness in [-1, 1]), a negative seed or an unknown ``fill_mode``.
    """
    rotation_deg = pp._check_number(rotation_deg, "rotation_deg", low=0.0, high=180.0)
    width_shift = _check_fraction(width_shift, "width_shift")
    height_shift = _check_fraction(height_shift, "height_shift")
    shear = _check_fraction(shear, "shear")
    zoom = _check_fraction(zoom, "zoom", high=0.99)
    if not isinstance(horizontal_flip, (bool, np.bool_)):
        raise TypeError(f"horizontal_flip must be a bool. Received: horizontal_flip={horizontal_flip!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer. Received: seed={seed!r}")
    if fill_mode not in ("nearest", "reflect", "constant", "wrap"):
        raise ValueError(f"fill_mode must be 'nearest', 'reflect', 'constant' or 'wrap'. Received: fill_mode={fill_mode!r}")
    if brightness is not None:
        if isinstance(brightness, (tuple, list)):
            if len(brightness) != 2:
                raise ValueError(f"brightness must be a float or a (low, high) pair. Received: brightness={brightness!r}")
            lo = pp._check_number(brightness[0], "brightness[0]", low=-1.0, high=1.0)
            hi = pp._check_number(brightness[1], "brightness[1]", low=-1.0, high=1.0)
            if lo > hi:
                raise ValueError(f"brightness must have low <= high. Received: brightness={brightness!r}")
            brightness = (lo, hi)
        else:
            brightness = pp._check_number(brightness, "brightness", low=0.0, high=1.0)

    import keras

    seed = int(seed)
    layers: list[keras.layers.Layer] = []

    def _seed() -> int:
        return seed + len(layers)

    if rotation_deg > 0:
        layers.append(keras.layers.RandomRotation(rotation_deg / 360.0, fill_mode=fill_mode,
                                                  seed=_seed(), name="random_rotation"))
    if width_shift > 0 or height_shift > 0:
        layers.append(keras.layers.RandomTranslation(height_shift, width_shift, fill_mode=fill_mode,
                                                     seed=_seed(), name="random_translation"))
    if shear > 0:
        layers.append(keras.layers.RandomShear(x_factor=shear, y_factor=shear, fill_mode=fill_mode,
                                               seed=_seed(), name="random_shear"))
    if zoom > 0:
        layers.append(keras.layers.RandomZoom((-zoom, zoom), fill_mode=fill_mode, seed=_seed(),
                                              name="random_zoom"))
    if horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=_seed(), name="random_flip"))
    if brightness is not None and brightness != 0.0:
        layers.append(keras.layers.RandomBrightness(brightness, value_range=(0.0, 1.0), seed=_seed(),
                                                    name="random_brightness"))
    return keras.Sequential(layers, name=name)


def augmenter_for(study: str, seed: int = 0) -> "keras.Sequential":
    """The training augmenter of a study (:data:`STUDY04_AUGMENT` or :data:`STUDY05_AUGMENT`).

    Args:
        study: ``"study04"`` or ``"study05"`` (``"04"``, ``"4"``, ``"05"``, ``"5"`` also work).
        seed: base seed of the layers.

    Returns:
        ``training_augmenter(**preset, seed=seed, name=f"{study}_augmenter")``.
    """
    key = str(study).strip().lower()
    if key.removeprefix("study").lstrip("0") in ("4", "5"):
        key = "study0" + key.removeprefix("study").lstrip("0")
    if key not in _PRESETS:
        raise ValueError(f"No training augmentation preset for this study. Expected one of "
                         f"{sorted(_PRESETS)}. Received: study={study!r}")
    return training_augmenter(**_PRESETS[key], seed=seed, name=f"{key}_augmenter")


# --------------------------------------------------------------------------------------------
# Study 04: class balancing
# --------------------------------------------------------------------------------------------
def _as_labels(labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence of class indices. Received: shape={arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"labels must be integer class indices. Received: dtype={arr.dtype}")
    return arr.astype(np.int64)


def class_weights(labels: Sequence[int] | np.ndarray) -> dict[int, float]:
    """"Balanced" class weights ``n_samples / (n_classes * count[c])`` (as scikit-learn).

    Compute them from the TRAINING labels only (validation/test labels must not leak in).

    Args:
        labels: 1-D integer class indices of the training samples.

    Returns:
        ``{class: weight}`` for every class present, ready for ``model.fit(class_weight=...)``.
    """
    y = _as_labels(labels)
    classes, counts = np.unique(y, return_counts=True)
    return {int(c): float(y.size / (classes.size * n)) for c, n in zip(classes, counts)}


def _binary_minority(y: np.ndarray, name: str = "labels") -> tuple[int, int]:
    classes, counts = np.unique(y, return_counts=True)
    if classes.size != 2:
        raise ValueError(f"target_fraction needs exactly two classes. Received: classes {classes.tolist()} in {name}")
    minority = int(classes[np.argmin(counts)])  # ties: the lower class index
    majority = int(classes[1 - np.argmin(counts)])
    return minority, majority


def _extra_needed(n_minority: int, n_majority: int, target_fraction: float) -> int:
    """Smallest k with (n_minority + k) / (n_minority + k + n_majority) >= target_fraction."""
    needed = math.ceil(target_fraction * n_majority / (1.0 - target_fraction) - 1e-9)
    return max(0, needed - n_minority)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer. Received: seed={seed!r}")
    return int(seed)


def oversample_indices(labels: Sequence[int] | np.ndarray, *, target_fraction: float | None = None,
                       seed: int = 0) -> np.ndarray:
    """Indices into the training set that repeat minority samples.

    Extra copies are whole passes over the minority samples plus a seeded sample without
    replacement for the remainder, so repeats are spread evenly. Every original index appears
    at least once. The result is sorted; shuffle it in the data pipeline.

    Args:
        labels: 1-D integer class indices of the TRAINING set.
        target_fraction: desired minority fraction in (0, 1) for two classes (e.g. 0.37 as in
            study 04; the smallest number of copies reaching it). ``None``: balance every
            class up to the largest one (any number of classes).
        seed: seed of the remainder draw.

    Returns:
        1-D int64 array of indices (length >= ``len(labels)``).

    Raises:
        ValueError: ``target_fraction`` outside (0, 1) or not exactly two classes with it.
        TypeError: labels that are not integers.
    """
    y = _as_labels(labels)
    rng = np.random.default_rng(_check_seed(seed))
    base = np.arange(y.size)
    extras: list[np.ndarray] = []

    def _draw(pool: np.ndarray, k: int) -> np.ndarray:
        reps, rem = divmod(k, pool.size)
        return np.concatenate([np.tile(pool, reps), rng.choice(pool, rem, replace=False)])

    if target_fraction is None:
        classes, counts = np.unique(y, return_counts=True)
        for c, n in zip(classes, counts):
            if n < counts.max():
                extras.append(_draw(np.flatnonzero(y == c), int(counts.max() - n)))
    else:
        t = pp._check_number(target_fraction, "target_fraction", low=0.0, high=1.0, low_inclusive=False)
        if t >= 1.0:
            raise ValueError(f"target_fraction must be below 1. Received: target_fraction={target_fraction!r}")
        minority, majority = _binary_minority(y)
        pool = np.flatnonzero(y == minority)
        k = _extra_needed(pool.size, int(np.sum(y == majority)), t)
        if k:
            extras.append(_draw(pool, k))
    return np.sort(np.concatenate([base, *extras])).astype(np.int64)


def study04_transform(image: np.ndarray, *, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One random study 04 augmentation (NumPy/OpenCV): flip, rotate, brighten or darken.

    Horizontal flip with probability 0.5; rotation by an angle uniform in [-10, 10] degrees
    about the centre (bilinear, edge pixels replicated); brightness multiplied by
    ``1 + s * m`` with ``m`` uniform in [0.1, 0.4] and a random sign ``s``, clipped to [0, 1].

    Args:
        image: (H, W) float32 in [0, 1].
        rng: the NumPy generator drawing the parameters.

    Returns:
        ``(augmented (H, W) float32 in [0, 1], description)``, e.g.
        ``("...", "hflip_rot-3.2_bright+0.25")``.
    """
    img = pp._as_image(image)
    flip = bool(rng.random() < 0.5)
    angle = float(rng.uniform(-10.0, 10.0))
    change = float(rng.uniform(0.1, 0.4)) * (1.0 if rng.random() < 0.5 else -1.0)
    out = img[:, ::-1] if flip else img
    h, w = out.shape
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    out = cv2.warpAffine(np.ascontiguousarray(out), matrix, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    out = np.clip(out * (1.0 + change), 0.0, 1.0).astype(np.float32)
    desc = f"{'hflip_' if flip else ''}rot{angle:+.1f}_bright{change:+.2f}"
    return out, desc


def augment_to_fraction(images: Sequence[np.ndarray], labels: Sequence[int] | np.ndarray,
                        groups: Sequence[str], *, target_fraction: float, seed: int = 0,
                        transforms: Callable[..., tuple[np.ndarray, str]] | None = None
                        ) -> list[dict[str, Any]]:
    """Study 04 offline minority augmentation: add augmented minority copies up to a fraction.

    Keeps every original (``aug="orig"``) and appends the fewest augmented copies of the
    minority class that bring its fraction to ``target_fraction`` (0.37 in study 04). Sources
    are used in seeded round-robin order, so copies spread evenly over them. Apply to the
    TRAINING (and validation) split only, never to the test split.

    Args:
        images: training images, (H, W) float32 in [0, 1].
        labels: integer class indices, exactly two classes.
        groups: the patient/source id of every image; copies keep it as ``source_id``.
        target_fraction: desired minority fraction in (0, 1).
        seed: seed of the source order and the random transforms; same seed, same output.
        transforms: ``f(image, rng=Generator) -> (image, description)``; default
            :func:`study04_transform`.

    Returns:
        Records ``{"image", "source_id", "aug", "label"}``: the originals in input order,
        then the new copies (``aug`` = ``"aug<k>_<description>"``).
    """
    n = _check_parallel(images, {"labels": labels, "groups": groups})
    y = _as_labels(labels)
    t = pp._check_number(target_fraction, "target_fraction", low=0.0, high=1.0, low_inclusive=False)
    if t >= 1.0:
        raise ValueError(f"target_fraction must be below 1. Received: target_fraction={target_fraction!r}")
    transform = study04_transform if transforms is None else transforms
    if not callable(transform):
        raise TypeError(f"transforms must be callable. Received: transforms={transforms!r}")
    rng = np.random.default_rng(_check_seed(seed))
    sources = [pp._as_image(img, f"images[{k}]") for k, img in enumerate(images)]
    records = [dict(image=sources[k], source_id=str(groups[k]), aug="orig", label=int(y[k])) for k in range(n)]
    minority, majority = _binary_minority(y)
    pool = np.flatnonzero(y == minority)
    k_extra = _extra_needed(pool.size, int(np.sum(y == majority)), t)
    order = rng.permutation(pool)
    for j in range(k_extra):
        src = int(order[j % order.size])
        out, desc = transform(sources[src], rng=rng)
        records.append(dict(image=pp._as_image(out, "transforms output"), source_id=str(groups[src]),
                            aug=f"aug{j}_{desc}", label=int(y[src])))
    return records
