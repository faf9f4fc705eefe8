"""Test-set metrics, patient-level bootstrap CIs, calibration, voting and metrics.json records.

Pure NumPy / scikit-learn / pandas (no TensorFlow), so it imports and runs fast.

Conventions used by every function:

* ``y_true``: (N,) integer class indices in ``[0, C)``.
* ``y_prob``: (N, C) class probabilities (softmax rows summing to ~1), or for binary tasks (N,)
  / (N, 1) holding the probability of the ``positive`` class.
* ``positive``: index of the positive (diseased) class; default 1, the last class of a binary
  task. Sensitivity is the recall of this class, specificity the recall of the other one.
* Confusion matrices have true classes as rows and predicted classes as columns (scikit-learn).
* A ratio with a zero denominator (0/0) is NaN, never an exception; ROC-AUC is NaN when only
  one class is present, PR-AUC is NaN when there are no positives.

Every metric is computed by one weighted, vectorised engine (:func:`_engine`): the point
estimate uses unit weights and the bootstrap uses, for each resample, the number of times each
image's patient was drawn. Point estimates and bootstrap replicates therefore share one
definition, and 1000 resamples of a few hundred images take a fraction of a second.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from osteo_tf._warnings import BOOTSTRAP_SKIPPED, quiet

__all__ = [
    "BINARY_METRICS",
    "MULTICLASS_METRICS",
    "CI",
    "confusion_counts",
    "binary_metrics",
    "multiclass_metrics",
    "classification_metrics",
    "bootstrap_distribution",
    "bootstrap_ci",
    "paired_effect",
    "format_estimate",
    "format_interval",
    "brier_score",
    "expected_calibration_error",
    "reliability_curve",
    "majority_vote",
    "soft_vote",
    "aggregate_folds",
    "image_to_patient",
    "operating_point",
    "result_record",
    "jsonable",
    "metrics_document",
    "write_metrics_json",
    "read_metrics_json",
    "compare_to_paper",
]

BINARY_METRICS = (
    "accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
    "auc", "pr_auc", "brier",
)
"""Scalar metrics of a binary task that :func:`bootstrap_ci` can resample."""

MULTICLASS_METRICS = BINARY_METRICS + ("macro_f1",)
"""Scalar metrics of a multi-class task (``f1``/``sensitivity``/... are macro averages)."""

HEADLINE = ("accuracy", "sensitivity", "specificity", "f1", "auc")
CI_METRICS = HEADLINE + ("balanced_accuracy", "ppv", "npv", "pr_auc")
RESULT_KEYS = (
    "experiment", "model", "protocol", "accuracy", "sensitivity", "specificity", "f1", "auc",
    "ci95", "train_seconds",
)
DOCUMENT_KEYS = ("study", "profile", "seed", "data", "versions", "results", "paper")
DATA_KEYS = ("source", "n_images", "n_groups", "classes", "label_provenance")
PROTOCOLS = ("clean", "paper")
PAPER_ALIASES = {"recall": "sensitivity", "precision": "ppv"}
_PROB_TOL = 1e-6
_ROW_SUM_TOL = 1e-3
_MAX_WEIGHT_ELEMENTS = 4_000_000  # bootstrap chunk size: resamples x images per chunk


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------
def _labels(y: Any, name: str = "y_true") -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D array of class indices. "
            f"Received: {name} with shape {arr.shape}"
        )
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(
            f"{name} must hold integer class indices (map names to indices first). "
            f"Received: {name} of dtype {arr.dtype}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or np.any(arr < 0):
        raise ValueError(
            f"{name} must hold non-negative integer class indices. Received: {name}={arr[:10]!r}..."
        )
    return arr.astype(np.int64)


def _probs(y_prob: Any, n: int, positive: int, n_classes: int | None = None) -> np.ndarray:
    """Return (N, C) float64 probabilities; a (N,) / (N, 1) input becomes two columns."""
    p = np.asarray(y_prob, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim == 1:
        if positive not in (0, 1):
            raise ValueError(
                "With a 1-D y_prob (probability of the positive class) positive must be 0 or 1. "
                f"Received: positive={positive!r}"
            )
        cols = [1.0 - p, p] if positive == 1 else [p, 1.0 - p]
        p = np.stack(cols, axis=1)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(
            f"y_prob must have shape (N,), (N, 1) or (N, C) with C >= 2. Received: y_prob with shape {p.shape}"
        )
    if p.shape[0] != n:
        raise ValueError(
            f"y_prob must have one row per label ({n}). Received: y_prob with shape {p.shape}"
        )
    if n_classes is not None and p.shape[1] != n_classes:
        raise ValueError(
            f"y_prob must have one column per name in class_names ({n_classes}). "
            f"Received: y_prob with shape {p.shape}"
        )
    if not np.all(np.isfinite(p)) or p.min() < -_PROB_TOL or p.max() > 1 + _PROB_TOL:
        raise ValueError(
            f"y_prob must hold finite probabilities in [0, 1]. Received: y_prob with range "
            f"[{np.nanmin(p):.4g}, {np.nanmax(p):.4g}] and {int(np.sum(~np.isfinite(p)))} non-finite values"
        )
    sums = p.sum(axis=1)
    if np.any(np.abs(sums - 1.0) > _ROW_SUM_TOL):
        warnings.warn(
            "Rows of y_prob do not sum to 1 (max deviation "
            f"{np.max(np.abs(sums - 1.0)):.3g}); pass softmax probabilities, not logits or "
            "independent sigmoid outputs.",
            stacklevel=3,
        )
    return np.clip(p, 0.0, 1.0)


def _inputs(y_true, y_prob, positive, class_names=None):
    y = _labels(y_true)
    if positive is not None and (
        not isinstance(positive, (int, np.integer)) or isinstance(positive, bool) or positive < 0
    ):
        raise ValueError(f"positive must be a non-negative class index. Received: positive={positive!r}")
    n_classes = None if class_names is None else len(class_names)
    p = _probs(y_prob, y.size, 1 if positive is None else int(positive), n_classes)
    c = p.shape[1]
    if y.max() >= c:
        raise ValueError(
            f"y_true holds class index {int(y.max())} but y_prob has only {c} classes. "
            f"Received: y_true max={int(y.max())}, y_prob shape={p.shape}"
        )
    if positive is not None and positive >= c:
        raise ValueError(f"positive must be < the number of classes ({c}). Received: positive={positive}")
    names = _class_names(class_names, c)
    return y, p, names


def _class_names(class_names, c: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(c)]
    names = [str(x) for x in class_names]
    if len(names) != c or len(set(names)) != c:
        raise ValueError(
            f"class_names must be {c} distinct names, one per column of y_prob. Received: class_names={class_names!r}"
        )
    return names


def _check_metric_names(metrics, allowed) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    bad = [m for m in metrics if m not in allowed]
    if bad or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {list(allowed)}. Received: metrics={metrics!r}")
    return metrics


def _div(num, den):
    """Elementwise num / den with NaN where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(a, axis):
    a = np.asarray(a, dtype=np.float64)
    cnt = np.sum(~np.isnan(a), axis=axis)
    return _div(np.nansum(a, axis=axis), cnt)


# --------------------------------------------------------------------------------------------
# The weighted engine: every metric for B weight vectors at once
# --------------------------------------------------------------------------------------------
class _Ranker:
    """Pre-sorted scores of one class: weighted ROC-AUC and average precision for many weights."""

    def __init__(self, score: np.ndarray, is_pos: np.ndarray):
        self.order = np.argsort(score, kind="mergesort")
        s = score[self.order]
        self.starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # tie blocks, ascending
        self.pos = is_pos[self.order].astype(np.float64)

    def __call__(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ws = w[:, self.order]
        pos_b = np.add.reduceat(ws * self.pos, self.starts, axis=1)
        neg_b = np.add.reduceat(ws * (1.0 - self.pos), self.starts, axis=1)
        w1, w0 = pos_b.sum(axis=1), neg_b.sum(axis=1)
        # ROC-AUC = P(score_pos > score_neg) + 0.5 P(tie) (Mann-Whitney, weighted).
        neg_below = np.cumsum(neg_b, axis=1) - neg_b
        auc = _div(np.sum(pos_b * (neg_below + 0.5 * neg_b), axis=1), w1 * w0)
        # Average precision = sum over thresholds (descending) of recall step x precision.
        tp = np.cumsum(pos_b[:, ::-1], axis=1)
        fp = np.cumsum(neg_b[:, ::-1], axis=1)
        prec = np.zeros_like(tp)
        np.divide(tp, tp + fp, out=prec, where=(tp + fp) > 0)
        ap = _div(np.sum(pos_b[:, ::-1] * prec, axis=1), w1)
        return auc, ap


class _Engine:
    """Fixed data (labels, probabilities, predictions); evaluates metrics for weight matrices."""

    def __init__(self, y: np.ndarray, p: np.ndarray, *, positive: int, threshold: float):
        self.y, self.p, self.c = y, p, p.shape[1]
        self.binary = self.c == 2
        self.positive = positive
        if self.binary:
            is_pos = p[:, positive] >= threshold
            self.pred = np.where(is_pos, positive, 1 - positive)
        else:
            self.pred = np.argmax(p, axis=1)
        self.onehot_cell = np.eye(self.c * self.c)[y * self.c + self.pred]  # (N, C*C)
        onehot = np.eye(self.c)[y]
        if self.binary:
            self.sq_err = (p[:, positive] - onehot[:, positive]) ** 2
        else:
            self.sq_err = np.sum((p - onehot) ** 2, axis=1)
        classes = [positive] if self.binary else range(self.c)
        self.rankers = {k: _Ranker(p[:, k], y == k) for k in classes}
        self.auc_classes: np.ndarray | None = None  # multi-class: classes defined on full data

    def confusion(self, w: np.ndarray) -> np.ndarray:
        return (w @ self.onehot_cell).reshape(-1, self.c, self.c)

    def __call__(self, w: np.ndarray, want: Sequence[str]) -> dict[str, np.ndarray]:
        cm = self.confusion(w)
        total = cm.sum(axis=(1, 2))
        diag = np.diagonal(cm, axis1=1, axis2=2)
        row, col = cm.sum(axis=2), cm.sum(axis=1)
        out: dict[str, np.ndarray] = {"accuracy": _div(diag.sum(axis=1), total)}
        tn = total[:, None] - row - col + diag
        fp, fn = col - diag, row - diag
        recall, precision = _div(diag, row), _div(diag, col)
        spec, npv = _div(tn, tn + fp), _div(tn, tn + fn)
        f1 = _div(2 * diag, row + col)
        if "brier" in want:
            out["brier"] = _div(w @ self.sq_err, w.sum(axis=1))
        if self.binary:
            k = self.positive
            out.update(sensitivity=recall[:, k], specificity=spec[:, k], ppv=precision[:, k],
                       npv=npv[:, k], f1=f1[:, k])
            out["balanced_accuracy"] = (out["sensitivity"] + out["specificity"]) / 2
            if "auc" in want or "pr_auc" in want:
                out["auc"], out["pr_auc"] = self.rankers[k](w)
            out["macro_f1"] = _nanmean(f1, axis=1)
            return out
        # Multi-class: macro averages. Recall, specificity and NPV over classes present in
        # y_true; precision over classes predicted at least once; F1 over classes in y_true or
        # y_pred (scikit-learn's label set).
        present = row > 0
        out["sensitivity"] = _nanmean(np.where(present, recall, np.nan), axis=1)
        out["balanced_accuracy"] = out["sensitivity"]
        out["specificity"] = _nanmean(np.where(present, spec, np.nan), axis=1)
        out["npv"] = _nanmean(np.where(present, npv, np.nan), axis=1)
        out["ppv"] = _nanmean(precision, axis=1)
        out["macro_f1"] = out["f1"] = _nanmean(f1, axis=1)
        if "auc" in want or "pr_auc" in want:
            aucs, aps = zip(*(self.rankers[k](w) for k in range(self.c)))
            aucs, aps = np.stack(aucs, axis=1), np.stack(aps, axis=1)
            use = self.auc_classes if self.auc_classes is not None else np.ones(self.c, bool)
            # A resample that loses one of the classes scored on the full data is undefined.
            out["auc"] = aucs[:, use].mean(axis=1) if use.any() else np.full(len(w), np.nan)
            out["pr_auc"] = aps[:, use].mean(axis=1) if use.any() else np.full(len(w), np.nan)
            out["_auc_per_class"], out["_ap_per_class"] = aucs, aps
        return out


def _point(y, p, positive, threshold):
    eng = _Engine(y, p, positive=positive, threshold=threshold)
    if not eng.binary:
        counts = np.bincount(y, minlength=eng.c)
        eng.auc_classes = (counts > 0) & (counts < y.size)
    w = np.ones((1, y.size))
    res = eng(w, ("auc", "pr_auc", "brier"))
    return eng, res, eng.confusion(w)[0]


def _f(x) -> float:
    return float(np.asarray(x).reshape(-1)[0]) if np.ndim(x) else float(x)


# --------------------------------------------------------------------------------------------
# Point metrics
# --------------------------------------------------------------------------------------------
def confusion_counts(y_true: Any, y_pred: Any, *, positive: int = 1) -> dict[str, int]:
    """Count TP, FP, TN and FN of one class against the rest.

    Args:
        y_true: (N,) int true class indices.
        y_pred: (N,) int predicted class indices.
        positive: the class counted as positive (one-vs-rest when there are more than two).

    Returns:
        ``{"tp", "fp", "tn", "fn"}`` as Python ints.

    Raises:
        ValueError: if the arrays differ in length or are not class indices.
    """
    yt, yp = _labels(y_true), _labels(y_pred, "y_pred")
    if yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred must have the same length. Received: {yt.size} and {yp.size}")
    if not isinstance(positive, (int, np.integer)) or isinstance(positive, bool) or positive < 0:
        raise ValueError(f"positive must be a non-negative class index. Received: positive={positive!r}")
    t, q = yt == positive, yp == positive
    return {"tp": int(np.sum(t & q)), "fp": int(np.sum(~t & q)),
            "tn": int(np.sum(~t & ~q)), "fn": int(np.sum(t & ~q))}


def _per_class(cm: np.ndarray, names: list[str], aucs=None) -> dict[str, dict[str, float]]:
    diag, row, col = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    tn = cm.sum() - row - col + diag
    out = {}
    for k, name in enumerate(names):
        out[name] = {
            "precision": _f(_div(diag[k], col[k])),
            "recall": _f(_div(diag[k], row[k])),
            "f1": _f(_div(2 * diag[k], row[k] + col[k])),
            "specificity": _f(_div(tn[k], tn[k] + col[k] - diag[k])),
            "support": int(round(row[k])),
        }
        if aucs is not None:
            out[name]["auc"] = _f(aucs[k])
    return out


def binary_metrics(
    y_true: Any,
    y_prob: Any,
    *,
    positive: int = 1,
    threshold: float = 0.5,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Binary test metrics at one decision threshold.

    Args:
        y_true: (N,) int labels in {0, 1}.
        y_prob: (N,) / (N, 1) probability of class ``positive``, or (N, 2) class probabilities.
        positive: index of the positive (diseased) class, 0 or 1.
        threshold: predict ``positive`` when its probability is >= ``threshold``.
        class_names: optional two names, used as keys of ``per_class``.

    Returns:
        A dict with ``accuracy``, ``balanced_accuracy``, ``sensitivity`` (recall of
        ``positive``), ``specificity``, ``ppv``, ``npv``, ``f1`` (of ``positive``), ``auc``
        (ROC), ``pr_auc`` (average precision), ``brier``, ``tp``/``fp``/``tn``/``fn``, ``n``,
        ``prevalence``, ``threshold``, ``confusion_matrix`` (rows true, columns predicted) and
        ``per_class`` ({name: precision, recall, f1, specificity, support}). Undefined ratios
        are NaN; ``auc`` is NaN with one class present, ``pr_auc`` with no positives.

    Raises:
        ValueError: on malformed inputs, more than two classes, or a threshold outside [0, 1].
    """
    if not (isinstance(threshold, (int, float, np.floating)) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a number in [0, 1]. Received: threshold={threshold!r}")
    if positive not in (0, 1) or isinstance(positive, bool):
        raise ValueError(f"positive must be 0 or 1 for a binary task. Received: positive={positive!r}")
    y, p, names = _inputs(y_true, y_prob, positive, class_names)
    if p.shape[1] != 2:
        raise ValueError(
            f"binary_metrics needs two classes; use multiclass_metrics. Received: y_prob with shape {p.shape}"
        )
    eng, res, cm = _point(y, p, int(positive), float(threshold))
    counts = confusion_counts(y, eng.pred, positive=int(positive))
    out: dict[str, Any] = {k: _f(res[k]) for k in BINARY_METRICS}
    out.update(counts)
    out.update(
        n=int(y.size),
        prevalence=float(np.mean(y == positive)),
        threshold=float(threshold),
        positive=names[positive],
        class_names=names,
        confusion_matrix=cm.round().astype(int).tolist(),
        per_class=_per_class(cm, names),
    )
    return out


def multiclass_metrics(
    y_true: Any, y_prob: Any, *, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Multi-class test metrics with argmax predictions.

    Macro averages follow scikit-learn: recall (= ``balanced_accuracy`` = ``sensitivity``),
    specificity and NPV over the classes present in ``y_true``; precision (``ppv``) over the
    classes predicted at least once; F1 (``macro_f1`` = ``f1``) over classes in either.
    ``auc`` / ``pr_auc`` are macro one-vs-rest ROC-AUC / average precision over the classes
    that have both positives and negatives in ``y_true`` (``auc_n_classes`` of them; a warning
    is issued when that is fewer than all); with all classes present ``auc`` equals
    ``roc_auc_score(..., multi_class="ovr", average="macro")``. ``brier`` is the multi-class
    Brier score (sum over classes, mean over images, range [0, 2]).

    Args:
        y_true: (N,) int labels in [0, C).
        y_prob: (N, C) class probabilities.
        class_names: optional C names (keys of ``per_class``).

    Returns:
        A dict of scalar metrics plus ``per_class`` ({name: precision, recall, f1,
        specificity, support, auc}), ``confusion_matrix`` (rows true, columns predicted),
        ``n``, ``class_names``.

    Raises:
        ValueError: on malformed inputs.
    """
    y, p, names = _inputs(y_true, y_prob, None, class_names)
    eng, res, cm = _point(y, p, 1, 0.5)
    n_auc = int(eng.auc_classes.sum()) if eng.auc_classes is not None else 2
    if not eng.binary and 0 < n_auc < eng.c:
        warnings.warn(
            f"Macro AUC averages {n_auc} of {eng.c} classes: the others are absent from y_true "
            "(or are the only class). Evaluate on a test set holding every class.",
            stacklevel=2,
        )
    out: dict[str, Any] = {k: _f(res[k]) for k in MULTICLASS_METRICS}
    aucs = res["_auc_per_class"][0] if "_auc_per_class" in res else None
    out.update(
        n=int(y.size),
        class_names=names,
        auc_n_classes=n_auc,
        confusion_matrix=cm.round().astype(int).tolist(),
        per_class=_per_class(cm, names, aucs),
    )
    return out


def classification_metrics(
    y_true: Any,
    y_prob: Any,
    *,
    class_names: Sequence[str] | None = None,
    positive: int | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Dispatch to :func:`binary_metrics` (2 classes) or :func:`multiclass_metrics` (more).

    Args:
        y_true: (N,) int labels.
        y_prob: (N,) / (N, 1) positive-class probability, or (N, C) class probabilities.
        class_names: optional names, one per class.
        positive: binary: the positive class (default 1, the last class). Multi-class: when
            given, a ``one_vs_rest`` block of binary metrics for this class is added (e.g.
            osteoporosis vs the rest); the headline metrics stay macro averages.
        threshold: binary decision threshold on the positive-class probability.

    Returns:
        The metric dict; always includes ``confusion_matrix`` and ``per_class``.
    """
    y, p, _ = _inputs(y_true, y_prob, positive, class_names)
    if p.shape[1] == 2:
        return binary_metrics(y, p, positive=1 if positive is None else positive,
                              threshold=threshold, class_names=class_names)
    out = multiclass_metrics(y, p, class_names=class_names)
    if positive is not None:
        k = int(positive)
        score = p[:, k]
        ovr = binary_metrics((y == k).astype(int), score, positive=1, threshold=threshold)
        # Argmax decides multi-class predictions; report one-vs-rest counts on those.
        ovr.update(confusion_counts(y, np.argmax(p, axis=1), positive=k))
        for key in ("per_class", "class_names", "positive", "confusion_matrix"):
            ovr.pop(key)
        tp, fp, tn, fn = (ovr[k2] for k2 in ("tp", "fp", "tn", "fn"))
        ovr.update(sensitivity=_f(_div(tp, tp + fn)), specificity=_f(_div(tn, tn + fp)),
                   ppv=_f(_div(tp, tp + fp)), npv=_f(_div(tn, tn + fn)),
                   f1=_f(_div(2 * tp, 2 * tp + fp + fn)), accuracy=_f(_div(tp + tn, y.size)),
                   threshold=None)
        ovr["balanced_accuracy"] = _f((ovr["sensitivity"] + ovr["specificity"]) / 2)
        out["one_vs_rest"] = {"positive": out["class_names"][k], **ovr}
    return out


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------
class CI(tuple):
    """A ``(lo, hi)`` percentile interval that also carries ``n_valid`` and ``n_skipped``.

    It unpacks and serialises (json) as a plain 2-tuple / list.
    """

    def __new__(cls, lo: float, hi: float, n_valid: int = 0, n_skipped: int = 0):
        obj = super().__new__(cls, (float(lo), float(hi)))
        obj.n_valid, obj.n_skipped = int(n_valid), int(n_skipped)
        return obj

    def __repr__(self) -> str:
        return f"CI({self[0]:.4g}, {self[1]:.4g}, n_valid={self.n_valid}, n_skipped={self.n_skipped})"


def _group_index(groups, n: int) -> tuple[np.ndarray, np.ndarray]:
    if groups is None:
        return np.arange(n), np.arange(n)
    g = np.asarray(groups)
    if g.ndim != 1 or g.size != n:
        raise ValueError(f"groups must be a 1-D array with one entry per image ({n}). Received: shape {g.shape}")
    if g.dtype == object:
        g = g.astype(str)
    ids, inv = np.unique(g, return_inverse=True)
    return ids, inv


def _group_labels(y: np.ndarray, inv: np.ndarray, n_groups: int) -> np.ndarray:
    first = np.full(n_groups, -1)
    first[inv[::-1]] = y[::-1]
    conflict = np.flatnonzero(first[inv] != y)
    if conflict.size:
        bad = np.unique(inv[conflict])[:5]
        raise ValueError(
            f"Some groups hold images with different labels (group indices {bad.tolist()}). "
            f"Received: groups with conflicting y_true"
        )
    return first


def bootstrap_distribution(
    y_true: Any,
    y_prob: Any,
    *,
    groups: Any = None,
    metrics: Sequence[str] = CI_METRICS,
    n_boot: int = 1000,
    seed: int = 0,
    stratify: bool = False,
    positive: int | None = None,
    threshold: float = 0.5,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of metrics, resampling patients (groups) with replacement.

    Each resample draws as many groups as there are, with replacement, and takes every image
    of every drawn group (a cluster bootstrap: images of one patient are not independent).
    ``groups=None`` treats every image as its own group.

    Args:
        y_true: (N,) int labels.
        y_prob: as for :func:`classification_metrics`.
        groups: (N,) patient / source-image ids, or None.
        metrics: names from :data:`BINARY_METRICS` / :data:`MULTICLASS_METRICS`.
        n_boot: number of resamples (>= 1).
        seed: seed of the NumPy generator; equal seeds give identical replicates.
        stratify: resample groups within each class (group labels must then be consistent),
            so each resample keeps the class balance and both classes.
        positive: positive class for binary tasks (default 1); ignored for multi-class.
        threshold: binary decision threshold.

    Returns:
        ``{metric: (n_boot,) float64}``; NaN where the metric is undefined on a resample.
    """
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer. Received: n_boot={n_boot!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer. Received: seed={seed!r}")
    if not (isinstance(threshold, (int, float, np.floating)) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a number in [0, 1]. Received: threshold={threshold!r}")
    y, p, _ = _inputs(y_true, y_prob, positive)
    binary = p.shape[1] == 2
    metrics = _check_metric_names(metrics, BINARY_METRICS if binary else MULTICLASS_METRICS)
    eng = _Engine(y, p, positive=1 if positive is None else int(positive), threshold=threshold)
    if not binary:
        counts = np.bincount(y, minlength=eng.c)
        eng.auc_classes = (counts > 0) & (counts < y.size)
    _, inv = _group_index(groups, y.size)
    n_groups = int(inv.max()) + 1
    rng = np.random.default_rng(int(seed))
    if stratify:
        g_label = _group_labels(y, inv, n_groups)
        draws = np.empty((n_boot, n_groups), dtype=np.int64)
        col = 0
        for label in np.unique(g_label):
            members = np.flatnonzero(g_label == label)
            draws[:, col:col + members.size] = members[rng.integers(0, members.size, (n_boot, members.size))]
            col += members.size
    else:
        draws = rng.integers(0, n_groups, (n_boot, n_groups))
    offsets = (np.arange(n_boot) * n_groups)[:, None]
    mult = np.bincount((draws + offsets).ravel(), minlength=n_boot * n_groups)
    mult = mult.reshape(n_boot, n_groups).astype(np.float64)
    out = {m: np.empty(n_boot) for m in metrics}
    chunk = max(1, _MAX_WEIGHT_ELEMENTS // max(1, y.size))
    for start in range(0, n_boot, chunk):
        w = mult[start:start + chunk][:, inv]
        res = eng(w, metrics)
        for m in metrics:
            out[m][start:start + chunk] = res[m]
    return out


def bootstrap_ci(
    y_true: Any,
    y_prob: Any,
    *,
    groups: Any = None,
    metrics: Sequence[str] = CI_METRICS,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stratify: bool = False,
    positive: int | None = None,
    threshold: float = 0.5,
) -> dict[str, CI]:
    """Percentile bootstrap confidence intervals, resampling patients (see :func:`bootstrap_distribution`).

    Resamples on which a metric is undefined (e.g. one class only, for AUC) are skipped for that
    metric and counted in ``CI.n_skipped``; one warning lists the metrics that lost more than 5%.

    Args:
        y_true, y_prob, groups, metrics, n_boot, seed, stratify, positive, threshold: as for
            :func:`bootstrap_distribution`.
        alpha: 1 - confidence level (0.05 gives a 95% interval).

    Returns:
        ``{metric: CI(lo, hi)}``; ``(nan, nan)`` when no resample defines the metric.
    """
    if not (isinstance(alpha, (float, int, np.floating)) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1). Received: alpha={alpha!r}")
    dist = bootstrap_distribution(
        y_true, y_prob, groups=groups, metrics=metrics, n_boot=n_boot, seed=seed,
        stratify=stratify, positive=positive, threshold=threshold,
    )
    out = {}
    noisy = {}
    for m, vals in dist.items():
        valid = vals[~np.isnan(vals)]
        skipped = vals.size - valid.size
        if skipped > 0.05 * vals.size:
            noisy[m] = skipped
        if valid.size:
            lo, hi = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
        else:
            lo = hi = np.nan
        out[m] = CI(lo, hi, valid.size, skipped)
    if noisy:
        warnings.warn(
            f"Bootstrap resamples skipped because the metric was undefined (of {n_boot}): {noisy}; "
            "those intervals may be biased or empty. Use stratify=True or a larger test set.",
            stacklevel=2,
        )
    return out


PAIRINGS = ("same", "shared")
"""How :func:`paired_effect` treats two arms evaluated on different patients: ``"same"`` raises,
``"shared"`` pairs them on the patients both were tested on."""


def paired_effect(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    *,
    metric: str = "auc",
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    pairing: str = "same",
    positive: int | None = None,
) -> dict[str, Any]:
    """The difference ``metric(b) - metric(a)`` of two models (or conditions) tested on the same
    patients, with a paired, patient-level percentile-bootstrap CI.

    Each resample draws the shared patients with replacement ONCE and evaluates both arms on that
    same draw (every image of a drawn patient, with the patient's multiplicity), so the interval
    reflects the difference between the arms, not the spread of each: two identical arms give
    exactly 0 with the interval [0, 0]. Resamples on which the metric is undefined for either arm
    (e.g. AUC with one class drawn) are skipped and counted.

    Args:
        a, b: the two arms, each a mapping with ``y_true`` (N,), ``y_prob`` (see the module
            conventions), ``groups`` (N,) patient ids and optionally ``threshold`` (binary decision
            threshold, default 0.5: the arm's operating point). The arms may hold different images
            (e.g. an augmented test set) as long as they cover the same patients.
        metric: one of :data:`BINARY_METRICS` / :data:`MULTICLASS_METRICS` (e.g. ``"auc"``,
            ``"balanced_accuracy"``, ``"accuracy"``).
        n_boot: resamples (default 2000).
        alpha: 1 - confidence level.
        seed: NumPy seed of the resampling; equal seeds give identical intervals.
        pairing: ``"same"``: both arms must have been tested on exactly the same patients (a
            ValueError otherwise); ``"shared"``: only the patients both arms were tested on are
            used (each arm's images of other patients are dropped; ``n_only_a`` / ``n_only_b``
            say how many patients that left out).
        positive: binary positive class (default 1).

    Returns:
        ``{"metric", "a", "b", "effect", "ci95": [lo, hi], "p_not_positive", "n_groups",
        "n_only_a", "n_only_b", "n_boot", "n_skipped", "seed", "pairing", "method"}``: ``a`` and ``b``
        are the point estimates on the paired patients, ``effect = b - a``, ``p_not_positive`` the
        share of resamples with an effect <= 0 (a one-sided bootstrap p-value for "b is better").

    Raises:
        ValueError: malformed arms, an unknown metric or pairing, arms with different numbers of
            classes, ``pairing="same"`` with different patients, or no shared patient.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}. Received: pairing={pairing!r}")
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer. Received: n_boot={n_boot!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer. Received: seed={seed!r}")
    if not (isinstance(alpha, (float, int, np.floating)) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1). Received: alpha={alpha!r}")
    arms = []
    for name, arm in (("a", a), ("b", b)):
        if not isinstance(arm, Mapping) or any(k not in arm for k in ("y_true", "y_prob", "groups")):
            raise ValueError(f"arm {name} must be a mapping with y_true, y_prob and groups. Received: {arm!r:.120}")
        y, p, _ = _inputs(arm["y_true"], arm["y_prob"], positive)
        g = np.asarray(arm["groups"]).astype(str)
        if g.ndim != 1 or g.size != y.size:
            raise ValueError(f"arm {name}: groups must hold one id per image ({y.size}). Received: shape {g.shape}")
        t = arm.get("threshold")
        t = 0.5 if t is None else float(t)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"arm {name}: threshold must be in [0, 1]. Received: threshold={t!r}")
        arms.append((y, p, g, t))
    if arms[0][1].shape[1] != arms[1][1].shape[1]:
        raise ValueError(f"both arms need the same classes. Received: {arms[0][1].shape[1]} and "
                         f"{arms[1][1].shape[1]} class columns")
    binary = arms[0][1].shape[1] == 2
    (metric,) = _check_metric_names((metric,), BINARY_METRICS if binary else MULTICLASS_METRICS)
    ga, gb = set(arms[0][2]), set(arms[1][2])
    shared = np.array(sorted(ga & gb))
    if ga != gb and pairing == "same":
        raise ValueError(
            f"the two arms were tested on different patients ({len(ga - gb)} only in a, {len(gb - ga)} only in b, "
            f"{shared.size} shared); pass pairing='shared' to pair them on the shared patients")
    if shared.size == 0:
        raise ValueError("the two arms share no test patient: a paired comparison is impossible")
    pos = 1 if positive is None else int(positive)
    engines, invs = [], []
    for y, p, g, t in arms:
        keep = np.isin(g, shared)
        y, p, g = y[keep], p[keep], g[keep]
        eng = _Engine(y, p, positive=pos, threshold=t)
        if not binary:
            counts = np.bincount(y, minlength=eng.c)
            eng.auc_classes = (counts > 0) & (counts < y.size)
        engines.append(eng)
        invs.append(np.searchsorted(shared, g))
    point = [_f(eng(np.ones((1, inv.size)), (metric,))[metric]) for eng, inv in zip(engines, invs)]
    n_groups = shared.size
    rng = np.random.default_rng(int(seed))
    draws = rng.integers(0, n_groups, (n_boot, n_groups))
    offsets = (np.arange(n_boot) * n_groups)[:, None]
    mult = np.bincount((draws + offsets).ravel(), minlength=n_boot * n_groups).reshape(n_boot, n_groups)
    mult = mult.astype(np.float64)
    reps = np.empty((2, n_boot))
    for i, (eng, inv) in enumerate(zip(engines, invs)):
        chunk = max(1, _MAX_WEIGHT_ELEMENTS // max(1, inv.size))
        for start in range(0, n_boot, chunk):
            reps[i, start:start + chunk] = eng(mult[start:start + chunk][:, inv], (metric,))[metric]
    diff = reps[1] - reps[0]
    valid = diff[~np.isnan(diff)]
    if valid.size:
        lo, hi = (float(v) for v in np.quantile(valid, [alpha / 2, 1 - alpha / 2]))
        p_not_positive = float(np.mean(valid <= 0))
    else:
        lo = hi = p_not_positive = math.nan
    return jsonable({
        "metric": metric, "a": point[0], "b": point[1], "effect": point[1] - point[0], "ci95": [lo, hi],
        "p_not_positive": p_not_positive, "n_groups": int(n_groups), "n_only_a": len(ga - gb),
        "n_only_b": len(gb - ga), "n_boot": int(n_boot), "n_skipped": int(n_boot - valid.size), "seed": int(seed),
        "pairing": pairing, "level": 1 - alpha,
        "method": "paired percentile bootstrap resampling patients (one draw per resample for both arms)",
    })


def format_interval(lo: float, hi: float, *, digits: int = 2) -> str:
    """An interval as ``"[0.70, 0.90]"`` (NaN bounds print as ``nan``).

    Args:
        lo: lower bound.
        hi: upper bound.
        digits: decimals of each bound.

    Returns:
        The bracketed text.

    Raises:
        TypeError: a bound that is not a real number.
        ValueError: ``digits`` that is not a non-negative integer.
    """
    digits = _check_digits(digits, "digits")
    for name, bound in (("lo", lo), ("hi", hi)):
        if isinstance(bound, bool) or not isinstance(bound, numbers.Real):
            raise TypeError(f"{name} must be a real number. Received: {name}={bound!r}")
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def format_estimate(value: float | None, ci: Sequence[float | None] | None = None, *, digits: int = 3,
                    ci_digits: int = 2) -> str:
    """A point estimate with its interval, as every report prints it: ``"0.812 [0.70, 0.90]"``.

    Args:
        value: the estimate, or ``None`` (printed ``"–"``, an en dash, with no interval).
        ci: ``(lo, hi)`` (a list, tuple, :class:`CI` or the ``ci95`` entry of a result record), or
            ``None``; an empty interval or one with a ``None`` bound prints no brackets.
        digits: decimals of the estimate.
        ci_digits: decimals of the interval's bounds.

    Returns:
        The text.

    Raises:
        TypeError: a ``value`` or bound that is not a real number.
        ValueError: a ``ci`` with fewer than two bounds, or negative or non-integer digits.
    """
    digits = _check_digits(digits, "digits")
    ci_digits = _check_digits(ci_digits, "ci_digits")
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"value must be a real number or None. Received: value={value!r}")
    text = f"{value:.{digits}f}"
    if ci is None or len(ci) == 0:
        return text
    if len(ci) < 2:
        raise ValueError(f"ci must be a (lo, hi) pair or None. Received: ci={ci!r}")
    lo, hi = ci[0], ci[1]
    if lo is None or hi is None:
        return text
    return f"{text} {format_interval(lo, hi, digits=ci_digits)}"


def _check_digits(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer. Received: {name}={value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------
def brier_score(y_true: Any, y_prob: Any, *, positive: int = 1) -> float:
    """Brier score (lower is better).

    Binary: mean of (p_positive - y_positive)^2, range [0, 1] (``sklearn.metrics.brier_score_loss``).
    Multi-class: mean over images of the squared error summed over the one-hot classes, range
    [0, 2] (the original Brier score; scikit-learn's multi-class default).

    Args:
        y_true: (N,) int labels.
        y_prob: (N,) / (N, 1) positive-class probability or (N, C) probabilities.
        positive: positive class of a binary task.
    """
    y, p, _ = _inputs(y_true, y_prob, positive)
    onehot = np.eye(p.shape[1])[y]
    if p.shape[1] == 2:
        return float(np.mean((p[:, positive] - onehot[:, positive]) ** 2))
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def _bins(conf: np.ndarray, n_bins: int, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(n_bins, (int, np.integer)) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer. Received: n_bins={n_bins!r}")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.unique(np.quantile(conf, np.linspace(0.0, 1.0, n_bins + 1)))
        if edges.size < 2:
            edges = np.array([conf[0], conf[0]])
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile'. Received: strategy={strategy!r}")
    # Bins are [lo, hi) except the last, which is closed. Uniform bins use floor(conf * n_bins)
    # (rounded first) so that 0.3 falls in [0.3, 0.4) despite float edges.
    if strategy == "uniform":
        idx = np.floor(np.round(conf * n_bins, 9)).astype(np.int64)
    else:
        idx = np.searchsorted(edges, conf, side="right") - 1
    idx = np.clip(idx, 0, edges.size - 2)
    return edges, idx


def _top_label(y_true, y_prob):
    y, p, _ = _inputs(y_true, y_prob, 1)
    return np.max(p, axis=1), (np.argmax(p, axis=1) == y).astype(np.float64)


def reliability_curve(
    y_true: Any, y_prob: Any, *, n_bins: int = 10, strategy: str = "uniform"
) -> pd.DataFrame:
    """Top-label reliability curve: accuracy against confidence per confidence bin.

    Confidence is the largest class probability (for a (N,) binary input, max(p, 1 - p)) and
    accuracy whether its class is the true one. Empty bins are kept with NaN means and count 0.

    Args:
        y_true: (N,) int labels.
        y_prob: (N,) / (N, 1) positive-class probability or (N, C) probabilities.
        n_bins: number of bins.
        strategy: ``"uniform"`` (equal-width on [0, 1]) or ``"quantile"`` (equal-count).

    Returns:
        DataFrame with columns ``bin_lo``, ``bin_hi``, ``mean_confidence``, ``accuracy``, ``count``.
    """
    conf, correct = _top_label(y_true, y_prob)
    edges, idx = _bins(conf, n_bins, strategy)
    k = edges.size - 1
    count = np.bincount(idx, minlength=k)
    return pd.DataFrame({
        "bin_lo": edges[:-1],
        "bin_hi": edges[1:],
        "mean_confidence": _div(np.bincount(idx, conf, minlength=k), count),
        "accuracy": _div(np.bincount(idx, correct, minlength=k), count),
        "count": count.astype(np.int64),
    })


def expected_calibration_error(
    y_true: Any, y_prob: Any, *, n_bins: int = 10, strategy: str = "uniform"
) -> float:
    """Top-label expected calibration error: sum over bins of (n_bin / N) |accuracy - confidence|.

    Args:
        y_true, y_prob, n_bins, strategy: as for :func:`reliability_curve`.

    Returns:
        ECE in [0, 1].
    """
    curve = reliability_curve(y_true, y_prob, n_bins=n_bins, strategy=strategy)
    used = curve[curve["count"] > 0]
    gap = np.abs(used["accuracy"] - used["mean_confidence"]) * used["count"]
    return float(gap.sum() / used["count"].sum())


# --------------------------------------------------------------------------------------------
# Ensembles, folds, patients
# --------------------------------------------------------------------------------------------
def _prob_stack(prob_list) -> np.ndarray:
    if isinstance(prob_list, np.ndarray) or not isinstance(prob_list, Sequence) or not prob_list:
        raise ValueError(
            "prob_list must be a non-empty list of (N, C) probability arrays, one per model. "
            f"Received: prob_list of type {type(prob_list).__name__}"
        )
    arrs = []
    for a in prob_list:
        a = np.asarray(a, dtype=np.float64)
        if a.ndim == 2 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim == 1:
            a = np.stack([1.0 - a, a], axis=1)
        arrs.append(a)
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1 or arrs[0].ndim != 2:
        raise ValueError(f"All arrays in prob_list must share one (N, C) shape. Received: shapes {sorted(shapes)}")
    return np.stack(arrs)  # (M, N, C)


def soft_vote(prob_list: Sequence[Any]) -> np.ndarray:
    """Mean of the models' class probabilities.

    Args:
        prob_list: M arrays of shape (N, C) (or (N,) positive-class probabilities).

    Returns:
        (N, C) float64 mean probabilities.
    """
    return _prob_stack(prob_list).mean(axis=0)


def majority_vote(
    prob_list: Sequence[Any], *, tie_break: str = "mean_prob"
) -> tuple[np.ndarray, np.ndarray]:
    """Hard majority vote of the models' argmax predictions (study 01, E6).

    Args:
        prob_list: M arrays of shape (N, C) (or (N,) positive-class probabilities).
        tie_break: among classes with the most votes, ``"mean_prob"`` picks the one with the
            highest mean probability over the models, ``"lowest"`` the lowest class index.

    Returns:
        ``(y_pred, vote_fraction)``: (N,) int64 predictions and (N,) the fraction of models
        that voted for the predicted class.
    """
    if tie_break not in ("mean_prob", "lowest"):
        raise ValueError(f"tie_break must be 'mean_prob' or 'lowest'. Received: tie_break={tie_break!r}")
    stack = _prob_stack(prob_list)
    m, _, c = stack.shape
    votes = np.eye(c)[np.argmax(stack, axis=2)].sum(axis=0)  # (N, C)
    tied = votes == votes.max(axis=1, keepdims=True)
    if tie_break == "mean_prob":
        y_pred = np.argmax(np.where(tied, stack.mean(axis=0), -np.inf), axis=1)
    else:
        y_pred = np.argmax(tied, axis=1)
    frac = votes[np.arange(votes.shape[0]), y_pred] / m
    return y_pred.astype(np.int64), frac


def aggregate_folds(
    fold_metrics: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Summarise k-fold results (study 01, E7): mean, sample std (ddof=1), min, max, n per key.

    NaN / None values (a metric undefined in a fold) are left out and ``n`` counts the rest;
    ``std`` is NaN with fewer than two values.

    Args:
        fold_metrics: one metric dict per fold.
        keys: metrics to aggregate; default every numeric (non-bool) scalar key present in all folds.

    Returns:
        ``{key: {"mean", "std", "min", "max", "n"}}``.
    """
    if isinstance(fold_metrics, Mapping) or not fold_metrics:
        raise ValueError(f"fold_metrics must be a non-empty list of dicts. Received: {fold_metrics!r:.80}")

    def numeric(v):
        return v is None or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool))

    if keys is None:
        keys = [k for k in fold_metrics[0] if all(k in f and numeric(f[k]) for f in fold_metrics)]
    out = {}
    for key in keys:
        vals = []
        for i, fold in enumerate(fold_metrics):
            if key not in fold or not numeric(fold[key]):
                raise ValueError(f"Fold {i} has no numeric {key!r}. Received: keys={sorted(fold)}")
            vals.append(np.nan if fold[key] is None else float(fold[key]))
        v = np.asarray(vals)
        v = v[~np.isnan(v)]
        n = int(v.size)
        out[key] = {
            "mean": float(v.mean()) if n else math.nan,
            "std": float(v.std(ddof=1)) if n > 1 else math.nan,
            "min": float(v.min()) if n else math.nan,
            "max": float(v.max()) if n else math.nan,
            "n": n,
        }
    return out


def image_to_patient(
    y_true: Any, y_prob: Any, groups: Any, *, how: str = "mean"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aggregate image predictions to one prediction per patient (group).

    Args:
        y_true: (N,) int labels; all images of a group must share one label.
        y_prob: (N,) positive-class probability or (N, C) probabilities (shape is kept).
        groups: (N,) group ids.
        how: ``"mean"``, ``"median"`` or ``"max"`` of the probabilities per group. For (N, C)
            inputs, median and max rows are renormalised to sum to 1.

    Returns:
        ``(y_true_g, y_prob_g, group_ids)`` ordered by sorted group id.

    Raises:
        ValueError: if a group holds conflicting labels, or on malformed inputs.
    """
    if how not in ("mean", "median", "max"):
        raise ValueError(f"how must be 'mean', 'median' or 'max'. Received: how={how!r}")
    y = _labels(y_true)
    raw = np.asarray(y_prob, dtype=np.float64)
    _probs(raw, y.size, 1)  # validation only
    if groups is None:
        raise ValueError("groups must be given (one id per image). Received: groups=None")
    ids, inv = _group_index(groups, y.size)
    y_g = _group_labels(y, inv, ids.size)
    order = np.argsort(inv, kind="mergesort")
    starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
    vals = raw[order]
    if how == "mean":
        agg = np.add.reduceat(vals, starts, axis=0) / np.bincount(inv)[(...,) + (None,) * (vals.ndim - 1)]
    elif how == "max":
        agg = np.maximum.reduceat(vals, starts, axis=0)
    else:
        agg = np.stack([np.median(part, axis=0) for part in np.split(vals, starts[1:])])
    if how != "mean" and agg.ndim == 2 and agg.shape[1] > 1:
        agg = agg / agg.sum(axis=1, keepdims=True)
    return y_g, agg, ids


# --------------------------------------------------------------------------------------------
# metrics.json
# --------------------------------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy -> Python, NaN/inf -> None, tuples -> lists, paths -> str (metrics.json,
    model sidecars, ``osteo-tf evaluate``).

    Raises:
        TypeError: for any other type (nothing is stringified silently).
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Value is not JSON-serialisable. Received: {type(obj).__name__} {obj!r:.80}")


def result_record(
    *,
    experiment: str,
    model: str,
    protocol: str,
    y_true: Any,
    y_prob: Any,
    groups: Any = None,
    class_names: Sequence[str],
    positive: int | None = None,
    threshold: float = 0.5,
    threshold_rule: str | None = None,
    train_seconds: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One entry of metrics.json ``results``, JSON-safe (plain floats, NaN -> None).

    Binary tasks report the metrics of :func:`binary_metrics` for ``positive`` (default the
    last class). Multi-class tasks report macro averages: ``sensitivity`` = macro recall
    (= balanced accuracy), ``specificity`` = macro one-vs-rest specificity, ``ppv``/``npv``
    macro, ``f1`` = macro F1, ``auc``/``pr_auc`` macro one-vs-rest, plus ``per_class``; when
    ``positive`` is given a ``one_vs_rest`` block is added. ``ci95`` holds patient-level
    (``groups``) percentile-bootstrap 95% intervals of the headline metrics; ``ci`` describes
    the method and how many resamples each metric skipped. ``n_boot=0`` skips the bootstrap.

    Args:
        experiment: e.g. ``"E4"``.
        model: registry name, e.g. ``"resnet50"``.
        protocol: ``"clean"`` or ``"paper"`` (other values are accepted with a warning).
        y_true: (N,) int test labels.
        y_prob: test probabilities (see module conventions).
        groups: (N,) patient ids of the test images, or None (one patient per image).
        class_names: one name per class.
        positive: positive class index (binary default 1).
        threshold: binary decision threshold (the model's operating point, e.g. from
            :func:`operating_point` on the validation split); the headline metrics and their
            CIs are at it. Binary records also hold ``"at_0.5"``: the threshold-dependent
            metrics at 0.5.
        threshold_rule: how ``threshold`` was chosen (recorded as ``threshold_rule``; default
            ``"fixed 0.5"`` / ``"given"``). Multi-class records decide by argmax:
            ``threshold`` None, ``threshold_rule`` ``"argmax"``.
        train_seconds: wall-clock training time, or None.
        n_boot: bootstrap resamples (0 disables the CI).
        seed: bootstrap seed.
        extra: more JSON-able fields; may not overwrite computed keys.

    Returns:
        The record dict.
    """
    for arg, val in (("experiment", experiment), ("model", model), ("protocol", protocol)):
        if not isinstance(val, str) or not val:
            raise ValueError(f"{arg} must be a non-empty string. Received: {arg}={val!r}")
    if protocol not in PROTOCOLS:
        warnings.warn(f"protocol is usually one of {PROTOCOLS}; got {protocol!r}.", stacklevel=2)
    if train_seconds is not None and not isinstance(train_seconds, (int, float, np.number)):
        raise ValueError(f"train_seconds must be a number or None. Received: train_seconds={train_seconds!r}")
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer. Received: n_boot={n_boot!r}")
    y, p, names = _inputs(y_true, y_prob, positive, class_names)
    binary = p.shape[1] == 2
    pos = (1 if positive is None else int(positive)) if binary else positive
    m = classification_metrics(y, p, class_names=names, positive=pos, threshold=threshold)
    ids, _ = _group_index(groups, y.size)
    rec: dict[str, Any] = {"experiment": experiment, "model": model, "protocol": protocol}
    rec.update({k: m[k] for k in HEADLINE})
    ci95: dict[str, Any] = {}
    skipped: dict[str, int] = {}
    if n_boot:
        # The record keeps the skipped-resample counts (rec["ci"]["skipped"]); a warning per
        # record would only clutter reports with small test sets.
        with quiet(BOOTSTRAP_SKIPPED):
            cis = bootstrap_ci(y, p, groups=groups, metrics=CI_METRICS, n_boot=n_boot, seed=seed,
                               positive=pos if binary else None, threshold=threshold)
        ci95 = {k: [v[0], v[1]] for k, v in cis.items()}
        skipped = {k: v.n_skipped for k, v in cis.items() if v.n_skipped}
    rec["ci95"] = ci95
    rec["train_seconds"] = None if train_seconds is None else float(train_seconds)
    rec.update(
        n_test_images=int(y.size),
        n_test_groups=int(ids.size),
        class_names=names,
        positive=names[pos] if binary else (None if pos is None else names[pos]),
        balanced_accuracy=m["balanced_accuracy"],
        ppv=m["ppv"], npv=m["npv"], pr_auc=m["pr_auc"],
        brier=m["brier"],
        ece=expected_calibration_error(y, p),
        confusion_matrix=m["confusion_matrix"],
        per_class=m["per_class"],
        ci={"method": "percentile bootstrap, resampling "
                      + ("patients (groups)" if groups is not None else "images"),
            "n_boot": int(n_boot), "seed": int(seed), "level": 0.95, "skipped": skipped},
    )
    if binary:
        rec.update({k: m[k] for k in ("tp", "fp", "tn", "fn", "prevalence", "threshold")})
    elif "one_vs_rest" in m:
        rec["one_vs_rest"] = m["one_vs_rest"]
    rec.update(_decision_fields(y, p, pos, names, binary, threshold, threshold_rule))
    if extra:
        clash = sorted(set(extra) & set(rec))
        if clash:
            raise ValueError(f"extra may not overwrite computed keys. Received: extra keys {clash}")
        rec.update(extra)
    return jsonable(rec)


AT_DEFAULT_KEYS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "ppv", "npv")
"""The threshold-dependent metrics a binary record repeats at 0.5 (``record["at_0.5"]``)."""


def _decision_fields(y, p, pos, names, binary: bool, threshold: float, rule: str | None) -> dict[str, Any]:
    """``threshold``, ``threshold_rule`` and (binary) the metrics at 0.5 of one record."""
    if not binary:
        return {"threshold": None, "threshold_rule": "argmax"}
    at = binary_metrics(y, p, positive=pos, threshold=0.5, class_names=names)
    default_rule = "fixed 0.5" if float(threshold) == 0.5 else "given"
    return {"threshold": float(threshold), "threshold_rule": rule or default_rule,
            "at_0.5": {"threshold": 0.5, **{k: at[k] for k in AT_DEFAULT_KEYS}}}


def operating_point(y_true: Any = None, y_prob: Any = None, *, positive: int = 1,
                    class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The decision rule of a trained model, chosen on its VALIDATION split (never on test).

    Binary: the threshold on the positive-class probability that maximises Youden's J
    (sensitivity + specificity - 1) on the validation images; candidates are the validation
    scores themselves (predict positive when p >= threshold), ties broken towards 0.5. Without
    validation data (``y_true`` None or empty), or when it holds one class only, the rule is
    the fixed 0.5 and says why. More than two classes: argmax (``threshold`` None).

    Args:
        y_true: (N,) int validation labels, or None.
        y_prob: validation probabilities (module conventions), or None.
        positive: the positive class of a binary task.
        class_names: optional names (their count decides binary vs multi-class when there is
            no validation data).

    Returns:
        ``{"threshold": float | None, "rule": str, "n_val": int, "youden_j": float | None}``.
    """
    n_classes = len(class_names) if class_names is not None else None
    if y_true is None or y_prob is None or len(np.asarray(y_true)) == 0:
        if n_classes is not None and n_classes > 2:
            return {"threshold": None, "rule": "argmax", "n_val": 0, "youden_j": None}
        return {"threshold": 0.5, "rule": "fixed 0.5 (no validation split)", "n_val": 0, "youden_j": None}
    y, p, _ = _inputs(y_true, y_prob, positive, class_names)
    if p.shape[1] != 2:
        return {"threshold": None, "rule": "argmax", "n_val": int(y.size), "youden_j": None}
    score = p[:, positive]
    is_pos = y == positive
    if is_pos.all() or not is_pos.any():
        return {"threshold": 0.5, "rule": "fixed 0.5 (the validation split holds one class)",
                "n_val": int(y.size), "youden_j": None}
    cand = np.unique(score)
    pred = score[None, :] >= cand[:, None]
    sens = (pred & is_pos).sum(axis=1) / is_pos.sum()
    spec = (~pred & ~is_pos).sum(axis=1) / (~is_pos).sum()
    j = sens + spec - 1.0
    best = np.flatnonzero(np.isclose(j, j.max(), rtol=0, atol=1e-12))
    k = best[np.argmin(np.abs(cand[best] - 0.5))]
    return {"threshold": float(cand[k]), "rule": "Youden's J on the validation split", "n_val": int(y.size),
            "youden_j": float(j[k])}


def _validate_document(doc: Mapping[str, Any]) -> None:
    if not isinstance(doc, Mapping):
        raise TypeError(f"doc must be a dict. Received: {type(doc).__name__}")
    missing = [k for k in DOCUMENT_KEYS if k not in doc]
    if missing:
        raise ValueError(f"metrics document lacks keys {missing}. Received: keys={sorted(doc)}")
    if not isinstance(doc["data"], Mapping) or any(k not in doc["data"] for k in DATA_KEYS):
        raise ValueError(f"data must be a dict with keys {list(DATA_KEYS)}. Received: data={doc['data']!r:.200}")
    if not isinstance(doc["versions"], Mapping):
        raise ValueError(f"versions must be a dict. Received: versions={doc['versions']!r}")
    for i, r in enumerate(doc["results"]):
        miss = [k for k in RESULT_KEYS if k not in r]
        if miss:
            raise ValueError(f"results[{i}] lacks keys {miss}. Received: keys={sorted(r)}")
    for i, r in enumerate(doc["paper"]):
        if not isinstance(r, Mapping) or "experiment" not in r or "model" not in r:
            raise ValueError(f"paper[{i}] needs 'experiment' and 'model'. Received: {r!r:.200}")


def metrics_document(
    *,
    study: str,
    profile: str,
    seed: int,
    data: Mapping[str, Any],
    versions: Mapping[str, str],
    results: Sequence[Mapping[str, Any]],
    paper: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble and validate a metrics.json document (the layout every study run writes).

    Args:
        study: study id, e.g. ``"01-calcaneus-augmentation"``.
        profile: ``smoke`` / ``quick`` / ``full``.
        seed: the run's seed.
        data: ``source``, ``n_images``, ``n_groups``, ``classes`` (name -> count) and
            ``label_provenance`` (more keys allowed, e.g. per-split counts).
        versions: library versions (tensorflow, keras, osteo_tf, ...).
        results: records from :func:`result_record`.
        paper: the paper's reference rows, each with ``experiment`` and ``model`` and metric
            values as fractions (0.9902, not 99.02).
        extra: more top-level fields (may not overwrite the required ones).

    Returns:
        The JSON-safe document.

    Raises:
        ValueError: if a required key is missing.
    """
    for arg, val in (("study", study), ("profile", profile)):
        if not isinstance(val, str) or not val:
            raise ValueError(f"{arg} must be a non-empty string. Received: {arg}={val!r}")
    doc = {"study": study, "profile": profile, "seed": seed, "data": dict(data),
           "versions": dict(versions), "results": list(results), "paper": list(paper)}
    if extra:
        clash = sorted(set(extra) & set(doc))
        if clash:
            raise ValueError(f"extra may not overwrite required keys. Received: extra keys {clash}")
        doc.update(extra)
    _validate_document(doc)
    return jsonable(doc)


def write_metrics_json(path: str | os.PathLike, doc: Mapping[str, Any]) -> Path:
    """Validate ``doc`` and write it atomically as indented JSON (NaN -> null).

    Returns:
        The written path.
    """
    _validate_document(doc)
    text = json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metrics_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a metrics.json (nulls stay ``None``)."""
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    _validate_document(doc)
    return doc


def _norm_model(name: Any) -> str:
    return str(name).lower().replace("-", "").replace("_", "").replace(" ", "")


def compare_to_paper(
    results: Sequence[Mapping[str, Any]],
    paper: Sequence[Mapping[str, Any]],
    *,
    keys: Sequence[str] = HEADLINE,
) -> pd.DataFrame:
    """Put our results beside the paper's numbers, one row per (experiment, model, protocol, metric).

    Rows match on ``experiment`` and the model name compared case-insensitively with ``-``,
    ``_`` and spaces removed (``ResNet-18`` == ``resnet18``). Paper keys ``recall`` and
    ``precision`` read our ``sensitivity`` and ``ppv``. A paper row with no matching result
    appears with ``ours`` NaN and ``protocol`` None.

    Args:
        results: records from :func:`result_record` (or read back from metrics.json).
        paper: reference rows (fractions, not percentages).
        keys: metrics to compare (only those the paper row reports appear).

    Returns:
        DataFrame with columns experiment, model, protocol, metric, ours, paper, difference
        (ours - paper), ci_lo, ci_hi, paper_in_ci (True/False, or None without a CI).
    """
    if isinstance(keys, str):
        keys = (keys,)
    rows = []
    by_key: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in results:
        by_key.setdefault((str(r["experiment"]), _norm_model(r["model"])), []).append(r)
    for ref in paper:
        if "experiment" not in ref or "model" not in ref:
            raise ValueError(f"Each paper row needs 'experiment' and 'model'. Received: {ref!r:.200}")
        matches = by_key.get((str(ref["experiment"]), _norm_model(ref["model"]))) or [None]
        for key in keys:
            if ref.get(key) is None:
                continue
            pv = float(ref[key])
            if pv > 1.0:
                warnings.warn(f"Paper value {key}={pv} looks like a percentage; store fractions.", stacklevel=2)
            ours_key = PAPER_ALIASES.get(key, key)
            for r in matches:
                ov, lo, hi, inside = math.nan, math.nan, math.nan, None
                if r is not None:
                    v = r.get(key, r.get(ours_key))
                    ov = math.nan if v is None else float(v)
                    ci = (r.get("ci95") or {}).get(key) or (r.get("ci95") or {}).get(ours_key)
                    if ci is not None and None not in ci:
                        lo, hi = float(ci[0]), float(ci[1])
                        inside = bool(lo <= pv <= hi)
                rows.append({
                    "experiment": ref["experiment"], "model": ref["model"],
                    "protocol": None if r is None else r.get("protocol"), "metric": key,
                    "ours": ov, "paper": pv, "difference": ov - pv,
                    "ci_lo": lo, "ci_hi": hi, "paper_in_ci": inside,
                })
    cols = ["experiment", "model", "protocol", "metric", "ours", "paper", "difference",
            "ci_lo", "ci_hi", "paper_in_ci"]
    return pd.DataFrame(rows, columns=cols)
