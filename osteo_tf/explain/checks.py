"""Sanity checks of explanations: the pointing game and the model-parameter randomization test.

:func:`pointing_game` measures how much of a map's energy falls inside a known region of
interest; :func:`randomization_check` (Adebayo et al. 2018) compares the Grad-CAM maps of a
trained model with those of a copy whose kernels are re-drawn: a faithful explanation changes.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np

from osteo_tf.explain._common import check_batch
from osteo_tf.explain.gradcam import CamExplainer

_KERNEL_RANK_MIN = 2  # variables of rank >= 2 are kernels (conv, depthwise, pointwise, dense)


def parse_bbox(bbox: str | Sequence[float]) -> tuple[int, int, int, int]:
    """``"x0,y0,x1,y1"`` or a 4-sequence -> ints (half-open: ``image[y0:y1, x0:x1]``)."""
    vals = [float(v) for v in bbox.split(",")] if isinstance(bbox, str) else [float(v) for v in bbox]
    if len(vals) != 4 or not (vals[2] > vals[0] and vals[3] > vals[1]):
        raise ValueError(f"bbox must be x0,y0,x1,y1 with x1 > x0 and y1 > y0. Received: bbox={bbox!r}")
    return tuple(int(round(v)) for v in vals)  # type: ignore[return-value]


def pointing_game(cam: np.ndarray, bbox: str | Sequence[float], *,
                  bbox_shape: tuple[int, int] | None = None) -> dict[str, float]:
    """How much of a map's energy falls inside a region of interest.

    Args:
        cam: (H, W) map, non-negative.
        bbox: ``"x0,y0,x1,y1"`` (half-open pixel box) or a 4-sequence.
        bbox_shape: (height, width) of the image the box refers to, when it differs from the
            map's (the box is rescaled).

    Returns:
        ``energy_in_roi`` (share of the map's sum inside the box), ``area_share`` (the box's
        share of the image), ``ratio`` (energy / area: > 1 = the map concentrates on the ROI;
        NaN for an all-zero map) and ``hit`` (1.0 if the map's maximum is inside the box).
    """
    m = np.asarray(cam, dtype=np.float64)
    if m.ndim != 2 or m.size == 0 or not np.all(np.isfinite(m)) or m.min() < 0:
        raise ValueError(f"cam must be a finite non-negative (H, W) map. Received: shape={m.shape}")
    x0, y0, x1, y1 = parse_bbox(bbox)
    if bbox_shape is not None:
        sy, sx = m.shape[0] / bbox_shape[0], m.shape[1] / bbox_shape[1]
        x0, x1 = int(np.floor(x0 * sx)), int(np.ceil(x1 * sx))
        y0, y1 = int(np.floor(y0 * sy)), int(np.ceil(y1 * sy))
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, m.shape[1]), min(y1, m.shape[0])
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"bbox lies outside the map of shape {m.shape}. Received: bbox={bbox!r}")
    total = m.sum()
    area = (x1 - x0) * (y1 - y0) / m.size
    energy = float(m[y0:y1, x0:x1].sum() / total) if total > 0 else float("nan")
    iy, ix = np.unravel_index(int(np.argmax(m)), m.shape)
    return {
        "energy_in_roi": energy,
        "area_share": float(area),
        "ratio": energy / area if total > 0 else float("nan"),
        "hit": float(y0 <= iy < y1 and x0 <= ix < x1),
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps; NaN when either is constant (undefined, not a pass)."""
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _nanmean(values) -> float:
    """Mean of the defined values; NaN when none is defined."""
    v = np.asarray(values, dtype=float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def kernel_layers(model: Any) -> list[str]:
    """Names of the layers with kernels (conv, depthwise, separable, dense), input to output."""
    return [l.name for l in model.layers if any(len(w.shape) >= _KERNEL_RANK_MIN for w in l.weights)]


def _randomize(layer: Any, rng: np.random.Generator) -> None:
    """Re-draw every kernel of ``layer`` ~ N(0, std of the trained kernel); biases kept."""
    new = []
    for w in layer.get_weights():
        if w.ndim >= _KERNEL_RANK_MIN:
            std = float(w.std()) or 0.05
            w = rng.normal(0.0, std, size=w.shape).astype(w.dtype)
        new.append(w)
    layer.set_weights(new)


def randomization_check(
    model: Any,
    images: Any,
    *,
    layers: Literal["all", "cascade"] = "all",
    seed: int = 0,
    method: str = "gradcam",
    class_index: int | Sequence[int] | None = None,
    penultimate_layer: str | None = None,
) -> dict[str, Any]:
    """Model-parameter randomization test (Adebayo et al. 2018) on a CLONE of ``model``.

    The maps of the trained model are compared (Spearman rank correlation, per image) with the
    maps of a clone whose kernels (every conv / depthwise / separable / dense layer) are
    re-drawn from N(0, std of the trained kernel). A faithful explanation changes: a map that
    survives randomization explains the image (edges, intensity), not the model.

    Args:
        model: the trained classifier (never modified).
        images: (N, H, W, C) model-ready batch.
        layers: ``"all"`` (every kernel layer at once) or ``"cascade"`` (from the output layer
            down, one more layer per step, as in the paper).
        seed: seeds the re-drawn weights.
        method: ``"gradcam"`` or ``"gradcam++"``.
        class_index: explained class; ``None`` = the TRAINED model's predicted class (kept
            fixed for the randomized models).
        penultimate_layer: feature layer (``None`` = :func:`~osteo_tf.explain.gradcam.last_conv_layer`).

    Returns:
        ``spearman``: (N,) per image for the fully randomized model; ``mean``: their mean;
        ``self_spearman``: mean correlation of the trained maps with the same maps recomputed on
        an un-randomized clone (must be 1.0: the check itself is deterministic); ``cascade``
        (``layers="cascade"`` only): a list of ``{"layer", "randomized", "mean"}`` per step;
        ``layers_randomized``: the kernel layers re-drawn (top first).

    Raises:
        ValueError: bad ``layers``.
    """
    import keras

    if layers not in ("all", "cascade"):
        raise ValueError(f'layers must be "all" or "cascade". Received: layers={layers!r}')
    x = check_batch(images)
    base = CamExplainer(model, penultimate_layer=penultimate_layer)
    trained = base.explain(x, class_index=class_index, method=method)
    classes = trained.class_index
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    again = CamExplainer(clone, penultimate_layer=trained.penultimate_layer).explain(
        x, class_index=classes, method=method)
    self_corr = _nanmean([_spearman(a, b) for a, b in zip(trained.maps, again.maps)])
    rng = np.random.default_rng(seed)
    order = kernel_layers(clone)[::-1]  # top (output) first
    steps = [order[: k + 1] for k in range(len(order))] if layers == "cascade" else [order]
    cascade, per_image, done = [], np.zeros(len(x)), set()
    for chosen in steps:
        for name in chosen:
            if name not in done:
                _randomize(clone.get_layer(name), rng)
                done.add(name)
        rand = CamExplainer(clone, penultimate_layer=trained.penultimate_layer).explain(
            x, class_index=classes, method=method)
        per_image = np.array([_spearman(a, b) for a, b in zip(trained.maps, rand.maps)])
        cascade.append({"layer": chosen[-1], "randomized": len(chosen), "mean": _nanmean(per_image)})
    out: dict[str, Any] = {
        "spearman": per_image,
        "mean": _nanmean(per_image),
        "n_undefined": int(np.isnan(per_image).sum()),  # a constant map has no ranking to compare
        "self_spearman": self_corr,
        "layers_randomized": order,
        "backend": trained.backend,
    }
    if layers == "cascade":
        out["cascade"] = cascade
    return out
