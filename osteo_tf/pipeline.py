"""tf.data pipelines: manifest -> decode -> deterministic preprocessing -> cache -> augment -> batch.

One function, :func:`make_dataset`, turns the rows of a split manifest into a batched
``tf.data.Dataset`` of ``(images, labels)`` ready for ``model.fit``:

1. decode every file inside a parallel ``map``: grey 8/16-bit PNGs with OpenCV
   (:func:`fast_decode`), everything else with :func:`osteo_tf.io.load_xray` (PNG/JPEG/TIFF/BMP
   at full bit depth, DICOM); Pillow and OpenCV release the GIL, so AUTOTUNE threads really run
   in parallel;
2. apply the deterministic preprocessing steps (``osteo_tf.preprocessing.STEPS`` by name) and
   the area resize (``preprocessing.resize``); expensive steps (BM3D, non-local means) are
   computed beforehand by :func:`osteo_tf.cache.cached_apply_steps` in a process pool with a
   content-addressed disk cache, so a rerun costs almost nothing;
3. ``cache()`` the decoded, preprocessed grey images at model size, compactly
   (:data:`CACHE_DTYPE`: float16, 2 bytes a pixel against the 12 of a float32 RGB copy), in
   memory (or in a file), so later epochs skip all of the above;
4. training split only: shuffle (seeded, reshuffled each epoch), batch, random augmentation
   (Keras preprocessing layers called with ``training=True``);
5. float32 grey batches (B, H, W, 1), then ``prefetch``.

The batches are what every registry model takes: one grey channel. Channel repetition and the
backbone's input scaling are layers of the model (``osteo_tf.models``), never steps here.
Deterministic intensity steps live here, so inference (:func:`load_for_inference`) sees exactly
what training saw (tested).
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: Preprocessing steps too slow to run inside the tf.data map: precomputed in parallel and cached.
EXPENSIVE_STEPS = frozenset({"bm3d_denoise", "nlmeans_denoise"})

LABEL_MODES = ("categorical", "binary", "int")

CACHE_DTYPES = ("float16", "uint16", "uint8", "float32")
"""Element types the cache can hold grey images in (:func:`make_dataset` ``cache_dtype``)."""
CACHE_DTYPE = "float16"
"""The default cache type. float16 keeps any step's output range (``standardize`` gives
z-scores) with a relative error <= 2**-11 (<= 2.4e-4 on [0, 1], a 16th of an 8-bit grey level);
the measurements behind the choice (error, throughput, accuracy) are in CHANGELOG.md, issue 17.
uint16/uint8 quantize [0, 1] images (values outside are clipped: only for steps that stay in
[0, 1])."""

INTENSITY_STEPS: dict[str, list[tuple[str, dict]]] = {"none": [], "standardize": [("standardize", {})]}
"""The studies' ``intensity`` setting -> deterministic steps: "none" (the papers' own scaling only)
or "standardize" (per-image z-score, ``preprocessing.standardize``), which the CPU profiles of
studies 02, 03 and 05 use for the small CNNs they train from scratch."""


def intensity_steps(intensity: str) -> list[tuple[str, dict]]:
    """The steps of one ``intensity`` setting (fresh copies, safe to extend).

    Raises:
        ValueError: an unknown setting, naming the known ones.
    """
    if intensity not in INTENSITY_STEPS:
        raise ValueError(f"intensity must be one of {sorted(INTENSITY_STEPS)}. Received: intensity={intensity!r}")
    return [(name, dict(params)) for name, params in INTENSITY_STEPS[intensity]]


def preprocess_image(image: np.ndarray, *, image_size: int | tuple[int, int], steps: Sequence = ()) -> np.ndarray:
    """Deterministic preprocessing of one decoded image: ``steps`` then the area resize.

    The very function every element of :func:`image_dataset` goes through (training,
    evaluation and inference), so arrays from here and batches from :func:`make_dataset` are
    identical up to the cache's rounding (:func:`cache_round_trip`).

    Args:
        image: (H, W) float32 in [0, 1].
        image_size: output size, an int (square) or (height, width).
        steps: preprocessing steps as names or ``(name, params)`` pairs.

    Returns:
        (h, w) float32 in [0, 1].
    """
    from osteo_tf import preprocessing

    steps = preprocessing.validate_steps(steps)
    if steps:
        image = preprocessing.apply_steps(image, steps)
    return preprocessing.resize(np.asarray(image, np.float32), _size(image_size), interpolation="area")


def _size(image_size) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return (int(image_size), int(image_size))
    h, w = image_size
    return (int(h), int(w))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def native_decodable(path: str) -> bool:
    """True for a grey 8/16-bit PNG without EXIF: OpenCV's decoder then gives ``load_xray``'s pixels.

    ``load_xray`` (Pillow) scales 8-bit by 1/255 and 16-bit by 1/65535; ``cv2.imdecode`` with
    ``IMREAD_UNCHANGED`` returns the same stored values (PNG is lossless, neither applies gamma),
    scaled the same way by :func:`fast_decode`. Anything else (colour, palette, an eXIf
    orientation chunk, transparency, JPEG, TIFF, DICOM...) goes through ``load_xray``. Reads only
    the chunk headers before the image data.
    """
    import struct

    try:
        with open(path, "rb") as fh:
            if fh.read(8) != _PNG_SIGNATURE:
                return False
            length, ctype = struct.unpack(">I4s", fh.read(8))
            if ctype != b"IHDR" or length != 13:
                return False
            ihdr = fh.read(13)
            bit_depth, colour_type = ihdr[8], ihdr[9]
            if colour_type != 0 or bit_depth not in (8, 16):
                return False
            fh.seek(4, 1)  # CRC
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    return False
                length, ctype = struct.unpack(">I4s", head)
                if ctype == b"IDAT":
                    return True
                if ctype in (b"eXIf", b"tRNS", b"sBIT"):
                    return False
                fh.seek(length + 4, 1)
    except (OSError, struct.error):  # unreadable or truncated header: let load_xray explain why
        return False


def fast_decode(path: str) -> np.ndarray | None:
    """A :func:`native_decodable` PNG decoded by OpenCV (which releases the GIL), as ``load_xray``
    would return it: (H, W) float32 in [0, 1]. ``None`` when OpenCV cannot decode the file
    (truncated, corrupt): the caller then asks ``load_xray`` for the reason."""
    import cv2

    raw = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 2 or raw.dtype not in (np.uint8, np.uint16):
        return None
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0  # load_xray's exact arithmetic for each depth
    return (raw.astype(np.float64) / 65535).astype(np.float32)


def decode_and_preprocess(path: str, *, image_size, steps: Sequence = ()) -> np.ndarray:
    """Load one file and preprocess it (what the tf.data map does to one path)."""
    from osteo_tf.io import load_xray

    return preprocess_image(load_xray(path), image_size=image_size, steps=steps)


def image_dataset(paths: Sequence[str], *, image_size, steps: Sequence = (), n_jobs: int | None = None):
    """``tf.data.Dataset`` of ``(image (h, w) float32, ok bool)``, one element per path, in order.

    Each element is made by one Python function inside a parallel ``map``: grey 8/16-bit PNGs
    (:func:`native_decodable`) are decoded by OpenCV (:func:`fast_decode`), other files by
    :func:`osteo_tf.io.load_xray`; then the cheap steps and the area resize
    (``preprocessing.resize``, OpenCV's ``INTER_AREA``), all of which release the GIL, so the
    map's threads run in parallel. Expensive steps (:data:`EXPENSIVE_STEPS`) are precomputed in a
    process pool with the disk cache. A file that fails gives a zero image with ``ok=False``
    (logged with its reason) instead of stopping the run.
    """
    import tensorflow as tf

    from osteo_tf import preprocessing
    from osteo_tf.io import ImageLoadError, load_xray

    steps = preprocessing.validate_steps(steps)
    size = _size(image_size)
    paths = [str(p) for p in paths]
    pre, tail = None, steps
    if any(name in EXPENSIVE_STEPS for name, _ in steps):
        from osteo_tf import cache as step_cache

        last = max(i for i, (n, _) in enumerate(steps) if n in EXPENSIVE_STEPS)
        head, tail = steps[: last + 1], steps[last + 1 :]
        pre = step_cache.cached_apply_steps(paths, head, n_jobs=n_jobs)  # None where a file failed
        fast = [False] * len(paths)
    else:
        fast = [native_decodable(p) for p in paths]

    def _np(i):
        i = int(i)
        try:
            if pre is not None:
                img = pre[i]
                if img is None:  # cached_apply_steps logged the reason
                    return np.zeros(size, np.float32), np.bool_(False)
            else:
                img = fast_decode(paths[i]) if fast[i] else None
                if img is None:
                    img = load_xray(paths[i])
            return preprocess_image(img, image_size=size, steps=tail), np.bool_(True)
        except ImageLoadError as exc:
            log.warning("skipping %s", exc)
            return np.zeros(size, np.float32), np.bool_(False)

    def _load(i):
        img, ok = tf.numpy_function(_np, [i], [tf.float32, tf.bool], stateful=False)
        img.set_shape(size)
        ok.set_shape([])
        return img, ok

    return tf.data.Dataset.range(len(paths)).map(_load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def encode_labels(labels: Sequence, class_names: Sequence[str], *, label_mode: str = "categorical") -> np.ndarray:
    """Class names -> model targets.

    Args:
        labels: one class name per image.
        class_names: the ordered classes; index = position.
        label_mode: "categorical" (one-hot, softmax heads), "binary" ((N, 1) float of class 1,
            single-sigmoid heads; needs exactly two classes), or "int".

    Raises:
        ValueError: on an unknown label or mode.
    """
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}. Received: label_mode={label_mode!r}")
    index = {c: i for i, c in enumerate(class_names)}
    unknown = sorted(set(map(str, labels)) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not in class_names={list(class_names)}")
    y = np.array([index[str(v)] for v in labels], dtype=np.int32)
    if label_mode == "int":
        return y
    if label_mode == "binary":
        if len(class_names) != 2:
            raise ValueError(f"label_mode='binary' needs 2 classes. Received: class_names={list(class_names)}")
        return y.astype(np.float32)[:, None]
    return np.eye(len(class_names), dtype=np.float32)[y]


def make_dataset(
    manifest: pd.DataFrame,
    *,
    class_names: Sequence[str],
    image_size: int | tuple[int, int] = 224,
    batch_size: int = 32,
    training: bool = False,
    steps: Sequence = (),
    augmenter: Callable | None = None,
    label_mode: str = "categorical",
    label_col: str = "label",
    seed: int = 0,
    cache: bool | str = True,
    cache_dtype: str = CACHE_DTYPE,
    drop_remainder: bool = False,
):
    """Build the batched tf.data pipeline for one split.

    Args:
        manifest: rows of ONE split, with ``path`` and ``label_col`` columns.
        class_names: ordered class names (index = class id); pass the same list to every split.
        image_size: output size (int = square).
        batch_size: images per batch.
        training: shuffle each epoch and apply ``augmenter``; False for val/test (no randomness).
        steps: deterministic preprocessing steps (names or (name, params) pairs from
            ``osteo_tf.preprocessing.STEPS``), applied before the cache.
        augmenter: a callable ``augmenter(x, training=True)`` on (B, H, W, 1) batches, e.g.
            :func:`osteo_tf.augment.training_augmenter`; only used when ``training`` is True.
        label_mode: see :func:`encode_labels`.
        label_col: the label column.
        seed: shuffle seed.
        cache: True = in memory, a path = a cache file, False = no cache. Training splits cache
            the decoded grey images one by one (shuffle and augmentation follow); validation
            and test splits cache whole batches (nothing random follows).
        cache_dtype: one of :data:`CACHE_DTYPES`, how the cache holds the grey images
            (default :data:`CACHE_DTYPE`); batches are float32 again after it.
        drop_remainder: drop the last partial batch.

    Returns:
        ``tf.data.Dataset`` of ``(x, y)`` batches, x (B, H, W, 1) float32: what every registry
        model takes (its graph repeats the channel and applies its own input scaling).

    Raises:
        ValueError: on a missing column, an empty manifest or bad options.
    """
    import tensorflow as tf

    for col in ("path", label_col):
        if col not in manifest.columns:
            raise ValueError(f"manifest has no column {col!r}. Columns: {list(manifest.columns)}")
    if len(manifest) == 0:
        raise ValueError("manifest is empty: this split has no images")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
    if cache_dtype not in CACHE_DTYPES:
        raise ValueError(f"cache_dtype must be one of {CACHE_DTYPES}. Received: cache_dtype={cache_dtype!r}")
    if augmenter is not None and not training:
        warnings.warn("augmenter is ignored because training=False (augment the training split only)", stacklevel=2)
    paths = manifest["path"].astype(str).tolist()
    y = encode_labels(manifest[label_col].astype(str).tolist(), class_names, label_mode=label_mode)
    images = image_dataset(paths, image_size=image_size, steps=steps)
    ds = tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices(y)))
    ds = ds.filter(_is_ok).map(_drop_ok)
    encode, decode = _codec(cache_dtype if cache else "float32")
    if not training:
        # validation / test: nothing random follows the decode, so whole batches are cached and
        # every later pass (validation runs each epoch) only reads them
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        ds = _cached(ds.map(encode, num_parallel_calls=tf.data.AUTOTUNE), cache)
        return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    ds = _cached(ds.map(encode, num_parallel_calls=tf.data.AUTOTUNE), cache)
    ds = ds.shuffle(min(len(paths), 4096), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    if augmenter is not None:
        ds = ds.map(lambda x, lab: (tf.clip_by_value(augmenter(x, training=True), 0.0, 1.0), lab),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _codec(dtype: str):
    """``(encode, decode)`` map functions: grey float32 -> the cache's ``dtype`` -> float32 (.., 1)."""
    import tensorflow as tf

    if dtype in ("uint8", "uint16"):
        top = 255.0 if dtype == "uint8" else 65535.0
        tf_dtype = tf.uint8 if dtype == "uint8" else tf.uint16

        def encode(x, lab):
            return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * top), tf_dtype), lab

        def decode(x, lab):
            return (tf.cast(x, tf.float32) * (1.0 / top))[..., tf.newaxis], lab
    else:
        tf_dtype = tf.float16 if dtype == "float16" else tf.float32

        def encode(x, lab):
            return tf.cast(x, tf_dtype), lab

        def decode(x, lab):
            return tf.cast(x, tf.float32)[..., tf.newaxis], lab
    return encode, decode


def cache_bytes(n_images: int, image_size, *, dtype: str = CACHE_DTYPE, channels: int = 1) -> int:
    """Bytes the pixel data of ``n_images`` cached images take (``dtype``, ``channels``)."""
    h, w = _size(image_size)
    per = {"float16": 2, "uint16": 2, "uint8": 1, "float32": 4}[dtype]
    return int(n_images) * h * w * int(channels) * per


def _cached(ds, cache: bool | str):
    """``ds`` cached in memory (True), in a file (a path) or not at all (False)."""
    if not cache:
        return ds
    return ds.cache() if cache is True else ds.cache(str(cache))


def _is_ok(image_ok, label):
    return image_ok[1]


def _drop_ok(image_ok, label):
    return image_ok[0], label


def cache_round_trip(x: np.ndarray, dtype: str = CACHE_DTYPE) -> np.ndarray:
    """Grey float32 images as they come out of a ``dtype`` cache (the NumPy twin of the cache's
    encode/decode): float16 rounding, or quantization to 8/16 bits (clipped to [0, 1]).

    Raises:
        ValueError: an unknown ``dtype``.
    """
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"dtype must be one of {CACHE_DTYPES}. Received: dtype={dtype!r}")
    x = np.asarray(x, np.float32)
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    if dtype in ("uint8", "uint16"):
        top = np.float32(255.0 if dtype == "uint8" else 65535.0)
        q = np.round(np.clip(x, 0.0, 1.0) * top).astype(np.uint8 if dtype == "uint8" else np.uint16)
        return q.astype(np.float32) * np.float32(1.0 / top)
    return x


def load_for_inference(paths: Sequence[str], *, image_size, steps: Sequence = (),
                       cache_dtype: str = CACHE_DTYPE) -> tuple[np.ndarray, np.ndarray]:
    """Exactly the evaluation-time pipeline for a list of files, as arrays (the images pass
    through ``cache_dtype`` as :func:`make_dataset`'s cache holds them, so predictions match).

    Returns:
        ``(x, ok)``: x (N, h, w, 1) float32 grey, what the registry's models take (ready for
        ``model.predict``), and the mask of files that loaded (rows of failed files are zeros).
    """
    size = _size(image_size)
    images, ok = [], []
    for img, good in image_dataset(paths, image_size=size, steps=steps):
        images.append(img.numpy())
        ok.append(bool(good.numpy()))
    x = np.stack(images) if images else np.zeros((0, *size), np.float32)
    ok = np.array(ok, bool)
    x[~ok] = 0.0
    return cache_round_trip(x, cache_dtype)[..., np.newaxis], ok


def labels_of(ds) -> np.ndarray:
    """Concatenate the labels of a (non-shuffled) dataset, in order."""
    return np.concatenate([np.asarray(lab) for _, lab in ds], axis=0)
