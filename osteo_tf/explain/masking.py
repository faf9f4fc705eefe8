"""LIME-masked datasets (study 05) and the out-of-fold assignment of their mask models.

A LIME-masked dataset multiplies every image by the LIME mask of a classifier. The mask must come
from a model that never saw the image, or the masked dataset carries what that model memorised.
:func:`mask_assignment` is the one rule that decides which model masks which image (study 05
and the leakage audit both use it):

* a test image is masked by the model trained on the split's training side (train + val);
* a training-side image is masked by the model of the fold that held it out
  (:func:`pool_folds`: patient-grouped folds over the training side).

:func:`lime_masked_dataset` then writes the masked images, refusing (``trained_on``) any mask
from a model trained on the image's own patient.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from osteo_tf._progress import progress
from osteo_tf.explain.lime import DEFAULT_SEGMENTATION, ModelPredictor, lime_explain

log = logging.getLogger(__name__)

SPLIT_MODEL = "train-split model"
"""Default id of the model trained on the split's training side (it masks the test images)."""
FOLD_MODEL = "fold{k}"
"""Default id pattern of the model trained without fold ``k`` (it masks fold ``k``)."""
_TRAINING_SIDE = ("train", "val")


# ---------------------------------------------------------------------------------------------
# which model masks which image


def pool_folds(split: pd.DataFrame, k: int, *, seed: int = 0) -> list[pd.DataFrame]:
    """``k`` patient-grouped, class-stratified folds over the training side of a split.

    Args:
        split: manifest with ``path``, ``label``, ``group`` and ``split`` (train / val / test).
        k: number of folds (>= 2).
        seed: seeds the fold assignment.

    Returns:
        ``k`` copies of the train + val rows (the test rows are left out, ``split`` dropped, index
        reset), each with a new ``split``: ``"test"`` for the rows held out of that fold,
        ``"train"`` for the others (``osteo_tf.splits.grouped_kfold``).

    Raises:
        ValueError: ``split`` lacks a ``split`` column, or ``k`` does not suit the groups.
    """
    from osteo_tf import splits

    if "split" not in split.columns:
        raise ValueError(f"split must have a 'split' column. Received: columns={list(split.columns)}")
    pool = split[split["split"].isin(_TRAINING_SIDE)].drop(columns="split").reset_index(drop=True)
    return splits.grouped_kfold(pool, k=k, seed=seed)


@dataclass(frozen=True)
class MaskAssignment:
    """Which model masks each image, and which patient groups each model was trained on.

    Attributes:
        model_of: image path -> mask-model id.
        trained_on: mask-model id -> the groups it was trained (or validated) on: the leakage
            guard of :func:`lime_masked_dataset`. A model absent from it is not guarded (an
            in-sample mask model, see :func:`mask_assignment`).
    """

    model_of: dict[str, str]
    trained_on: dict[str, set[str]]

    def model_for(self, models: Mapping[str, Any]) -> Callable[[pd.Series], tuple[str, Any]]:
        """``model_for`` of :func:`lime_masked_dataset`: ``row -> (model id, models[model id])``.

        Args:
            models: mask-model id -> the trained model (or a ``classifier_fn``).
        """

        def lookup(row: pd.Series) -> tuple[str, Any]:
            model_id = self.model_of[str(row["path"])]
            return model_id, models[model_id]

        return lookup


def mask_assignment(
    split: pd.DataFrame,
    folds: Sequence[pd.DataFrame] = (),
    *,
    split_model: str = SPLIT_MODEL,
    fold_model: str = FOLD_MODEL,
    in_sample_model: str | None = None,
) -> MaskAssignment:
    """Assign every image of a split the model that masks it, out of fold.

    * test rows -> ``split_model``, the model trained on the split's train + val rows (guarded
      by their groups: it never saw a test patient);
    * train / val rows held out of fold ``k`` of ``folds`` (:func:`pool_folds`) ->
      ``fold_model.format(k=k)``, the model trained on that fold's ``"train"`` rows (guarded by
      their groups);
    * train / val rows that no fold holds out (e.g. ``folds=()``) -> ``in_sample_model``: the
      split model used on its own training images. That mask is NOT out of fold and is left out
      of ``trained_on``; without ``in_sample_model`` such rows are an error.

    Args:
        split: manifest with ``path``, ``group`` and ``split`` (train / val / test).
        folds: folds over the split's training side, each with ``split`` train / test.
        split_model: id of the model trained on the training side.
        fold_model: id pattern of the fold models (``{k}`` = fold index).
        in_sample_model: id for the training-side rows no fold holds out, or ``None``.

    Returns:
        A :class:`MaskAssignment`.

    Raises:
        ValueError: a missing column, or training-side rows without a fold and no
            ``in_sample_model``.
    """
    for name, df in [("split", split), *((f"folds[{k}]", f) for k, f in enumerate(folds))]:
        missing = [c for c in ("path", "group", "split") if c not in df.columns]
        if missing:
            raise ValueError(f"{name} must have the columns path, group and split. Received: missing={missing}")
    model_of: dict[str, str] = {}
    trained_on: dict[str, set[str]] = {}
    for k, fold in enumerate(folds):
        key = fold_model.format(k=k)
        for p in fold.loc[fold["split"] == "test", "path"].astype(str):
            model_of[p] = key
        trained_on[key] = set(fold.loc[fold["split"] == "train", "group"].astype(str))
    training_side = split["split"].isin(_TRAINING_SIDE)
    unfolded = [p for p in split.loc[training_side, "path"].astype(str) if p not in model_of]
    if unfolded and in_sample_model is None:
        raise ValueError(
            f"every train / val image needs a fold that holds it out, or an in_sample_model. "
            f"Received: {len(unfolded)} image(s) in no fold (first: {unfolded[0]!r}), in_sample_model=None")
    for p in unfolded:
        model_of[p] = str(in_sample_model)
    for p in split.loc[split["split"] == "test", "path"].astype(str):
        model_of[p] = split_model
    trained_on[split_model] = set(split.loc[training_side, "group"].astype(str))
    return MaskAssignment(model_of, trained_on)


def kfold_model_for(folds: Mapping[str, int] | pd.Series, fold_models: Mapping[int, Any], *,
                    name: str = "fold{k}") -> Callable[[pd.Series], tuple[str, Any]]:
    """``model_for`` for :func:`lime_masked_dataset` from a k-fold scheme.

    Args:
        folds: image path -> the fold it belongs to (it was held out of that fold's training).
        fold_models: fold k -> the model trained on every fold EXCEPT k.
        name: model id pattern (``{k}`` = fold).

    Returns:
        ``fn(row) -> (model_id, model)``: the model of the image's own fold, i.e. one that never
        saw it.

    Raises:
        KeyError (when called): an image without a fold, or a fold without a model.
    """
    folds = dict(folds.items())

    def model_for(row: pd.Series) -> tuple[str, Any]:
        k = folds[str(row["path"])]
        if k not in fold_models:
            raise KeyError(f"no model for fold {k} (image {row['path']})")
        return name.format(k=k), fold_models[k]

    return model_for


# ---------------------------------------------------------------------------------------------
# the masked dataset


def lime_masked_dataset(
    manifest: pd.DataFrame | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model_for: Callable[[pd.Series], tuple[str, Any]] | Mapping[str, tuple[str, Any]],
    image_size: int | tuple[int, int],
    scale: Callable | Mapping[str, Callable | None] | None = None,
    steps: Sequence = (),
    trained_on: Mapping[str, set] | None = None,
    num_samples: int = 1000,
    batch_size: int = 256,
    seed: int = 0,
    segmentation: tuple[str, Mapping] = DEFAULT_SEGMENTATION,
    num_features: int = 5,
    positive_only: bool = True,
    hide_color: float | None = None,
    explain_label: Literal["predicted", "true"] = "predicted",
    class_names: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Write a new dataset where each image is multiplied by its LIME mask.

    The mask of each image comes from a model that never saw it: ``model_for(row)`` returns
    ``(model_id, model)`` (e.g. :meth:`MaskAssignment.model_for`, or :func:`kfold_model_for`:
    for fold k, the model trained on the other folds). With ``trained_on`` (model_id -> the
    groups it was trained on) an image whose group the model saw raises ``ValueError``. The mask
    is computed at the model's input size (``image_size`` after ``steps``) and applied,
    nearest-neighbour upsampled (at pixel centres), to the ORIGINAL image, so the masked dataset
    can be resized / split / augmented as before. A progress bar shows on the terminal (none
    without a TTY, never in a notebook's outputs).

    Args:
        manifest: DataFrame or CSV with ``path``, ``label``, ``group`` (relative paths resolve
            against the CSV's folder).
        out_dir: the new dataset folder (``<label>/<stem>.png`` + ``manifest.csv``); must not
            be inside the source folders (the source is only read).
        model_for: callable ``row -> (model_id, model_or_classifier_fn)`` or a mapping
            path -> ``(model_id, model)``.
        image_size: the models' input size.
        scale: an input scaling outside the models, one callable for every model or a mapping
            model_id -> callable; ``None`` = identity (registry models scale inside their graph).
        steps: deterministic preprocessing steps before the models (``osteo_tf.pipeline``).
        trained_on: optional leakage guard, model_id -> set of training groups.
        num_samples, batch_size, seed, segmentation, num_features, positive_only, hide_color:
            see :func:`lime_explain` (``seed`` is the same for every image).
        explain_label: ``"predicted"`` (LIME explains the model's prediction) or ``"true"``
            (the image's label; needs ``class_names``).
        class_names: ordered classes of the models' outputs (for ``explain_label="true"``).

    Returns:
        ``(manifest, skipped)``: the new manifest (``path`` relative to ``out_dir``, ``label``,
        ``group``, ``source_path``, ``mask_model``, ``lime_label``, ``lime_score``,
        ``mask_fraction``), also written to ``out_dir/manifest.csv``; and ``(path, reason)`` of
        the images that could not be read (skipped).

    Raises:
        ValueError: missing columns, ``out_dir`` inside a source folder, leakage.
    """
    from osteo_tf.io import ImageLoadError, load_xray, save_png
    from osteo_tf.pipeline import preprocess_image

    base = Path(".")
    if not isinstance(manifest, pd.DataFrame):
        base = Path(manifest).parent
        manifest = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    missing = [c for c in ("path", "label", "group") if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest must have the columns path, label and group. "
                         f"Received: columns={list(manifest.columns)} (missing {missing})")
    if explain_label not in ("predicted", "true"):
        raise ValueError(f'explain_label must be "predicted" or "true". Received: explain_label={explain_label!r}')
    if explain_label == "true" and not class_names:
        raise ValueError(f"class_names must name the models' classes when explain_label='true'. "
                         f"Received: class_names={class_names!r}")
    out = Path(out_dir).resolve()
    sources = [(base / p).resolve() for p in manifest["path"].astype(str)]
    for parent in {s.parent for s in sources}:
        if out == parent or parent.is_relative_to(out) or out.is_relative_to(parent):
            raise ValueError(f"out_dir must be outside the source folders. Received: out_dir={str(out_dir)!r}")
    lookup = model_for if callable(model_for) else (lambda row: model_for[str(row["path"])])
    predictors: dict[str, Any] = {}
    rows, skipped, used = [], [], set()
    for (_, row), src in progress(zip(manifest.iterrows(), sources), total=len(sources), desc="LIME masks",
                                  unit="image"):
        model_id, model = lookup(row)
        model_id = str(model_id)
        if trained_on is not None and str(row["group"]) in set(map(str, trained_on.get(model_id, ()))):
            raise ValueError(
                f"leakage: model {model_id!r} was trained on group {row['group']!r}, which holds "
                f"{row['path']!r}; masks must come from a model that never saw the image"
            )
        try:
            original = load_xray(src)
        except ImageLoadError as exc:
            skipped.append((str(row["path"]), exc.reason))
            log.warning("skipping %s", exc)
            continue
        if model_id not in predictors:
            model_scale = scale.get(model_id) if isinstance(scale, Mapping) else scale
            predictors[model_id] = (ModelPredictor(model, scale=model_scale, batch_size=batch_size)
                                    if hasattr(model, "inputs") else model)
        small = preprocess_image(original, image_size=image_size, steps=steps)
        label = None
        if explain_label == "true":
            label = list(class_names).index(str(row["label"]))
        res = lime_explain(predictors[model_id], small, num_samples=num_samples, batch_size=batch_size,
                           seed=seed, segmentation=segmentation, top_label=label,
                           num_features=num_features, positive_only=positive_only, hide_color=hide_color)
        mask = _upsample_mask(res.mask, original.shape)
        stem, k, rel = src.stem, 1, f"{row['label']}/{src.stem}.png"
        while rel in used:
            rel, k = f"{row['label']}/{stem}_{k}.png", k + 1
        used.add(rel)
        save_png(np.where(mask, original, 0.0).astype(np.float32), out / rel)
        rows.append({"path": rel, "label": row["label"], "group": row["group"], "source_path": str(row["path"]),
                     "mask_model": model_id, "lime_label": res.label, "lime_score": res.score,
                     "mask_fraction": float(mask.mean())})
    result = pd.DataFrame(rows, columns=["path", "label", "group", "source_path", "mask_model", "lime_label",
                                         "lime_score", "mask_fraction"])
    out.mkdir(parents=True, exist_ok=True)
    result.to_csv(out / "manifest.csv", index=False, lineterminator="\n")
    (out / "lime_masking.json").write_text(json.dumps({
        "num_samples": num_samples, "batch_size": batch_size, "seed": seed,
        "segmentation": [segmentation[0], dict(segmentation[1])], "num_features": num_features,
        "positive_only": positive_only, "hide_color": hide_color, "explain_label": explain_label,
        "image_size": image_size, "steps": [s if isinstance(s, str) else [s[0], dict(s[1])] for s in steps],
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "masked_by": result.groupby("mask_model")["path"].count().to_dict() if len(result) else {},
    }, indent=2, default=str) + "\n")
    return result, skipped


def source_split(masked: pd.DataFrame, folder: str | os.PathLike, split: pd.DataFrame) -> pd.DataFrame:
    """A masked manifest with the split of each image's source, ready for training.

    Args:
        masked: the manifest :func:`lime_masked_dataset` returned (``path`` relative to
            ``folder``, ``source_path``).
        folder: the masked dataset's folder (``out_dir`` of :func:`lime_masked_dataset`).
        split: the source manifest with ``path`` and ``split``.

    Returns:
        A copy with ``split`` (the source's), ``path`` and ``relpath`` the masked file's full path.
    """
    split_of = dict(zip(split["path"].astype(str), split["split"]))
    out = masked.copy()
    out["split"] = out["source_path"].map(split_of)
    out["path"] = [str(Path(folder) / p) for p in out["path"]]
    out["relpath"] = out["path"]
    return out


def _upsample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A (h, w) bool mask -> (H, W) bool, nearest neighbour at pixel centres
    (``preprocessing.nearest_indices_take``, what ``preprocessing.resize(interpolation="nearest")`` does)."""
    from osteo_tf.preprocessing import nearest_indices_take

    if mask.shape == tuple(shape):
        return np.asarray(mask, dtype=bool)
    return nearest_indices_take(np.asarray(mask, dtype=bool), tuple(shape))
