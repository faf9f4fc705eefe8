"""Tests of osteo_tf.plots: overlays of Grad-CAM maps and LIME masks on a radiograph, ROC and PR curves."""

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


# ---------------------------------------------------------------------------------------------
# ROC and precision-recall curves


class _Fit:
    """What roc_pr_curves reads of an experiments.FitResult."""

    def __init__(self, y_true, y_prob, **record):
        self.y_true, self.y_prob = np.asarray(y_true), np.asarray(y_prob)
        self.record = {"experiment": "E1", "model": "m", "protocol": "clean", **record}


def _probs(y, n_classes, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (len(y), n_classes)) + 1.5 * np.eye(n_classes)[y]
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_roc_pr_curves_binary_positive_class_with_sklearn_auc_and_ap():
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.array([0, 1] * 20)
    p = _probs(y, 2)
    fig = plots.roc_pr_curves({"a": _Fit(y, p, positive="osteoporosis"), "b": _Fit(y, p[:, ::-1], model="flip")},
                              ["normal", "osteoporosis"])
    roc, pr, roc_b = fig.axes[0], fig.axes[1], fig.axes[2]
    assert len(fig.axes) == 4
    assert _legend(roc) == [f"osteoporosis (AUC {roc_auc_score(y == 1, p[:, 1]):.2f})"]
    assert _legend(pr) == [f"osteoporosis (AP {average_precision_score(y == 1, p[:, 1]):.2f})"]
    assert roc.get_title() == "E1 m (clean)\nROC" and pr.get_title() == "E1 m (clean)\nprecision-recall"
    assert _legend(roc_b)[0].startswith("osteoporosis (AUC")  # no record positive: the second class
    x, t = roc.get_lines()[1].get_data()  # line 0 is the chance diagonal
    assert x[0] == 0 and t[-1] == 1
    chance = [ln for ln in pr.get_lines() if ln.get_linestyle() == "--"]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == pytest.approx(0.5)


def test_roc_pr_curves_three_classes_one_vs_rest_and_a_class_missing_from_the_test_set():
    import warnings

    from sklearn.metrics import roc_auc_score

    y = np.array([0, 1, 2] * 10)
    p = _probs(y, 3, seed=1)
    y_no_2 = np.array([0, 1] * 15)
    names = ["normal", "osteopenia", "osteoporosis"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an absent class warns nowhere (reports stay clean)
        fig = plots.roc_pr_curves([_Fit(y, p), {"y_true": y_no_2, "y_prob": _probs(y_no_2, 3), "model": "d"}], names,
                                  max_cols=1)
    assert len(fig.axes) == 4 and fig.axes[2].get_title().startswith("d")
    assert _legend(fig.axes[0]) == [f"{n} (AUC {roc_auc_score(y == c, p[:, c]):.2f})" for c, n in enumerate(names)]
    assert len(_legend(fig.axes[1])) == 3 and all("(AP " in t for t in _legend(fig.axes[1]))
    assert _legend(fig.axes[2])[2] == "osteoporosis: no positive test image, no curve"
    assert fig.axes[0].get_position().y0 > fig.axes[2].get_position().y0  # max_cols=1: one fit per row


def test_roc_pr_curves_rejects_what_it_cannot_draw():
    y = np.array([0, 1, 0, 1])
    with pytest.raises(TypeError, match=r"and 'y_prob'. Received: a dict with keys \['confusion_matrix'\]"):
        plots.roc_pr_curves([{"confusion_matrix": [[1, 0], [0, 1]]}], ["a", "b"])
    with pytest.raises(TypeError, match="Received: fits item of type int"):
        plots.roc_pr_curves([3], ["a", "b"])
    with pytest.raises(ValueError, match=r"y_prob must be \(n_images, 3\).*Received: y_prob.shape=\(4, 2\)"):
        plots.roc_pr_curves([_Fit(y, _probs(y, 2))], ["a", "b", "c"])
    with pytest.raises(ValueError, match="max_cols must be an integer >= 1. Received: max_cols=0"):
        plots.roc_pr_curves([_Fit(y, _probs(y, 2))], ["a", "b"], max_cols=0)
