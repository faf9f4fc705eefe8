"""Tests of osteo_tf.explain.checks: the pointing game and the randomization test, on a small trained model."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import pandas as pd  # noqa: E402
from _explain_helpers import tiny_cnn  # noqa: E402

from osteo_tf import explain  # noqa: E402
from osteo_tf.explain import checks  # noqa: E402


def test_pointing_game_hand_computed():
    cam = np.zeros((10, 10))
    cam[2:4, 2:4] = 1.0  # all energy in a 2x2 square
    cam[9, 9] = 1.0  # plus one pixel outside
    r = explain.pointing_game(cam, "2,2,6,6")
    assert r["energy_in_roi"] == pytest.approx(4 / 5)
    assert r["area_share"] == pytest.approx(16 / 100)
    assert r["ratio"] == pytest.approx((4 / 5) / (16 / 100))
    assert r["hit"] == 1.0
    # the box given in the coordinates of a 20 x 20 source image
    r2 = explain.pointing_game(cam, (4, 4, 12, 12), bbox_shape=(20, 20))
    assert r2 == r
    assert np.isnan(explain.pointing_game(np.zeros((4, 4)), "0,0,2,2")["ratio"])
    with pytest.raises(ValueError, match="bbox"):
        explain.pointing_game(cam, "5,5,2,2")



def _box_dataset(n=64, size=40, box=14, seed=0):
    """Class signal only inside a known box: class 1 = fine checkerboard texture, class 0 = flat
    patch of the same mean. The box moves from image to image."""
    rng = np.random.default_rng(seed)
    from scipy.ndimage import gaussian_filter

    images, labels, boxes = [], [], []
    yy, xx = np.mgrid[:box, :box]
    checker = ((yy // 2 + xx // 2) % 2).astype(float)
    for i in range(n):
        bg = gaussian_filter(rng.standard_normal((size, size)), 3)
        img = 0.5 + 0.15 * bg / (bg.std() + 1e-9)
        x0, y0 = rng.integers(2, size - box - 2, size=2)
        label = i % 2
        patch = 0.3 + 0.4 * checker if label else np.full((box, box), 0.5)
        img[y0:y0 + box, x0:x0 + box] = patch + 0.03 * rng.standard_normal((box, box))
        images.append(np.clip(img, 0, 1))
        labels.append(label)
        boxes.append(f"{x0},{y0},{x0 + box},{y0 + box}")
    return np.stack(images)[..., None].astype(np.float32), np.array(labels), boxes


@pytest.fixture(scope="module")
def trained():
    x, y, boxes = _box_dataset()
    model = tiny_cnn(size=40, channels=1, seed=1)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:48], y[:48], epochs=12, batch_size=16, verbose=0, shuffle=False)
    acc = float(np.mean(np.argmax(model.predict(x[48:], verbose=0), axis=1) == y[48:]))
    return model, x, y, boxes, acc


def test_trained_model_beats_chance(trained):
    *_, acc = trained
    assert acc >= 0.75


def test_pointing_game_on_trained_model(trained, record_property):
    model, x, y, boxes, _ = trained
    test = np.arange(48, 64)
    pos = test[y[test] == 1]  # images whose evidence (the texture) lies in the box
    for method in explain.CAM_METHODS:
        cams = explain.gradcam(model, x[pos], class_index=1, method=method)
        scores = pd.DataFrame([explain.pointing_game(c, boxes[i]) for c, i in zip(cams, pos)])
        ratio = float(scores["ratio"].mean())
        record_property(f"pointing_ratio_{method}", ratio)
        assert np.isfinite(ratio)
        assert scores["energy_in_roi"].between(0, 1).all()
        assert ratio > 1.5  # energy concentrates on the ROI, well above its share of the area


def test_constant_maps_have_no_rank_correlation():
    flat = np.zeros((4, 4))
    assert np.isnan(checks._spearman(flat, np.arange(16).reshape(4, 4)))
    assert checks._spearman(np.arange(16), np.arange(16)) == pytest.approx(1.0)


def test_randomization_check_on_trained_model(trained, record_property):
    model, x, y, _, _ = trained
    before = np.asarray(model(x[48:56], training=False))
    res = explain.randomization_check(model, x[48:56], layers="all", seed=0)
    record_property("randomization_mean_spearman", res["mean"])
    assert res["self_spearman"] == pytest.approx(1.0)
    assert res["spearman"].shape == (8,)
    assert res["mean"] < 0.5
    assert res["layers_randomized"][0] == "predictions"
    casc = explain.randomization_check(model, x[48:52], layers="cascade", seed=0)
    assert [s["randomized"] for s in casc["cascade"]] == [1, 2, 3, 4]
    assert casc["cascade"][-1]["mean"] < 0.5
    assert np.array_equal(before, np.asarray(model(x[48:56], training=False)))
