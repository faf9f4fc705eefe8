"""Trained models as files: save with a sidecar, load safely, predict image files.

A saved model is a ``.keras`` file plus the sidecar ``<file>.keras.osteo_tf.json``
(:data:`SIDECAR_FORMAT`) with what inference needs and the ``.keras`` file does not: the class
names (output order), the input size, the deterministic preprocessing steps, the input scaling,
the channel count and the Grad-CAM feature layer.

:func:`predict_files` is ``osteo-tf predict``: class probabilities of image files, and with
``explain`` one overlay PNG per image. This module sits at the application end of the data flow,
beside the command line: it uses ``osteo_tf.explain`` (feature layer, batched predictor, maps)
and ``osteo_tf.plots`` (overlay PNGs), and neither of them imports it.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from osteo_tf.explain._common import output_kind

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".osteo_tf.json"
"""Appended to the ``.keras`` path: ``model.keras`` -> ``model.keras.osteo_tf.json``."""
SIDECAR_FORMAT = "osteo_tf.model/1"
"""The sidecar's ``format`` field."""
EXPLAIN_KINDS = (None, "gradcam", "gradcam++", "lime")
"""What :func:`predict_files` can draw over each image (``None``: no overlay)."""


def save_model(model: Any, path: str | os.PathLike, *, class_names: Sequence[str],
               image_size: int | tuple[int, int], steps: Sequence = (), scale_name: str | None = None) -> Path:
    """Save a classifier as ``.keras`` plus the sidecar ``<path>.osteo_tf.json``.

    The sidecar holds the class names (output order), the input size, the deterministic
    preprocessing steps, the input scaling (a name from ``osteo_tf.models.SCALINGS``, e.g.
    ``"tf"``; ``None`` = images in [0, 1]), the channel count, the output kind and the Grad-CAM
    feature layer (``osteo_tf.explain.last_conv_layer``; ``None`` without a 4-D layer).

    Args:
        model: the classifier.
        path: destination ending in ``.keras``.
        class_names: one per output class (2 for a single sigmoid unit).
        image_size: int (square) or (height, width).
        steps: preprocessing steps (names or (name, params) pairs).
        scale_name: input scaling name.

    Returns:
        The ``.keras`` path.

    Raises:
        ValueError: wrong suffix, class count not matching the output, unknown scaling.
    """
    from osteo_tf.explain import last_conv_layer
    from osteo_tf.models import SCALINGS

    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"path must end with .keras. Received: path={str(path)!r}")
    kind, n = output_kind(model)
    class_names = [str(c) for c in class_names]
    if len(class_names) != n or len(set(class_names)) != n:
        raise ValueError(f"class_names must be {n} distinct names for this model's {kind} output. "
                         f"Received: class_names={class_names!r}")
    if scale_name is not None and scale_name not in SCALINGS:
        raise ValueError(f"scale_name must be None or one of {SCALINGS}. Received: scale_name={scale_name!r}")
    size = [int(image_size)] * 2 if isinstance(image_size, (int, np.integer)) else [int(v) for v in image_size]
    try:
        last_conv = last_conv_layer(model)
    except ValueError:
        last_conv = None
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    meta = {
        "format": SIDECAR_FORMAT, "class_names": class_names, "image_size": size,
        "steps": [s if isinstance(s, str) else [s[0], dict(s[1] or {})] for s in steps],
        "scale_name": scale_name, "channels": int(model.inputs[0].shape[-1]), "output": kind,
        "last_conv": last_conv,
    }
    Path(str(path) + SIDECAR_SUFFIX).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_model(path: str | os.PathLike) -> tuple[Any, dict]:
    """Load a ``.keras`` model safely (``safe_mode=True``, ``compile=False``) and its metadata.

    Returns:
        ``(model, meta)``: meta from the sidecar, or derived from the model when there is none
        (classes ``class_0``..``class_{C-1}``, input size from the model, no steps, no scaling;
        ``meta["sidecar"]`` False).

    Raises:
        FileNotFoundError: no such file.
        ValueError: no sidecar and no fixed input size in the model.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found. Received: model_path={str(path)!r}")
    model = keras.models.load_model(path, safe_mode=True, compile=False)
    kind, n = output_kind(model)
    side = Path(str(path) + SIDECAR_SUFFIX)
    if side.is_file():
        meta = json.loads(side.read_text())
        meta["sidecar"] = True
    else:
        h, w = model.inputs[0].shape[1:3]
        if h is None or w is None:
            raise ValueError(f"model_path must have a {SIDECAR_SUFFIX} sidecar or a fixed input size. "
                             f"Received: model_path={str(path)!r} with input shape {model.inputs[0].shape}")
        meta = {"class_names": [f"class_{i}" for i in range(n)], "image_size": [int(h), int(w)], "steps": [],
                "scale_name": None, "channels": int(model.inputs[0].shape[-1]), "output": kind,
                "last_conv": None, "sidecar": False}
        warnings.warn(
            f"{path.name} has no {SIDECAR_SUFFIX} sidecar: classes are numbered, and images are fed in "
            "[0, 1] without the model's input scaling or preprocessing steps. Save models with "
            "osteo_tf.inference.save_model to keep them.", stacklevel=2)
    meta["steps"] = [s if isinstance(s, str) else (s[0], s[1]) for s in meta.get("steps", [])]
    return model, meta


def input_scaling(meta: dict) -> Callable | None:
    """The model's input scaling from its metadata (``meta["scale_name"]``); ``None`` = identity."""
    from osteo_tf.models import scale_images

    name = meta.get("scale_name")
    return (lambda x: scale_images(x, name)) if name else None


def read_images(images: Sequence[str | os.PathLike], meta: dict) -> tuple[np.ndarray | None, list[str],
                                                                          list[tuple[str, str]]]:
    """Image files -> what the model sees before its scaling: the sidecar's steps, then its size.

    Args:
        images: image files (anything ``osteo_tf.io.load_xray`` reads).
        meta: the model's metadata (:func:`load_model`).

    Returns:
        ``(grey, paths, skipped)``: (N, h, w) float32 in [0, 1] of the readable files (``None``
        when none is), their paths, and ``(path, reason)`` of each unreadable file.
    """
    from osteo_tf.io import ImageLoadError, load_xray
    from osteo_tf.pipeline import preprocess_image

    size = tuple(meta["image_size"])
    good, grey, skipped = [], [], []
    for p in map(str, images):
        try:
            grey.append(preprocess_image(load_xray(p), image_size=size, steps=meta["steps"]))
            good.append(p)
        except ImageLoadError as exc:
            skipped.append((p, exc.reason))
            log.warning("skipping %s", exc)
    return (np.stack(grey) if grey else None), good, skipped


def predict_files(
    model_path: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    *,
    explain: str | None = None,
    out_dir: str | os.PathLike,
    batch_size: int = 32,
    lime_samples: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Predict (and optionally explain) image files with a saved model (``osteo-tf predict``).

    Args:
        model_path: a ``.keras`` file (sidecar used when present, see :func:`load_model`).
        images: image files (anything ``osteo_tf.io.load_xray`` reads).
        explain: one of :data:`EXPLAIN_KINDS`: ``None``, or ``"gradcam"``, ``"gradcam++"`` or
            ``"lime"`` for one overlay PNG per image, ``<stem>_<explain>.png``, drawn on the
            preprocessed model-size image.
        out_dir: where ``predictions.csv`` and the overlays go (created).
        batch_size: images per forward pass.
        lime_samples: LIME samples per image.
        seed: LIME seed.

    Returns:
        ``(predictions, skipped)``: one row per readable image (``path``, ``prob_<class>`` per
        class, ``predicted``, and ``overlay`` when explaining), also written to
        ``out_dir/predictions.csv``; ``(path, reason)`` of every unreadable image (skipped).

    Raises:
        ValueError: bad ``explain``.
        FileNotFoundError: no model file.
    """
    from osteo_tf.explain import ModelPredictor

    if explain not in EXPLAIN_KINDS:
        raise ValueError(f"explain must be one of {EXPLAIN_KINDS}. Received: explain={explain!r}")
    model, meta = load_model(model_path)
    classes = list(meta["class_names"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stack, good, skipped = read_images(images, meta)
    columns = ["path", *[f"prob_{c}" for c in classes], "predicted"] + (["overlay"] if explain else [])
    if stack is None:
        df = pd.DataFrame(columns=columns)
        df.to_csv(out / "predictions.csv", index=False, lineterminator="\n")
        return df, skipped
    predictor = ModelPredictor(model, scale=input_scaling(meta), batch_size=batch_size)
    probs = predictor(stack[..., None])
    df = pd.DataFrame({"path": good})
    for i, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, i]
    df["predicted"] = [classes[i] for i in probs.argmax(axis=1)]
    if explain:
        names = _overlay_names(good, explain)
        _write_overlays(predictor, meta, stack, [out / n for n in names], kind=explain, batch_size=batch_size,
                        lime_samples=lime_samples, seed=seed)
        df["overlay"] = names
    df = df[columns]
    df.to_csv(out / "predictions.csv", index=False, lineterminator="\n")
    return df, skipped


def _overlay_names(paths: Sequence[str], kind: str) -> list[str]:
    """``<stem>_<kind>.png`` per image, ``<stem>_<k>_<kind>.png`` for repeated stems."""
    names: list[str] = []
    taken: set[str] = set()
    for p in paths:
        stem, k, name = Path(p).stem, 1, f"{Path(p).stem}_{kind}.png"
        while name in taken:
            name, k = f"{stem}_{k}_{kind}.png", k + 1
        taken.add(name)
        names.append(name)
    return names


def _write_overlays(predictor: Any, meta: dict, stack: np.ndarray, targets: Sequence[Path], *, kind: str,
                    batch_size: int, lime_samples: int, seed: int) -> None:
    """One overlay PNG per grey model-size image: Grad-CAM(++) maps or the LIME mask."""
    from osteo_tf import plots
    from osteo_tf.explain import CamExplainer, lime_explain

    if kind in ("gradcam", "gradcam++"):
        x = np.repeat(stack[..., None], predictor.channels, axis=-1)
        scale = input_scaling(meta)
        x = np.asarray(scale(x) if scale else x, dtype=np.float32)
        cam = CamExplainer(predictor.model, penultimate_layer=meta.get("last_conv") or None)
        for i in range(0, len(x), batch_size):
            maps = cam.explain(x[i:i + batch_size], method=kind).maps
            for j, m in enumerate(maps):
                plots.save_overlay_png(stack[i + j], m, targets[i + j])
    else:
        for img, target in zip(stack, targets):
            res = lime_explain(predictor, img, num_samples=lime_samples, batch_size=256, seed=seed)
            plots.save_overlay_png(img, res.mask, target, segments=res.segments)
