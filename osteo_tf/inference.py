"""Trained models as files a user can reuse: bundles, prediction, external evaluation, export.

A model bundle is a ``.keras`` file plus the sidecar ``<file>.keras.osteo_tf.json``
(:data:`SIDECAR_FORMAT`) with what inference needs and the ``.keras`` file does not: the class
names (output order), the decision threshold and how it was chosen, the input size, the
preprocessing steps (deterministic steps before the model, the resize, the cache's float16
rounding; the model's own in-graph input layers, listed for the reader), the Grad-CAM feature
layer and, for bundles a study run writes, the split hash, test metrics and library versions.

Every registry model takes one grey channel in [0, 1] and scales it inside its graph, so a
bundle needs no scaling code: models load with ``keras.models.load_model(path,
safe_mode=True)`` (Keras' own layers only, nothing unpickled) and :func:`load_model` never
loads any other way.

* :func:`predict` -- ``osteo_tf.predict(model_or_path, images) -> DataFrame`` for notebooks.
* :func:`predict_files` -- ``osteo-tf predict``: CSV with class-named columns, overlays.
* :func:`evaluate` -- ``osteo-tf evaluate``: external validation on any folder or manifest.
* :func:`export` -- ``osteo-tf export``: a SavedModel for serving.

This module sits at the application end of the data flow, beside the command line: it uses
``osteo_tf.explain`` (feature layer, batched predictor, maps), ``osteo_tf.evaluation`` and
``osteo_tf.plots``, and none of them imports it.
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

from osteo_tf.evaluation import jsonable
from osteo_tf.explain._common import output_kind

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".osteo_tf.json"
"""Appended to the ``.keras`` path: ``model.keras`` -> ``model.keras.osteo_tf.json``."""
SIDECAR_FORMAT = "osteo_tf.model/2"
"""The sidecar's ``format`` field (``/1`` sidecars, which named an out-of-graph scaling, still load)."""
EXPLAIN_KINDS = (None, "gradcam", "gradcam++", "lime")
"""What :func:`predict_files` can draw over each image (``None``: no overlay)."""
MAX_UPSAMPLING = 8
"""An image more than this many times smaller than the model input on a side is refused."""
RESIZE = "cv2.resize(interpolation=INTER_AREA), clipped to [0, 1] (osteo_tf.preprocessing.resize)"


class BadImage(ValueError):
    """An image a model cannot take; ``reason`` says why (one line)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = str(name), str(reason)
        super().__init__(f"{self.name}: {self.reason}")


def _steps_json(steps: Sequence) -> list:
    return [s if isinstance(s, str) else [s[0], dict(s[1] or {})] for s in steps]


def save_model(model: Any, path: str | os.PathLike, *, class_names: Sequence[str],
               image_size: int | tuple[int, int], steps: Sequence = (), threshold: float | None = None,
               threshold_rule: str | None = None, scale_name: str | None = None, info: dict | None = None) -> Path:
    """Save a classifier as a bundle: ``.keras`` plus the sidecar ``<path>.osteo_tf.json``.

    Args:
        model: the classifier (saved without optimizer state); registry models take grey
            (H, W, 1) and scale inside.
        path: destination ending in ``.keras``.
        class_names: one per output class (2 for a single sigmoid unit).
        image_size: int (square) or (height, width).
        steps: deterministic preprocessing steps (names or (name, params) pairs).
        threshold: binary decision threshold on the last class' probability (``None``: 0.5
            for two classes, argmax for more).
        threshold_rule: how it was chosen (e.g. "Youden's J on the validation split").
        scale_name: an input scaling applied OUTSIDE the model (``osteo_tf.models.SCALINGS``);
            ``None`` for every registry model, which scales inside its graph.
        info: more JSON-able fields for the sidecar (a study run adds experiment, split hash,
            test metrics, versions).

    Returns:
        The ``.keras`` path.

    Raises:
        ValueError: wrong suffix, class count not matching the output, unknown scaling, bad
            threshold, or ``info`` overwriting a sidecar field.
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
    if threshold is not None and (n != 2 or not 0.0 <= float(threshold) <= 1.0):
        raise ValueError("threshold must be None, or a number in [0, 1] for a two-class model. "
                         f"Received: threshold={threshold!r} for {n} classes")
    size = [int(image_size)] * 2 if isinstance(image_size, (int, np.integer)) else [int(v) for v in image_size]
    try:
        last_conv = last_conv_layer(model)
    except ValueError:
        last_conv = None
    from osteo_tf.pipeline import CACHE_DTYPE

    graph_steps = _graph_steps(model)
    meta = {
        "format": SIDECAR_FORMAT, "class_names": class_names,
        "threshold": None if threshold is None else float(threshold),
        "threshold_rule": threshold_rule or ("argmax" if n > 2 else "fixed 0.5" if threshold is None else "given"),
        "image_size": size, "input_shape": [None if v is None else int(v) for v in model.inputs[0].shape[1:]],
        "steps": _steps_json(steps), "resize": RESIZE, "cache_dtype": CACHE_DTYPE,
        "scale_name": scale_name, "channels": int(model.inputs[0].shape[-1]), "output": kind,
        "in_graph_steps": graph_steps, "last_conv": last_conv,
        "preprocessing": ["osteo_tf.io.load_xray: grey float32 in [0, 1]",
                          *[f"step {s if isinstance(s, str) else s[0]}" for s in steps],
                          f"resize to {size[0]}x{size[1]}: {RESIZE}",
                          f"rounded to {CACHE_DTYPE} (as the training cache held the images)",
                          *[f"in the model: {g}" for g in graph_steps]],
    }
    if info:
        clash = sorted(set(info) & set(meta))
        if clash:
            raise ValueError(f"info may not overwrite sidecar fields. Received: info keys {clash}")
        meta.update(info)
    path.parent.mkdir(parents=True, exist_ok=True)
    _without_optimizer(model).save(path)
    Path(str(path) + SIDECAR_SUFFIX).write_text(json.dumps(jsonable(meta), indent=2) + "\n")
    return path


def _without_optimizer(model: Any) -> Any:
    """``model``, or for a compiled one an uncompiled copy with the same weights: a bundle is for
    inference, and the optimizer's slots would double or triple the file (Adam: 3x)."""
    if getattr(model, "optimizer", None) is None:
        return model
    import keras

    clone = keras.Model.from_config(model.get_config())  # clone_model would compile the copy too
    clone.set_weights(model.get_weights())
    return clone


def _graph_steps(model: Any) -> list[str]:
    """The model's in-graph input layers (registry models: ``grey_to_rgb``, ``input_scaling``)."""
    out = []
    for layer in model.layers[1:4]:
        if layer.name == "grey_to_rgb":
            out.append("grey_to_rgb: the grey channel repeated to 3 channels")
        elif layer.name == "input_scaling":
            cfg = layer.get_config()
            out.append(f"input_scaling: x * {cfg.get('scale')} + {cfg.get('offset')}")
    return out


def load_model(path: str | os.PathLike) -> tuple[Any, dict]:
    """Load a ``.keras`` model safely (``safe_mode=True``, ``compile=False``) and its metadata.

    Returns:
        ``(model, meta)``: meta from the sidecar (``meta["sidecar"]`` True), or derived from the
        model when there is none, with a warning: classes ``class_0``..``class_{C-1}``, threshold
        unknown (argmax decides), input size from the model, no preprocessing steps.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a loadable ``.keras`` file; no sidecar and no fixed input size.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found. Received: model_path={str(path)!r}")
    try:
        model = keras.models.load_model(path, safe_mode=True, compile=False)
    except (ValueError, OSError, TypeError, KeyError) as exc:
        raise ValueError(f"cannot load {str(path)!r} as a Keras model with safe_mode=True "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    kind, n = output_kind(model)
    side = Path(str(path) + SIDECAR_SUFFIX)
    if side.is_file():
        meta = json.loads(side.read_text())
        meta["sidecar"] = True
        meta.setdefault("threshold", None)
        meta.setdefault("threshold_rule", "unknown (sidecar format osteo_tf.model/1)")
        meta.setdefault("cache_dtype", None)
    else:
        h, w = model.inputs[0].shape[1:3]
        if h is None or w is None:
            raise ValueError(f"model_path must have a {SIDECAR_SUFFIX} sidecar or a fixed input size. "
                             f"Received: model_path={str(path)!r} with input shape {model.inputs[0].shape}")
        meta = {"class_names": [f"class_{i}" for i in range(n)], "image_size": [int(h), int(w)], "steps": [],
                "scale_name": None, "channels": int(model.inputs[0].shape[-1]), "output": kind,
                "threshold": None, "threshold_rule": "unknown (no sidecar): argmax", "cache_dtype": None,
                "last_conv": None, "sidecar": False}
        warnings.warn(
            f"{path.name} has no {SIDECAR_SUFFIX} sidecar: class names and decision threshold are unknown "
            "(classes are numbered, argmax decides), and images are fed in [0, 1] without preprocessing "
            "steps. Save models with osteo_tf.inference.save_model to keep them.", stacklevel=2)
    meta["steps"] = [s if isinstance(s, str) else (s[0], s[1]) for s in meta.get("steps", [])]
    return model, meta


def input_scaling(meta: dict) -> Callable | None:
    """An out-of-graph input scaling named by old sidecars (``meta["scale_name"]``); ``None``
    (identity) for every bundle of a registry model, which scales inside its graph."""
    from osteo_tf.models import scale_images

    name = meta.get("scale_name")
    return (lambda x: scale_images(x, name)) if name else None


def decide(probs: np.ndarray, meta: dict) -> np.ndarray:
    """Class indices from (N, C) probabilities by the bundle's rule: two classes -> the last
    class when its probability >= ``meta["threshold"]`` (0.5 when unknown); more -> argmax."""
    probs = np.asarray(probs)
    t = meta.get("threshold")
    if probs.shape[1] == 2:
        return (probs[:, 1] >= (0.5 if t is None else float(t))).astype(int)
    return probs.argmax(axis=1)


def _check_size(name: str, shape: tuple[int, ...], size: Sequence[int]) -> None:
    h, w = shape[:2]
    if h * MAX_UPSAMPLING < size[0] or w * MAX_UPSAMPLING < size[1]:
        raise BadImage(name, f"image is {h}x{w} px, more than {MAX_UPSAMPLING}x smaller than the model input "
                             f"{size[0]}x{size[1]} (wrong size)")


def _array_image(name: str, arr: Any) -> np.ndarray:
    """One in-memory image -> (H, W) float32 in [0, 1], or :class:`BadImage` with the reason."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise BadImage(name, f"array of shape {a.shape}: expected one grey image (H, W) or (H, W, 1) "
                             "(wrong depth: colour or stacked images must be converted explicitly)")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise BadImage(name, f"array of dtype {a.dtype}: expected grey levels (wrong kind)")
    if np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.signedinteger) and a.min(initial=0) < 0:
            raise BadImage(name, f"array of dtype {a.dtype} has negative values (wrong kind)")
        top = 255.0 if a.max(initial=0) <= 255 and a.dtype.itemsize == 1 else float(np.iinfo(a.dtype).max)
        return (a.astype(np.float64) / top).astype(np.float32)
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)) or a.min() < 0.0 or a.max() > 1.0:
        raise BadImage(name, "float array must be finite and in [0, 1] (wrong kind: scale it first)")
    return a


def read_images(images: Sequence[Any], meta: dict) -> tuple[np.ndarray | None, list[str],
                                                            list[tuple[str, str]]]:
    """Image files or arrays -> what the model takes: the sidecar's steps, its size, its cache rounding.

    Args:
        images: image files (anything ``osteo_tf.io.load_xray`` reads) or grey arrays
            ((H, W) / (H, W, 1); floats in [0, 1], or 8/16-bit integers).
        meta: the model's metadata (:func:`load_model`).

    Returns:
        ``(grey, names, skipped)``: (N, h, w) float32 of the usable images (``None`` when none
        is), their names (the path, or ``array[i]``), and ``(name, reason)`` of each refused one.
    """
    from osteo_tf.io import ImageLoadError, load_xray
    from osteo_tf.pipeline import cache_round_trip, preprocess_image

    size = tuple(meta["image_size"])
    good, grey, skipped = [], [], []
    for i, item in enumerate(images):
        is_path = isinstance(item, (str, os.PathLike))
        name = str(item) if is_path else f"array[{i}]"
        try:
            img = load_xray(item) if is_path else _array_image(name, item)
            _check_size(name, img.shape, size)
            out = preprocess_image(img, image_size=size, steps=meta["steps"])
            if meta.get("cache_dtype"):
                out = cache_round_trip(out, meta["cache_dtype"])
            grey.append(out)
            good.append(name)
        except ImageLoadError as exc:
            skipped.append((name, exc.reason))
            log.warning("skipping %s", exc)
        except BadImage as exc:
            skipped.append((name, exc.reason))
            log.warning("skipping %s", exc)
    return (np.stack(grey) if grey else None), good, skipped


def _resolve(model_or_path: Any, meta: dict | None) -> tuple[Any, dict]:
    if isinstance(model_or_path, (str, os.PathLike)):
        return load_model(model_or_path)
    model = model_or_path
    if meta is None:
        _, n = output_kind(model)
        h, w = model.inputs[0].shape[1:3]
        if h is None or w is None:
            raise ValueError("an in-memory model without a fixed input size needs meta={'image_size': ...}")
        meta = {"class_names": [f"class_{i}" for i in range(n)], "image_size": [int(h), int(w)], "steps": [],
                "threshold": None, "threshold_rule": "unknown: argmax", "cache_dtype": None}
        warnings.warn("predict got a model without its bundle metadata: class names and decision threshold "
                      "are unknown (classes are numbered, argmax decides).", stacklevel=3)
    return model, {"steps": [], "cache_dtype": None, "threshold": None, **meta}


def predict(model_or_path: Any, images: Sequence[Any] | np.ndarray, *, meta: dict | None = None,
            batch_size: int = 32, skipped: list | None = None) -> pd.DataFrame:
    """Class probabilities and decisions of a model for images, in memory (``osteo_tf.predict``).

    Args:
        model_or_path: a bundle's ``.keras`` path (sidecar used when present) or a Keras model
            (then ``meta`` gives class names, size, steps and threshold; without it classes are
            numbered and argmax decides, with a warning).
        images: image files, grey arrays ((H, W) or (H, W, 1)), or one (N, H, W) stack.
        meta: metadata for an in-memory model (the keys of a sidecar).
        batch_size: images per forward pass.
        skipped: a list that receives ``(name, reason)`` of each refused image (otherwise they
            are only logged).

    Returns:
        One row per usable image: ``image`` (path or ``array[i]``), ``prob_<class>`` per
        class, ``predicted`` (class name by the bundle's rule: threshold for two classes,
        argmax for more) and ``threshold``.
    """
    from osteo_tf.explain import ModelPredictor

    model, meta = _resolve(model_or_path, meta)
    classes = list(meta["class_names"])
    if isinstance(images, np.ndarray) and images.ndim >= 3 and not (images.ndim == 3 and images.shape[-1] == 1):
        images = list(images)
    elif isinstance(images, (str, os.PathLike, np.ndarray)):
        images = [images]
    stack, names, bad = read_images(list(images), meta)
    if skipped is not None:
        skipped.extend(bad)
    columns = ["image", *[f"prob_{c}" for c in classes], "predicted", "threshold"]
    if stack is None:
        return pd.DataFrame(columns=columns)
    probs = ModelPredictor(model, scale=input_scaling(meta), batch_size=batch_size)(stack[..., None])
    df = pd.DataFrame({"image": names})
    for i, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, i]
    df["predicted"] = [classes[i] for i in decide(probs, meta)]
    df["threshold"] = meta.get("threshold") if len(classes) == 2 else None
    return df[columns]


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
        class, ``predicted`` by the bundle's threshold, and ``overlay`` when explaining), also
        written to ``out_dir/predictions.csv``; ``(path, reason)`` of every refused image.

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
    stack, good, skipped = read_images([str(p) for p in images], meta)
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
    df["predicted"] = [classes[i] for i in decide(probs, meta)]
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


# ----------------------------------------------------------------------------------------------
# external validation


def evaluate(model_path: str | os.PathLike, data: str | os.PathLike, *, out_dir: str | os.PathLike | None = None,
             n_boot: int = 1000, seed: int = 0, batch_size: int = 32) -> dict:
    """External validation of a bundle on a dataset (``osteo-tf evaluate``).

    The dataset is read by ``osteo_tf.datasets.find_dataset`` (class folders, split folders or a
    manifest CSV; unreadable files quarantined with their reason). Every readable image is a
    test image; the images are fed as the bundle says (steps, size, cache rounding) and decided
    by the bundle's frozen threshold. The record holds the same metrics as the study reports
    (``evaluation.result_record``: Acc/Sn/Sp/PPV/NPV/F1/AUC/PR-AUC at the threshold and at 0.5,
    patient-level bootstrap 95% CIs over the manifest's groups, Brier, ECE) plus the
    reliability curve.

    Args:
        model_path: the bundle's ``.keras`` file.
        data: a dataset folder or manifest CSV.
        out_dir: when given, ``predictions.csv`` (one row per image) and ``evaluation.json`` go there.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.
        batch_size: images per forward pass.

    Returns:
        ``{"model", "data", "record", "reliability", "skipped", "labels_unknown"}``; ``skipped``
        lists ``{"path", "reason"}`` of images refused by the loader or the bundle.

    Raises:
        ValueError: the dataset's classes do not match the bundle's class names, or no image
            could be used.
    """
    from osteo_tf import datasets, evaluation

    model, meta = load_model(model_path)
    classes = list(meta["class_names"])
    ds = datasets.find_dataset(Path(data))
    manifest = ds.manifest
    unknown = sorted(set(manifest["label"].astype(str)) - set(classes))
    if unknown:
        raise ValueError(f"{data}: labels {unknown} are not among the model's classes {classes}"
                         + ("" if meta.get("sidecar") else " (the model has no sidecar: its classes are numbered)"))
    skipped = [{"path": str(r.path), "reason": str(r.reason)} for r in ds.quarantine.itertuples()]
    bad: list[tuple[str, str]] = []
    table = predict(model, manifest["path"].astype(str).tolist(), meta=meta,
                    batch_size=batch_size, skipped=bad)
    skipped += [{"path": p, "reason": r} for p, r in bad]
    if table.empty:
        raise ValueError(f"{data}: no image could be used ({len(skipped)} refused)")
    used = manifest.set_index(manifest["path"].astype(str)).loc[table["image"]]
    y = np.array([classes.index(str(v)) for v in used["label"]], int)
    probs = table[[f"prob_{c}" for c in classes]].to_numpy(np.float64)
    threshold = meta.get("threshold")
    record = evaluation.result_record(
        experiment="external", model=Path(model_path).stem, protocol="clean", y_true=y, y_prob=probs,
        groups=used["group"].astype(str).to_numpy(), class_names=classes, n_boot=n_boot, seed=seed,
        threshold=0.5 if threshold is None else float(threshold),
        threshold_rule=meta.get("threshold_rule") if threshold is not None else None,
        extra={"data": str(data), "n_skipped": len(skipped)})
    curve = evaluation.reliability_curve(y, probs)
    result = {"model": str(model_path), "data": str(data), "record": record,
              "reliability": jsonable(curve.to_dict(orient="records")),
              "skipped": skipped, "sidecar": bool(meta.get("sidecar"))}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        pred = table.rename(columns={"image": "path"})
        pred.insert(1, "label", used["label"].astype(str).to_numpy())
        pred.insert(2, "group", used["group"].astype(str).to_numpy())
        pred.to_csv(out / "predictions.csv", index=False, lineterminator="\n")
        (out / "evaluation.json").write_text(json.dumps(jsonable(result), indent=2) + "\n")
    return result


def format_evaluation(result: dict) -> str:
    """A few lines for the terminal: metrics with 95% CIs at the bundle's threshold and at 0.5."""
    from osteo_tf import evaluation

    r = result["record"]
    ci = r.get("ci95") or {}
    lines = [f"{result['model']} on {result['data']}: {r['n_test_images']} images, {r['n_test_groups']} groups"
             f" (decision: {r.get('threshold_rule')}"
             + (f", threshold {r['threshold']:.3f})" if r.get("threshold") is not None else ")")]
    for k in ("accuracy", "sensitivity", "specificity", "f1", "auc", "balanced_accuracy"):
        if k in r:
            lines.append(f"  {k:<18} {evaluation.format_estimate(r.get(k), ci.get(k))}")
    at = r.get("at_0.5")
    if isinstance(at, dict) and r.get("threshold") != 0.5:
        lines.append("  at 0.5: " + ", ".join(f"{k} {evaluation.format_estimate(at.get(k))}"
                                             for k in ("accuracy", "sensitivity", "specificity")))
    lines.append(f"  brier {evaluation.format_estimate(r.get('brier'))}  ece {evaluation.format_estimate(r.get('ece'))}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# export


def export(model_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write a bundle as a TensorFlow SavedModel for serving (``model.export``).

    The SavedModel's ``serve`` signature takes grey (N, H, W, 1) float32 in [0, 1] (the model
    scales inside) and returns the class probabilities; the sidecar is copied beside it as
    ``osteo_tf.json`` (class names, threshold, preprocessing).

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty.
    """
    model, meta = load_model(model_path)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"out_dir must be a new or empty folder. Received: out_dir={str(out)!r}")
    model.export(str(out), format="tf_saved_model", verbose=False)
    (out / "osteo_tf.json").write_text(json.dumps(jsonable(meta), indent=2) + "\n")
    return out
