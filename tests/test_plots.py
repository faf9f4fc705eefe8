"""Tests of the overlays in osteo_tf.plots: Grad-CAM maps and LIME masks drawn on a radiograph."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from _explain_helpers import grey  # noqa: E402

from osteo_tf import explain, plots  # noqa: E402


def test_overlays_png_and_figure(tmp_path):
    from PIL import Image

    image = grey(32)
    cam = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    p = plots.save_overlay_png(image, cam, tmp_path / "a" / "cam.png")
    arr = np.asarray(Image.open(p))
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    mask = np.zeros((32, 32), bool)
    mask[8:16, 8:16] = True
    q = plots.save_overlay_png(image, mask, tmp_path / "mask.png", segments=np.arange(1024).reshape(32, 32) // 256)
    marr = np.asarray(Image.open(q)).astype(int)
    assert marr[12, 12, 1] > marr[12, 12, 0]  # tinted green inside the mask
    assert marr[30, 30, 0] == marr[30, 30, 1] == marr[30, 30, 2]  # grey outside
    lime = explain.LimeResult(mask=mask, segments=np.zeros((32, 32), int), weights=np.ones(1), label=1,
                              score=0.5, probabilities=np.array([0.3, 0.7]), seed=0)
    fig = plots.overlay_figure(image, cam=cam, lime=lime, title="x")
    assert len(fig.axes) == 3
    fig.savefig(tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 0


def test_overlay_draws_on_a_given_axis_and_resizes_a_mask_nearest():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot(1, 1, 1)
    assert plots.overlay(grey(32), np.zeros((32, 32)), title="cam", ax=ax) is fig
    assert ax.get_title() == "cam" and len(ax.images) == 1
    mask = np.array([[True, False], [False, False]])
    rgb = plots.overlay_rgb(np.full((4, 4), 0.5), mask)
    assert rgb.shape == (4, 4, 3)
    assert np.all(rgb[:2, :2, 1] > rgb[:2, :2, 2])  # the top-left 2 x 2 block: green tint or yellow edge
    outside = np.ones((4, 4), bool)
    outside[:2, :2] = False
    assert np.all(rgb[outside] == 0.5)  # grey elsewhere


def test_overlay_rgb_stretches_model_scaled_images_and_ignores_nan():
    image = np.linspace(-1, 1, 16).reshape(4, 4)  # "tf"-scaled input
    rgb = plots.overlay_rgb(image)
    assert rgb.min() == 0.0 and rgb.max() == 1.0
    cam = np.full((4, 4), np.nan)
    out = plots.overlay_rgb(np.full((4, 4), 0.5), cam)
    assert np.all(np.isfinite(out))
