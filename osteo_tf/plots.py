"""Figures for the study reports (matplotlib + seaborn). Every function returns the Figure."""

from __future__ import annotations

from typing import Sequence

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
        x, _ = pipeline.load_for_inference(pick["path"].tolist(), image_size=size, channels=1)
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

    x, _ = pipeline.load_for_inference([path], image_size=size, channels=1)
    img = x[0, ..., 0]
    variants = augment.study01_variants(img)
    images = [img, *variants.values(), *[augment.sharpen(v) for v in variants.values()]]
    titles = ["original", *variants.keys(), *[f"{k} +sharpen" for k in variants]]
    return image_row(images, titles)


def confusion_matrices(records: Sequence[dict], class_names: Sequence[str], *, max_cols: int = 4):
    """Confusion matrices (rows = true class) of result records side by side."""
    import seaborn as sns

    plt = _plt()
    n = max(len(records), 1)
    cols = min(n, max_cols)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
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


def overlay(image: np.ndarray, heat: np.ndarray | None = None, *, mask: np.ndarray | None = None, title: str = "",
            ax=None, alpha: float = 0.45):
    """A radiograph with a heatmap and/or a mask boundary on top."""
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(3, 3))
    else:
        fig = ax.figure
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    if heat is not None:
        ax.imshow(heat, cmap="jet", alpha=alpha, vmin=0, vmax=1)
    if mask is not None:
        ax.contour(mask.astype(float), levels=[0.5], colors="yellow", linewidths=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return fig
