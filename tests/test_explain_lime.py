"""Tests of osteo_tf.explain.lime: seeded, batched, silent LIME equal to stock lime."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from _explain_helpers import grey, tiny_cnn  # noqa: E402

from osteo_tf import explain  # noqa: E402


@pytest.fixture(scope="module")
def lime_model():
    return tiny_cnn(size=32, channels=1, seed=3)



def test_lime_same_seed_same_explanation_and_no_progress_bar(lime_model):
    image = grey()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        a = explain.lime_explain(lime_model, image, num_samples=120, seed=5)
        b = explain.lime_explain(lime_model, image, num_samples=120, seed=5)
        c = explain.lime_explain(lime_model, image, num_samples=120, seed=6)
    text = out.getvalue() + err.getvalue()
    assert "it/s" not in text and "\r" not in text and "%|" not in text and "█" not in text
    assert np.array_equal(a.mask, b.mask)
    assert np.array_equal(a.weights, b.weights)
    assert a.label == b.label and a.score == b.score
    assert not np.array_equal(a.weights, c.weights)  # another seed, another neighbourhood
    assert a.mask.shape == image.shape and a.mask.dtype == bool
    assert a.segments.shape == image.shape and a.weights.shape == (a.segments.max() + 1,)
    assert 0 < a.mask.sum() < a.mask.size
    assert set(np.unique(a.segments[a.mask])) <= set(np.argsort(a.weights)[::-1][:5])
    np.testing.assert_allclose(a.probabilities.sum(), 1.0, rtol=1e-5)


def test_lime_equals_stock_lime_at_same_seed(lime_model):
    """Our batched, silent sampler draws exactly what lime's own does."""
    from lime.lime_image import LimeImageExplainer

    image = grey(seed=2)
    ours = explain.lime_explain(lime_model, image, num_samples=60, batch_size=256, seed=9)
    predictor = explain.ModelPredictor(lime_model)
    rgb = np.repeat(image[..., None], 3, axis=-1)
    with contextlib.redirect_stderr(io.StringIO()):  # stock lime always shows tqdm
        stock = LimeImageExplainer(random_state=9).explain_instance(
            rgb, predictor, labels=(ours.label,), top_labels=None, num_features=100000, num_samples=60,
            batch_size=10, segmentation_fn=explain.make_segmentation_fn(), random_seed=9)
    weights = np.zeros_like(ours.weights)
    for f, w in stock.local_exp[ours.label]:
        weights[f] = w
    np.testing.assert_allclose(ours.weights, weights, rtol=1e-6, atol=1e-9)


def test_lime_grey_handled_explicitly():
    seen = {}

    def classifier(rgb):
        seen["shape"] = rgb.shape
        seen["same_channels"] = bool(np.all(rgb[..., 0] == rgb[..., 2]))
        p = rgb[..., 0].mean(axis=(1, 2))
        return np.stack([1 - p, p], axis=1)

    image = grey(size=24)
    res = explain.lime_explain(classifier, image[..., None], num_samples=30, batch_size=16, seed=0)
    assert seen["shape"][1:] == (24, 24, 3) and seen["shape"][0] <= 16
    assert seen["same_channels"]
    assert res.mask.shape == (24, 24)
    with pytest.raises(ValueError, match="grey"):
        explain.lime_explain(classifier, np.zeros((24, 24, 3)), num_samples=10)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        explain.lime_explain(classifier, image * 3, num_samples=10)


def test_model_predictor_applies_scaling_and_sigmoid_columns():
    model = tiny_cnn(output="sigmoid", channels=3)
    calls = []

    def scale(x):
        calls.append(x.shape)
        return x * 2.0 - 1.0

    pred = explain.ModelPredictor(model, scale=scale, batch_size=4)
    rgb = np.repeat(grey(32)[None, ..., None], 3, axis=-1).repeat(6, axis=0)
    probs = pred(rgb)
    assert probs.shape == (6, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    p = np.asarray(model(rgb.astype("float32") * 2 - 1))[:, 0]
    np.testing.assert_allclose(probs[:, 1], p, rtol=1e-5)
    assert calls and calls[0][-1] == 3


def test_segmentation_explicit_params():
    img = np.repeat(grey(32)[..., None], 3, axis=-1)
    seg = explain.make_segmentation_fn(("slic", {"n_segments": 16, "compactness": 0.1, "sigma": 1,
                                                 "start_label": 0}))(img)
    assert seg.shape == (32, 32) and seg.min() == 0
    assert np.array_equal(np.unique(seg), np.arange(seg.max() + 1))
    qs = explain.make_segmentation_fn(("quickshift", {"kernel_size": 3, "max_dist": 10}))(img)
    assert qs.shape == (32, 32) and qs.min() == 0
    with pytest.raises(ValueError, match="segmentation"):
        explain.make_segmentation_fn(("watershed", {}))
