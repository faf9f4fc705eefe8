"""Figures for the study reports (matplotlib + seaborn), and overlays of explanations.

Every figure function returns the Figure; :func:`overlay_rgb` returns the overlay as an RGB
array and :func:`save_overlay_png` writes it as a PNG.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd


def _plt():
    import matplotlib.pyplot as plt

    return plt


def sample_grid(manifest: pd.DataFrame, *, n_per_class: int = 4, seed: int = 0, size: int = 128,
                label_col: str = "label"):
    """A grid of random images per class (rows = classes)."""
    from osteo_tf import pipeline

    plt = _plt()
    classes = sorted(manifest[label_col].unique())
    fig, axes = plt.subplots(len(classes), n_per_class, figsize=(2 * n_per_class, 2.1 * len(classes)), squeeze=False)
    rng = np.random.default_rng(seed)
    for r, c in enumerate(classes):
        rows = manifest[manifest[label_col] == c]
        pick = rows.iloc[rng.permutation(len(rows))[:n_per_class]]
        x, _ = pipeline.load_for_inference(pick["path"].tolist(), image_size=size)
        for k in range(n_per_class):
            ax = axes[r, k]
            ax.axis("off")
            if k < len(x):
                ax.imshow(x[k, ..., 0], cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"{c}", fontsize=8)
    fig.tight_layout()
    return fig


def image_row(images: Sequence[np.ndarray], titles: Sequence[str], *, cmap: str = "gray", suptitle: str | None = None):
    """One row of grey images with titles."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(images), figsize=(2.3 * len(images), 2.6), squeeze=False)
    for ax, img, title in zip(axes[0], images, titles):
        ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def study01_variants_figure(path: str, *, size: int = 128):
    """One source image and its study-01 augmentation variants (A) and sharpened copies (B)."""
    from osteo_tf import augment, pipeline

    x, _ = pipeline.load_for_inference([path], image_size=size)
    img = x[0, ..., 0]
    variants = augment.study01_variants(img)
    images = [img, *variants.values(), *[augment.sharpen(v) for v in variants.values()]]
    titles = ["original", *variants.keys(), *[f"{k} +sharpen" for k in variants]]
    return image_row(images, titles)


def _panel_grid(n_items: int, max_cols: int, *, panel_size: tuple[float, float], panels_per_item: int = 1):
    """A figure of ``n_items`` items, at most ``max_cols`` per row, each ``panels_per_item``
    panels of ``panel_size`` inches; every axis starts hidden (the caller shows those it draws).

    Returns:
        ``(figure, axes (rows, cols * panels_per_item), cols)``.
    """
    plt = _plt()
    n = max(n_items, 1)
    cols = min(n, max_cols)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, panels_per_item * cols, squeeze=False,
                             figsize=(panel_size[0] * panels_per_item * cols, panel_size[1] * rows))
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes, cols


def confusion_matrices(records: Sequence[dict], class_names: Sequence[str], *, max_cols: int = 4):
    """Confusion matrices (rows = true class) of result records side by side."""
    import seaborn as sns

    fig, axes, _ = _panel_grid(len(records), max_cols, panel_size=(3.2, 3.0))
    for ax, r in zip(axes.flat, records):
        ax.axis("on")
        cm = np.asarray(r["confusion_matrix"])
        sns.heatmap(cm, annot=True, fmt="d", cbar=False, cmap="Blues", ax=ax,
                    xticklabels=class_names, yticklabels=class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{r['experiment']} {r['model']} ({r.get('protocol', '')})", fontsize=8)
    fig.tight_layout()
    return fig



def _curve_inputs(fit, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(y_true, y_prob, record)`` of a fit result (``.y_true``/``.y_prob``/``.record``) or a dict."""
    if isinstance(fit, dict):
        if "y_true" not in fit or "y_prob" not in fit:
            raise TypeError("fits must hold fit results (with y_true, y_prob and record) or dicts with 'y_true' "
                            f"and 'y_prob'. Received: a dict with keys {sorted(fit)}")
        y_true, y_prob, record = fit["y_true"], fit["y_prob"], fit.get("record", fit)
    elif hasattr(fit, "y_true") and hasattr(fit, "y_prob"):
        y_true, y_prob, record = fit.y_true, fit.y_prob, getattr(fit, "record", None) or {}
    else:
        raise TypeError("fits must hold fit results (with y_true, y_prob and record) or dicts with 'y_true' "
                        f"and 'y_prob'. Received: fits item of type {type(fit).__name__}")
    y = np.asarray(y_true).astype(np.int64).ravel()
    prob = np.asarray(y_prob, dtype=np.float64)
    if prob.ndim != 2 or prob.shape != (y.size, len(class_names)):
        raise ValueError(f"y_prob must be (n_images, {len(class_names)}) for {len(class_names)} class_names and "
                         f"{y.size} labels. Received: y_prob.shape={prob.shape}")
    return y, prob, record


def roc_pr_curves(fits, class_names: Sequence[str], *, max_cols: int = 2):
    """ROC and precision-recall curves of the test predictions of several fits, a pair per fit.

    A binary task draws the curves of its positive class (the record's ``positive``, else the
    second class); a task of three or more classes draws one-vs-rest curves, one per class. The
    legend gives each curve's ROC AUC or average precision (``sklearn.metrics.roc_auc_score`` and
    ``average_precision_score``, the definitions of the records' ``auc`` and ``pr_auc``). A class
    with no positive or no negative test image has no curve; the legend says so.
    The dashed lines are chance: the diagonal (ROC) and the class's prevalence (precision-recall).

    Args:
        fits: fit results (``osteo_tf.experiments.FitResult``: ``y_true``, ``y_prob`` and
            ``record``), or dicts with ``y_true``, ``y_prob`` and optionally ``record`` (or the
            record's ``experiment``/``model``/``protocol`` keys); a dict of fit results is taken
            by its values.
        class_names: one name per column of ``y_prob``.
        max_cols: fits per row (each fit takes two panels).

    Returns:
        The Figure.

    Raises:
        TypeError: an item of ``fits`` has no predictions.
        ValueError: ``y_prob`` does not match ``class_names`` and ``y_true``; ``max_cols`` < 1.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    if isinstance(max_cols, bool) or not isinstance(max_cols, (int, np.integer)) or max_cols < 1:
        raise ValueError(f"max_cols must be an integer >= 1. Received: max_cols={max_cols!r}")
    items = list(fits.values()) if isinstance(fits, Mapping) else list(fits)
    names = [str(c) for c in class_names]
    data = [_curve_inputs(f, names) for f in items]
    plt = _plt()
    fig, axes, cols = _panel_grid(len(data), int(max_cols), panel_size=(3.2, 3.1), panels_per_item=2)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (y, prob, record) in enumerate(data):
        roc_ax, pr_ax = axes[k // cols, 2 * (k % cols)], axes[k // cols, 2 * (k % cols) + 1]
        if len(names) == 2:
            positive = record.get("positive")
            classes = [names.index(positive) if positive in names else 1]
        else:
            classes = list(range(len(names)))
        roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        for j, c in enumerate(classes):
            hit = y == c
            if hit.all() or not hit.any():
                why = f"{names[c]}: no {'negative' if hit.all() else 'positive'} test image, no curve"
                roc_ax.plot([], [], " ", label=why)
                pr_ax.plot([], [], " ", label=why)
                continue
            colour = colours[j % len(colours)]
            fpr, tpr, _ = roc_curve(hit, prob[:, c])
            roc_ax.plot(fpr, tpr, color=colour, label=f"{names[c]} (AUC {roc_auc_score(hit, prob[:, c]):.2f})")
            precision, recall, _ = precision_recall_curve(hit, prob[:, c])
            pr_ax.plot(recall, precision, color=colour,
                       label=f"{names[c]} (AP {average_precision_score(hit, prob[:, c]):.2f})")
            pr_ax.axhline(float(hit.mean()), color=colour, lw=0.8, ls="--")
        title = f"{record.get('experiment', '')} {record.get('model', '')} ({record.get('protocol', '')})".strip()
        for ax, (xlabel, ylabel, kind) in ((roc_ax, ("false positive rate", "true positive rate", "ROC")),
                                           (pr_ax, ("recall", "precision", "precision-recall"))):
            ax.axis("on")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.set_title(f"{textwrap.shorten(title, 48, placeholder='...')}\n{kind}", fontsize=8)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="lower right" if ax is roc_ax else "lower left")
    fig.tight_layout()
    return fig


def protocol_gap(gap: pd.DataFrame, *, metric: str = "accuracy"):
    """Paired bars: paper-protocol vs clean-protocol metric per (experiment, model)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(gap) + 2), 3.2))
    if len(gap) == 0:
        ax.text(0.5, 0.5, "no paired runs", ha="center")
        return fig
    labels = [f"{e}\n{m}" for e, m in zip(gap["experiment"], gap["model"])]
    xs = np.arange(len(gap))
    ax.bar(xs - 0.2, gap[f"paper protocol {metric}"], 0.4, label="paper protocol (augment, then split)")
    ax.bar(xs + 0.2, gap[f"clean protocol {metric}"], 0.4, label="clean protocol (split, then augment)")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def training_curves(history: pd.DataFrame, *, title: str = ""):
    """Training and validation accuracy and loss per epoch."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, key in zip(axes, ("accuracy", "loss")):
        for col, style in ((key, "-"), (f"val_{key}", "--")):
            if col in history:
                ax.plot(np.arange(1, len(history) + 1), history[col], style, label=col)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def reliability_diagram(curves: dict[str, pd.DataFrame]):
    """Reliability curves (mean confidence vs accuracy) of several models."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for name, df in curves.items():
        df = df[df["count"] > 0]
        ax.plot(df["mean_confidence"], df["accuracy"], "o-", label=name, ms=3)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def bubble_chart(records: Sequence[dict], *, x: str = "sensitivity", y: str = "f1", size_key: str = "seconds_per_10_epochs"):
    """Study 04's chart: F1 against sensitivity, bubble area = training time."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    times = np.array([float(r.get(size_key) or 0) for r in records])
    scale = 1500 / max(times.max(), 1e-9) if len(times) else 1
    for r, t in zip(records, times):
        ax.scatter(r.get(x), r.get(y), s=max(t * scale, 20), alpha=0.5)
        ax.annotate(f"{r['model']} ({r['experiment']})", (r.get(x) or 0, r.get(y) or 0), fontsize=7)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{y} vs {x}; bubble area = {size_key}", fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# overlays of explanations (Grad-CAM maps, LIME masks) on a radiograph


def _grey01(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) -> (H, W) float64 for display; other ranges than [0, 1] min-max stretched."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        img = img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"image must be (H, W) grey. Received: image.shape={np.shape(image)}")
    lo, hi = float(img.min()), float(img.max())
    if lo < 0.0 or hi > 1.0:  # model-scaled input: show it min-max stretched
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img


def _fit_to(arr: np.ndarray, shape: tuple[int, int], interpolation: str) -> np.ndarray:
    """``arr`` (values in [0, 1]) resized to ``shape`` with ``osteo_tf.preprocessing.resize``."""
    if arr.shape == tuple(shape):
        return arr
    from osteo_tf.preprocessing import resize

    return resize(arr.astype(np.float32), tuple(int(s) for s in shape), interpolation=interpolation)


def overlay_rgb(image: np.ndarray, cam_or_mask: np.ndarray | None = None, *, alpha: float = 0.4,
                cmap: str = "jet", segments: np.ndarray | None = None) -> np.ndarray:
    """A radiograph with a Grad-CAM heatmap or a LIME mask on top, as an RGB array.

    Args:
        image: (H, W) grey in [0, 1] (other ranges are min-max stretched for display).
        cam_or_mask: (h, w) float map in [0, 1] (drawn as a ``cmap`` heatmap with ``alpha``;
            non-finite values count as 0) or a bool mask (LIME: tinted green, its boundary in
            yellow); resized to the image (bilinear for a map, nearest for a mask).
        alpha: heatmap opacity.
        cmap: matplotlib colormap name.
        segments: optional (h, w) superpixel labels whose boundaries are drawn thin (LIME).

    Returns:
        (H, W, 3) float in [0, 1].
    """
    import matplotlib

    grey = _grey01(image)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if cam_or_mask is None:
        return rgb
    arr = np.asarray(cam_or_mask)
    if arr.dtype == bool:
        from skimage.segmentation import find_boundaries

        mask = _fit_to(arr.astype(np.float64), grey.shape, "nearest") > 0.5
        if segments is not None:
            edges = find_boundaries(np.asarray(segments), mode="outer")
            rgb[_fit_to(edges.astype(np.float64), grey.shape, "nearest") > 0.5] = (0.55, 0.55, 0.55)
        rgb = np.where(mask[..., None], 0.6 * rgb + 0.4 * np.array([0.0, 1.0, 0.0]), rgb)
        rgb[find_boundaries(mask.astype(np.int64), mode="inner")] = (1.0, 1.0, 0.0)
        return np.clip(rgb, 0.0, 1.0)
    cam = _fit_to(np.clip(np.nan_to_num(arr.astype(np.float64)), 0.0, 1.0), grey.shape, "bilinear")
    heat = matplotlib.colormaps[cmap](cam)[..., :3]
    return np.clip((1.0 - alpha) * rgb + alpha * heat, 0.0, 1.0)


def overlay(image: np.ndarray, cam_or_mask: np.ndarray | None = None, *, segments: np.ndarray | None = None,
            title: str = "", ax=None, alpha: float = 0.4):
    """Draw :func:`overlay_rgb` on ``ax`` (a new 3 x 3 in figure when ``None``); returns the Figure."""
    if ax is None:
        fig, ax = _plt().subplots(figsize=(3, 3))
    else:
        fig = ax.figure
    ax.imshow(overlay_rgb(image, cam_or_mask, segments=segments, alpha=alpha), interpolation="nearest")
    ax.set_title(title)
    ax.set_axis_off()
    return fig


def overlay_figure(image: np.ndarray, cam: np.ndarray | None = None, lime=None, *, title: str | None = None,
                   cam_label: str = "Grad-CAM"):
    """The radiograph, then its Grad-CAM heatmap and/or LIME mask, side by side.

    Args:
        image: (H, W) grey in [0, 1].
        cam: (H, W) map in [0, 1] or ``None``.
        lime: an ``osteo_tf.explain.LimeResult`` (its ``mask``, ``segments`` and ``label`` are
            drawn) or ``None``.
        title: figure title.
        cam_label: title of the heatmap panel.

    Returns:
        ``matplotlib.figure.Figure`` (not registered with pyplot: display it in a notebook or
        ``fig.savefig(...)``).
    """
    from matplotlib.figure import Figure

    panels = [("image", None, None)]
    if cam is not None:
        panels.append((cam_label, cam, None))
    if lime is not None:
        panels.append((f"LIME (class {lime.label})", lime.mask, lime.segments))
    fig = Figure(figsize=(3.2 * len(panels), 3.4), layout="constrained")
    for i, (name, cam_or_mask, segments) in enumerate(panels):
        overlay(image, cam_or_mask, segments=segments, title=name, ax=fig.add_subplot(1, len(panels), i + 1))
    if title:
        fig.suptitle(title)
    return fig


def save_overlay_png(image: np.ndarray, cam_or_mask: np.ndarray | None, path: str | os.PathLike, *,
                     segments: np.ndarray | None = None, alpha: float = 0.4) -> Path:
    """Write :func:`overlay_rgb` as an 8-bit RGB PNG (parent folders created).

    Returns:
        The written path.
    """
    from PIL import Image

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    rgb = overlay_rgb(image, cam_or_mask, segments=segments, alpha=alpha)
    Image.fromarray(np.round(rgb * 255).astype(np.uint8), mode="RGB").save(out, format="PNG")
    return out


def study_forest(headline: Sequence[Mapping], claims: Sequence[Mapping] = (), *, title: str = "",
                 chance: float | None = None):
    """The index's forest plot of one study.

    Left: each headline row (``label``, ``metric``, ``value``, ``ci`` [lo, hi], ``paper`` or None)
    as our estimate with its 95% CI (blue) beside the paper's figure (red diamond), with chance
    (``chance``, e.g. 1/k) dashed. Right (when ``claims`` are given): each claim's paired effect
    (``claim``, ``metric``, ``effect``, ``ci95``, ``paper``) with its CI, zero dashed, the
    paper's difference as a red diamond.
    """
    plt = _plt()
    panels = [("headline: ours (95% CI) vs the paper", headline, False)]
    if claims:
        panels.append(("the claim: paired effect b - a (95% CI) vs the paper", claims, True))
    n = max(len(headline), len(claims), 1)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.8 * len(panels), 0.55 * n + 1.3), squeeze=False)
    for ax, (name, rows, is_effect) in zip(axes[0], panels):
        labels, paper_shown = [], False
        for i, row in enumerate(rows):
            y = len(rows) - 1 - i
            value = row.get("effect" if is_effect else "value")
            ci = row.get("ci95" if is_effect else "ci") or [None, None]
            if value is not None:
                lo = ci[0] if ci[0] is not None else value
                hi = ci[1] if ci[1] is not None else value
                ax.errorbar([value], [y], xerr=[[value - lo], [hi - value]], fmt="o", color="#1f5fa8", capsize=3,
                            label="ours (95% CI)" if i == 0 else None)
            if row.get("paper") is not None:
                ax.plot([row["paper"]], [y], "D", color="#c0392b", label=None if paper_shown else "paper")
                paper_shown = True
            text = row.get("claim" if is_effect else "label", "")
            label = textwrap.shorten(f"{text} [{row.get('metric', '')}]", 80, placeholder="...")
            labels.append(textwrap.fill(label, 40))
        ax.set_yticks(range(len(rows) - 1, -1, -1))
        ax.set_yticklabels(labels, fontsize=7)
        if is_effect:
            ax.axvline(0.0, color="grey", ls="--", lw=1)
        else:
            ax.set_xlim(0.0, 1.02)
            if chance is not None:
                ax.axvline(chance, color="grey", ls="--", lw=1, label=f"chance {chance:.2f}")
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
