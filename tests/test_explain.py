"""Tests of osteo_tf.explain: Grad-CAM(++) adapter on every registry model, LIME determinism,
overlays, sanity checks on a small trained model, predict_files, LIME-masked datasets."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

from osteo_tf import explain, models  # noqa: E402
from osteo_tf.io import load_xray, save_png  # noqa: E402

# ---------------------------------------------------------------------------------------------
# helpers


def _tiny_cnn(size=32, channels=1, output="softmax", num_classes=2, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, channels), name="input")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    h = keras.layers.MaxPooling2D(name="pool1")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.MaxPooling2D(name="pool2")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="last_conv")(h)
    h = keras.layers.GlobalAveragePooling2D(name="head_gap")(h)
    if output == "sigmoid":
        out = keras.layers.Dense(1, activation="sigmoid", name="predictions")(h)
    else:
        out = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(h)
    return keras.Model(inp, out, name=f"tiny_{output}")


def _images(n, size, channels, seed=0):
    return np.random.default_rng(seed).random((n, size, size, channels)).astype(np.float32)


def _check_maps(maps, n, size):
    assert maps.shape == (n, size, size)
    assert maps.dtype == np.float32
    assert np.all(np.isfinite(maps))
    assert maps.min() >= 0.0 and maps.max() <= 1.0


# ---------------------------------------------------------------------------------------------
# Grad-CAM on every registry builder


def _feature_hw(model, layer):
    shape = model.get_layer(layer).output.shape
    return int(shape[1]), int(shape[2])


@pytest.mark.slow
@pytest.mark.parametrize("name", models.names())
def test_gradcam_every_registry_model(name, record_property):
    spec = models.get_spec(name)
    size = max(32, spec.min_input_size)
    keras.utils.set_random_seed(0)
    model = models.build(name, input_shape=(size, size, 3), num_classes=2)
    x = spec.preprocess(_images(2, size, 3))
    before = np.asarray(model(x, training=False))
    act_before = model.layers[-1].activation
    cam = explain.CamExplainer(model)
    assert cam.penultimate_layer == spec.last_conv
    assert cam.output_kind == spec.output
    # Grad-CAM for the predicted classes, Grad-CAM++ for an explicit class per image (both
    # classes, for softmax and single-sigmoid outputs alike)
    results = [cam.explain(x, method="gradcam"), cam.explain(x, method="gradcam++", class_index=[1, 0])]
    assert results[1].class_index.tolist() == [1, 0]
    for res in results:
        _check_maps(res.maps, 2, size)
        # what runs on our stack (TF 2.21 / Keras 3.15): the library, never the fallback
        assert res.backend == "tf-keras-vis", res.fallback_reason
        assert res.fallback_reason is None
    record_property("gradcam_backend", results[0].backend)
    if _feature_hw(model, spec.last_conv) != (1, 1):
        # a spatial feature map gives a spatial explanation somewhere
        assert max(np.ptp(m) for res in results for m in res.maps) > 0
    after = np.asarray(model(x, training=False))
    assert np.array_equal(before, after)  # bitwise: the caller's model is untouched
    assert model.layers[-1].activation is act_before
    assert model.layers[-1].activation.__name__ == spec.output


def test_gradcam_sigmoid_class0_is_negative_logit():
    model = _tiny_cnn(output="sigmoid")
    x = _images(3, 32, 1)
    cam = explain.CamExplainer(model)
    assert cam.output_kind == "sigmoid" and cam.num_classes == 2
    m1 = cam.explain(x, class_index=1).maps
    m0 = cam.explain(x, class_index=0).maps
    _check_maps(m1, 3, 32)
    _check_maps(m0, 3, 32)
    # Grad-CAM weights of class 0 are the negated weights of class 1: the (ReLU-ed) maps
    # highlight complementary regions, never the same map
    assert not np.array_equal(m0, m1)
    assert model.layers[-1].activation.__name__ == "sigmoid"  # the caller's head is untouched


@pytest.mark.parametrize("method", explain.CAM_METHODS)
@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_fallback_matches_tf_keras_vis(method, output):
    model = _tiny_cnn(output=output)
    x = _images(3, 32, 1, seed=1)
    lib = explain.gradcam_result(model, x, method=method, backend="tf-keras-vis")
    tf_ = explain.gradcam_result(model, x, method=method, backend="tf")
    assert lib.backend == "tf-keras-vis" and tf_.backend == "tf"
    np.testing.assert_array_equal(lib.class_index, tf_.class_index)
    np.testing.assert_allclose(lib.maps, tf_.maps, atol=1e-4)


def test_auto_falls_back_when_tf_keras_vis_raises(monkeypatch):
    model = _tiny_cnn()
    x = _images(2, 32, 1)
    before = np.asarray(model(x, training=False))

    def broken(self, *args, **kwargs):
        raise AttributeError("'Functional' object has no attribute 'output_names'")

    monkeypatch.setattr(explain.CamExplainer, "_tkv_cams", broken)
    res = explain.gradcam_result(model, x, method="gradcam++")
    assert res.backend == "tf"
    assert "output_names" in res.fallback_reason
    _check_maps(res.maps, 2, 32)
    assert np.array_equal(before, np.asarray(model(x, training=False)))
    with pytest.raises(AttributeError):
        explain.gradcam(model, x, backend="tf-keras-vis")


def test_gradcam_validates_arguments():
    model = _tiny_cnn()
    x = _images(1, 32, 1)
    with pytest.raises(ValueError, match="method"):
        explain.gradcam(model, x, method="scorecam")
    with pytest.raises(ValueError, match="class_index"):
        explain.gradcam(model, x, class_index=2)
    with pytest.raises(ValueError, match="penultimate_layer"):
        explain.gradcam(model, x, penultimate_layer="nope")
    with pytest.raises(ValueError, match="4-D"):
        explain.gradcam(model, x, penultimate_layer="head_gap")
    with pytest.raises(ValueError, match="backend"):
        explain.gradcam(model, x, backend="torch")


def test_last_conv_layer_auto_and_spec():
    assert explain.last_conv_layer(_tiny_cnn()) == "last_conv"
    built = models.build("study04_model3", input_shape=(32, 32, 1), num_classes=2)
    assert explain.last_conv_layer(built) == models.get_spec("study04_model3").last_conv


def test_normalize_maps_constant_and_nan_become_zeros():
    maps = np.stack([np.full((3, 3), 2.0), np.arange(9.0).reshape(3, 3), np.full((3, 3), np.nan)])
    out = explain.normalize_maps(maps)
    assert np.array_equal(out[0], np.zeros((3, 3)))
    np.testing.assert_allclose(out[1], np.arange(9.0).reshape(3, 3) / 8.0, rtol=1e-6)
    assert np.array_equal(out[2], np.zeros((3, 3)))


# ---------------------------------------------------------------------------------------------
# LIME


@pytest.fixture(scope="module")
def lime_model():
    return _tiny_cnn(size=32, channels=1, seed=3)


def _grey(size=32, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    return np.clip(0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy) + 0.05 * rng.standard_normal((size, size)), 0, 1)


def test_lime_same_seed_same_explanation_and_no_progress_bar(lime_model):
    image = _grey()
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

    image = _grey(seed=2)
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

    image = _grey(size=24)
    res = explain.lime_explain(classifier, image[..., None], num_samples=30, batch_size=16, seed=0)
    assert seen["shape"][1:] == (24, 24, 3) and seen["shape"][0] <= 16
    assert seen["same_channels"]
    assert res.mask.shape == (24, 24)
    with pytest.raises(ValueError, match="grey"):
        explain.lime_explain(classifier, np.zeros((24, 24, 3)), num_samples=10)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        explain.lime_explain(classifier, image * 3, num_samples=10)


def test_model_predictor_applies_scaling_and_sigmoid_columns():
    model = _tiny_cnn(output="sigmoid", channels=3)
    calls = []

    def scale(x):
        calls.append(x.shape)
        return x * 2.0 - 1.0

    pred = explain.ModelPredictor(model, scale=scale, batch_size=4)
    rgb = np.repeat(_grey(32)[None, ..., None], 3, axis=-1).repeat(6, axis=0)
    probs = pred(rgb)
    assert probs.shape == (6, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    p = np.asarray(model(rgb.astype("float32") * 2 - 1))[:, 0]
    np.testing.assert_allclose(probs[:, 1], p, rtol=1e-5)
    assert calls and calls[0][-1] == 3


def test_segmentation_explicit_params():
    img = np.repeat(_grey(32)[..., None], 3, axis=-1)
    seg = explain.make_segmentation_fn(("slic", {"n_segments": 16, "compactness": 0.1, "sigma": 1,
                                                 "start_label": 0}))(img)
    assert seg.shape == (32, 32) and seg.min() == 0
    assert np.array_equal(np.unique(seg), np.arange(seg.max() + 1))
    qs = explain.make_segmentation_fn(("quickshift", {"kernel_size": 3, "max_dist": 10}))(img)
    assert qs.shape == (32, 32) and qs.min() == 0
    with pytest.raises(ValueError, match="segmentation"):
        explain.make_segmentation_fn(("watershed", {}))


# ---------------------------------------------------------------------------------------------
# overlays and pointing game


def test_overlays_png_and_figure(tmp_path):
    from PIL import Image

    image = _grey(32)
    cam = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    p = explain.save_overlay_png(image, cam, tmp_path / "a" / "cam.png")
    arr = np.asarray(Image.open(p))
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    mask = np.zeros((32, 32), bool)
    mask[8:16, 8:16] = True
    q = explain.save_overlay_png(image, mask, tmp_path / "mask.png", segments=np.arange(1024).reshape(32, 32) // 256)
    marr = np.asarray(Image.open(q)).astype(int)
    assert marr[12, 12, 1] > marr[12, 12, 0]  # tinted green inside the mask
    assert marr[30, 30, 0] == marr[30, 30, 1] == marr[30, 30, 2]  # grey outside
    lime = explain.LimeResult(mask=mask, segments=np.zeros((32, 32), int), weights=np.ones(1), label=1,
                              score=0.5, probabilities=np.array([0.3, 0.7]), seed=0)
    fig = explain.overlay_figure(image, cam=cam, lime=lime, title="x")
    assert len(fig.axes) == 3
    fig.savefig(tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 0


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


# ---------------------------------------------------------------------------------------------
# sanity checks on a small trained model


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
    model = _tiny_cnn(size=40, channels=1, seed=1)
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
    assert np.isnan(explain._spearman(flat, np.arange(16).reshape(4, 4)))
    assert explain._spearman(np.arange(16), np.arange(16)) == pytest.approx(1.0)


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


# ---------------------------------------------------------------------------------------------
# predict_files


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    save_png(_grey(48, seed=1), d / "a.png")
    save_png(_grey(40, seed=2), d / "b.png")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return d


@pytest.mark.parametrize("kind", ["gradcam", "lime"])
def test_predict_files_end_to_end(tmp_path, pngs, kind):
    model = _tiny_cnn(size=32, channels=3)
    path = explain.save_model(model, tmp_path / "m.keras", class_names=["normal", "osteoporosis"],
                              image_size=32, scale_name="tf")
    side = json.loads((tmp_path / "m.keras.osteo_tf.json").read_text())
    assert side["class_names"] == ["normal", "osteoporosis"] and side["image_size"] == [32, 32]
    assert side["scale_name"] == "tf" and side["last_conv"] == "last_conv"
    files = [str(pngs / "a.png"), str(pngs / "bad.png"), str(pngs / "b.png")]
    out = tmp_path / "out"
    df, skipped = explain.predict_files(path, files, explain=kind, out_dir=out)
    assert list(df.columns) == ["path", "prob_normal", "prob_osteoporosis", "predicted", "overlay"]
    assert df["path"].tolist() == [files[0], files[2]]
    np.testing.assert_allclose(df[["prob_normal", "prob_osteoporosis"]].sum(axis=1), 1.0, rtol=1e-5)
    assert [p for p, _ in skipped] == [files[1]] and skipped[0][1]
    csv = pd.read_csv(out / "predictions.csv")
    assert len(csv) == 2 and set(csv["predicted"]) <= {"normal", "osteoporosis"}
    for name in csv["overlay"]:
        assert (out / name).is_file() and name.endswith(f"_{kind}.png")
    # probabilities are those of the model on the pipeline's input ([0, 1] -> "tf" scaling)
    from osteo_tf.pipeline import preprocess_image

    x = np.repeat(preprocess_image(load_xray(files[0]), image_size=32)[None, ..., None], 3, -1) * 2 - 1
    np.testing.assert_allclose(df.loc[0, "prob_osteoporosis"], np.asarray(model(x))[0, 1], rtol=1e-5)


def test_predict_files_plain_keras_numbered_classes(tmp_path, pngs):
    model = _tiny_cnn(size=32, channels=1, num_classes=3)
    model.save(tmp_path / "plain.keras")
    with pytest.warns(UserWarning, match="sidecar"):
        df, skipped = explain.predict_files(tmp_path / "plain.keras", [str(pngs / "a.png")], out_dir=tmp_path / "o")
    assert list(df.columns) == ["path", "prob_class_0", "prob_class_1", "prob_class_2", "predicted"]
    assert skipped == []
    assert not list((tmp_path / "o").glob("*.png"))  # no explanation asked, no overlay


def test_save_model_validates(tmp_path):
    model = _tiny_cnn(output="sigmoid")
    with pytest.raises(ValueError, match="class_names"):
        explain.save_model(model, tmp_path / "m.keras", class_names=["a", "b", "c"], image_size=32)
    with pytest.raises(ValueError, match=".keras"):
        explain.save_model(model, tmp_path / "m.h5", class_names=["a", "b"], image_size=32)
    with pytest.raises(ValueError, match="explain"):
        explain.predict_files(tmp_path / "m.keras", [], explain="shap", out_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# LIME-masked dataset


def test_lime_masked_dataset(tmp_path):
    src = tmp_path / "src"
    rows = []
    for i in range(4):
        label = ["normal", "osteoporosis"][i % 2]
        p = save_png(_grey(36, seed=10 + i), src / label / f"img{i}.png")
        rows.append({"path": str(p), "label": label, "group": f"P{i // 2}", "fold": i % 2})
    (src / "normal" / "broken.png").write_bytes(b"not an image")
    rows.append({"path": str(src / "normal" / "broken.png"), "label": "normal", "group": "P9", "fold": 0})
    manifest = pd.DataFrame(rows)
    before = {p: (src / p).read_bytes() for p in [r["path"] for r in rows]}
    fold_models = {0: _tiny_cnn(size=32, seed=4), 1: _tiny_cnn(size=32, seed=5)}
    model_for = explain.kfold_model_for(dict(zip(manifest["path"], manifest["fold"])), fold_models)
    out = tmp_path / "masked"
    df, skipped = explain.lime_masked_dataset(manifest, out, model_for=model_for, image_size=32,
                                              num_samples=40, seed=0)
    assert [p for p, _ in skipped] == [rows[-1]["path"]]
    assert df["group"].tolist() == manifest["group"].tolist()[:4]
    assert df["label"].tolist() == manifest["label"].tolist()[:4]
    assert df["mask_model"].tolist() == ["fold0", "fold1", "fold0", "fold1"]
    written = pd.read_csv(out / "manifest.csv")
    assert list(written.columns[:3]) == ["path", "label", "group"]
    assert json.loads((out / "lime_masking.json").read_text())["masked_by"] == {"fold0": 2, "fold1": 2}
    for row in written.itertuples():
        masked, original = load_xray(out / row.path), load_xray(row.source_path)
        assert masked.shape == original.shape
        kept = masked > 0
        # every pixel is either zero (outside the mask) or the original (inside)
        assert np.all((masked == 0) | np.isclose(masked, original, atol=1 / 255))
        assert 0 < row.mask_fraction < 1 and kept.mean() <= row.mask_fraction + 1e-9
    for p, data in before.items():  # source untouched
        assert (src / p).read_bytes() == data
    with pytest.raises(ValueError, match="leakage"):
        explain.lime_masked_dataset(manifest.iloc[:1], tmp_path / "m2", model_for=model_for, image_size=32,
                                    num_samples=20, trained_on={"fold0": {"P0"}})
    with pytest.raises(ValueError, match="outside"):
        explain.lime_masked_dataset(manifest.iloc[:1], src / "normal" / "x", model_for=model_for, image_size=32)
