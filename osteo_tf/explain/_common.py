"""Helpers shared by the explanation modules and the inference module (private).

They read a model's output layout and turn raw outputs into class probabilities, the same way
for Grad-CAM, LIME, the sanity checks and ``osteo_tf.inference``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def check_batch(images: Any, name: str = "images") -> np.ndarray:
    """A model-ready batch as float32 (N, H, W, C); one (H, W, C) image becomes a batch of one.

    Raises:
        ValueError: not 3-D or 4-D, empty, not numeric or not finite.
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[np.newaxis]
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a model-ready batch (N, H, W, C). Received: {name}.shape={x.shape}")
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite numbers. Received: dtype={x.dtype}")
    return x.astype(np.float32, copy=False)


def output_kind(model: Any) -> tuple[str, int]:
    """``("sigmoid", 2)`` for a single-unit output, ``("softmax", C)`` otherwise."""
    units = int(model.outputs[0].shape[-1])
    return ("sigmoid", 2) if units == 1 else ("softmax", units)


def probabilities(raw: Any) -> np.ndarray:
    """Model outputs -> (N, C) float64 class probabilities (a single sigmoid -> ``[1 - p, p]``)."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim == 1:
        raw = raw[:, None]
    if raw.shape[1] == 1:
        return np.concatenate([1.0 - raw, raw], axis=1)
    return raw
