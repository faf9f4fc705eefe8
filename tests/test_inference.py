"""Tests of osteo_tf.inference: saved models with their sidecar, predict_files with and without overlays."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import pandas as pd  # noqa: E402
from _explain_helpers import grey, tiny_cnn  # noqa: E402

from osteo_tf import inference  # noqa: E402
from osteo_tf.io import load_xray, save_png  # noqa: E402


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    save_png(grey(48, seed=1), d / "a.png")
    save_png(grey(40, seed=2), d / "b.png")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return d


@pytest.mark.parametrize("kind", ["gradcam", "lime"])
def test_predict_files_end_to_end(tmp_path, pngs, kind):
    model = tiny_cnn(size=32, channels=3)
    path = inference.save_model(model, tmp_path / "m.keras", class_names=["normal", "osteoporosis"],
                              image_size=32, scale_name="tf")
    side = json.loads((tmp_path / "m.keras.osteo_tf.json").read_text())
    assert side["class_names"] == ["normal", "osteoporosis"] and side["image_size"] == [32, 32]
    assert side["scale_name"] == "tf" and side["last_conv"] == "last_conv"
    files = [str(pngs / "a.png"), str(pngs / "bad.png"), str(pngs / "b.png")]
    out = tmp_path / "out"
    df, skipped = inference.predict_files(path, files, explain=kind, out_dir=out)
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
    model = tiny_cnn(size=32, channels=1, num_classes=3)
    model.save(tmp_path / "plain.keras")
    with pytest.warns(UserWarning, match="sidecar"):
        df, skipped = inference.predict_files(tmp_path / "plain.keras", [str(pngs / "a.png")], out_dir=tmp_path / "o")
    assert list(df.columns) == ["path", "prob_class_0", "prob_class_1", "prob_class_2", "predicted"]
    assert skipped == []
    assert not list((tmp_path / "o").glob("*.png"))  # no explanation asked, no overlay


def test_save_model_validates(tmp_path):
    model = tiny_cnn(output="sigmoid")
    with pytest.raises(ValueError, match="class_names"):
        inference.save_model(model, tmp_path / "m.keras", class_names=["a", "b", "c"], image_size=32)
    with pytest.raises(ValueError, match=".keras"):
        inference.save_model(model, tmp_path / "m.h5", class_names=["a", "b"], image_size=32)
    with pytest.raises(ValueError, match="explain"):
        inference.predict_files(tmp_path / "m.keras", [], explain="shap", out_dir=tmp_path)


def test_load_model_reads_the_sidecar(tmp_path):
    model = tiny_cnn(size=32, channels=3)
    path = inference.save_model(model, tmp_path / "m.keras", class_names=["a", "b"], image_size=(32, 32),
                                steps=[("clahe", {"clip_limit": 0.02})], scale_name="tf")
    loaded, meta = inference.load_model(path)
    assert meta["sidecar"] is True and meta["format"] == inference.SIDECAR_FORMAT
    assert meta["class_names"] == ["a", "b"] and meta["steps"] == [("clahe", {"clip_limit": 0.02})]
    assert meta["channels"] == 3 and meta["output"] == "softmax" and meta["last_conv"] == "last_conv"
    x = np.full((1, 32, 32, 3), 0.5, np.float32)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-6)
    scale = inference.input_scaling(meta)
    np.testing.assert_allclose(np.asarray(scale(x)), x * 2 - 1)
    assert inference.input_scaling({"scale_name": None}) is None
    with pytest.raises(FileNotFoundError, match="nope.keras"):
        inference.load_model(tmp_path / "nope.keras")


def test_read_images_skips_unreadable_files(pngs):
    meta = {"image_size": [24, 24], "steps": []}
    stack, good, skipped = inference.read_images([pngs / "a.png", pngs / "bad.png"], meta)
    assert stack.shape == (1, 24, 24) and stack.dtype == np.float32
    assert good == [str(pngs / "a.png")] and [p for p, _ in skipped] == [str(pngs / "bad.png")]
    assert inference.read_images([pngs / "bad.png"], meta)[0] is None
