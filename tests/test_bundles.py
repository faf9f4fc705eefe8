"""Model bundles (issue 17): a trained registry model saved with its sidecar, reloaded in a fresh
process, used in memory (osteo_tf.predict), evaluated externally and exported; the operating
point chosen on validation data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

from osteo_tf import cli, evaluation, inference, io, models, pipeline, synthetic  # noqa: E402

CLASSES = ["normal", "osteoporosis"]
SIZE = 24


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle-data")
    synthetic.write_dataset(root, mode="calcaneus", classes=2, patients=10, preset="easy", size=48, seed=3)
    from osteo_tf import datasets

    return root, datasets.find_dataset(root).manifest


@pytest.fixture(scope="module")
def bundle(data, tmp_path_factory):
    """A tiny registry model trained two epochs on grey batches, its threshold from "val"."""
    _, manifest = data
    keras.utils.set_random_seed(0)
    model = models.build("compact_cnn", input_shape=(SIZE, SIZE, 1), num_classes=2)
    ds = pipeline.make_dataset(manifest, class_names=CLASSES, image_size=SIZE, batch_size=8, training=True)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(ds, epochs=2, verbose=0)
    val = pipeline.make_dataset(manifest, class_names=CLASSES, image_size=SIZE, batch_size=8)
    p_val = model.predict(val, verbose=0)
    y_val = pipeline.encode_labels(manifest["label"].tolist(), CLASSES, label_mode="int")
    op = evaluation.operating_point(y_val, p_val, class_names=CLASSES)
    path = tmp_path_factory.mktemp("bundle") / "E1-compact_cnn.keras"
    inference.save_model(model, path, class_names=CLASSES, image_size=SIZE, threshold=op["threshold"],
                         threshold_rule=op["rule"], info={"split_hash": "abc123"})
    return path, model, op


def test_the_sidecar_holds_what_inference_needs(bundle):
    path, model, op = bundle
    side = json.loads(path.with_name(path.name + ".osteo_tf.json").read_text())
    assert side["format"] == inference.SIDECAR_FORMAT
    assert side["class_names"] == CLASSES and side["image_size"] == [SIZE, SIZE]
    assert side["threshold"] == pytest.approx(op["threshold"]) and side["threshold_rule"] == op["rule"]
    assert side["input_shape"] == [SIZE, SIZE, 1] and side["split_hash"] == "abc123"
    assert side["cache_dtype"] == pipeline.CACHE_DTYPE
    assert any("grey_to_rgb" in s for s in side["in_graph_steps"])
    assert side["scale_name"] is None  # registry models scale inside their graph


def test_a_fresh_process_gets_identical_probabilities_and_decisions(bundle, data, tmp_path):
    path, model, _ = bundle
    root, manifest = data
    files = manifest["path"].astype(str).tolist()[:6]
    here = inference.predict(path, files)
    code = (
        "import sys, json; from osteo_tf import predict; "
        f"df = predict({str(path)!r}, {files!r}); "
        "df.to_json(sys.argv[1], orient='split', double_precision=15)"
    )
    target = tmp_path / "there.json"
    subprocess.run([sys.executable, "-c", code, str(target)], check=True, capture_output=True)
    there = pd.read_json(target, orient="split")
    probs = [f"prob_{c}" for c in CLASSES]
    np.testing.assert_array_equal(there[probs].to_numpy(np.float32), here[probs].to_numpy(np.float32))
    assert there["predicted"].tolist() == here["predicted"].tolist()
    # ... and they are the model's own probabilities on the evaluation pipeline's input
    x, ok = pipeline.load_for_inference(files, image_size=SIZE)
    np.testing.assert_allclose(here[probs].to_numpy(), np.asarray(model(x, training=False)), rtol=1e-5, atol=1e-6)
    t = json.loads(path.with_name(path.name + ".osteo_tf.json").read_text())["threshold"]
    assert here["predicted"].tolist() == [CLASSES[int(p >= t)] for p in here["prob_osteoporosis"]]


def test_predict_in_memory_names_bad_arrays_and_keeps_the_others(bundle):
    path, model, _ = bundle
    good = np.random.default_rng(0).random((30, 30), dtype=np.float32)
    skipped = []
    df = inference.predict(path, [good, np.zeros((30, 30, 3)), good * 4, np.zeros((2, 2)),
                                  (good * 255).astype(np.uint8)], skipped=skipped)
    assert df["image"].tolist() == ["array[0]", "array[4]"]
    assert list(df.columns) == ["image", "prob_normal", "prob_osteoporosis", "predicted", "threshold"]
    reasons = dict(skipped)
    assert "wrong depth" in reasons["array[1]"] and "wrong kind" in reasons["array[2]"]
    assert "wrong size" in reasons["array[3]"]
    # an in-memory model without metadata: numbered classes, argmax, a warning
    with pytest.warns(UserWarning, match="class names and decision threshold are unknown"):
        plain = inference.predict(model, np.stack([good, good]))
    assert list(plain.columns)[:3] == ["image", "prob_class_0", "prob_class_1"]


def test_a_keras_file_without_sidecar_works_with_a_warning(bundle, tmp_path):
    path, model, _ = bundle
    bare = tmp_path / "bare.keras"
    model.save(bare)
    with pytest.warns(UserWarning, match="class names and decision threshold are unknown"):
        loaded, meta = inference.load_model(bare)
    assert meta["sidecar"] is False and meta["threshold"] is None
    assert meta["class_names"] == ["class_0", "class_1"]


def test_evaluate_is_external_validation_with_cis_calibration_and_the_frozen_threshold(bundle, data, tmp_path, capsys):
    path, _, op = bundle
    root, manifest = data
    result = inference.evaluate(path, root, out_dir=tmp_path / "ev", n_boot=200)
    rec = result["record"]
    assert rec["n_test_images"] == len(manifest) and rec["n_test_groups"] == manifest["group"].nunique()
    assert rec["threshold"] == pytest.approx(op["threshold"]) and rec["threshold_rule"] == op["rule"]
    assert rec["ci95"]["auc"] and rec["at_0.5"]["threshold"] == 0.5 and "ece" in rec and "brier" in rec
    assert result["reliability"] and result["skipped"] == []
    pred = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    assert list(pred.columns[:3]) == ["path", "label", "group"] and len(pred) == len(manifest)
    # a folder with one unreadable image: named with its reason, the others evaluated, exit 1
    bad = tmp_path / "with-bad"  # class folders, no manifest: the loader quarantines the broken file
    for i, src in enumerate(manifest["path"].astype(str).tolist()[:6]):
        io.save_png(io.load_xray(src), bad / manifest["label"].iloc[i] / f"{i}.png")
    (bad / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    capsys.readouterr()
    code = cli.main(["evaluate", "--model", str(path), "--data", str(bad), "--json", str(tmp_path / "e.json"),
                     "--n-boot", "50"])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 image(s) skipped" in err
    assert json.loads((tmp_path / "e.json").read_text())["record"]["n_test_images"] > 0
    # classes the model does not know: a clear error (exit 2)
    other = tmp_path / "other"
    for label in ("cats", "dogs"):
        # two different images: one image filed under both classes would be a quarantined label conflict
        io.save_png(np.full((32, 32), 0.4 if label == "cats" else 0.6, np.float32), other / label / "a.png")
    assert cli.main(["evaluate", "--model", str(path), "--data", str(other)]) == 2
    assert "not among the model's classes" in capsys.readouterr().err


def test_export_writes_a_savedmodel_that_serves_the_same_probabilities(bundle, tmp_path):
    import tensorflow as tf

    path, model, _ = bundle
    out = tmp_path / "served"
    assert cli.main(["export", "--model", str(path), "--out", str(out)]) == 0
    assert (out / "saved_model.pb").is_file() and json.loads((out / "osteo_tf.json").read_text())["class_names"] == CLASSES
    served = tf.saved_model.load(str(out))
    x = np.random.default_rng(1).random((2, SIZE, SIZE, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(served.serve(x)), np.asarray(model(x, training=False)), rtol=1e-5, atol=1e-6)
    assert cli.main(["export", "--model", str(path), "--out", str(out)]) == 2  # not empty: refused


def test_operating_point_rules():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.35, 0.3, 0.4, 0.45])  # at 0.5 every image is "normal"
    op = evaluation.operating_point(y, p)
    assert op["rule"] == "Youden's J on the validation split"
    assert op["threshold"] == pytest.approx(0.4) and op["youden_j"] == pytest.approx(2 / 3)
    assert evaluation.operating_point(None, None, class_names=CLASSES)["threshold"] == 0.5
    assert "no validation" in evaluation.operating_point(None, None, class_names=CLASSES)["rule"]
    assert "one class" in evaluation.operating_point(np.zeros(3, int), np.array([0.1, 0.2, 0.3]))["rule"]
    three = evaluation.operating_point(np.array([0, 1, 2]), np.eye(3), class_names=["a", "b", "c"])
    assert three["threshold"] is None and three["rule"] == "argmax"
    rec = evaluation.result_record(experiment="e", model="m", protocol="clean", y_true=y, y_prob=p,
                                   class_names=CLASSES, threshold=op["threshold"], threshold_rule=op["rule"], n_boot=0)
    assert rec["threshold"] == pytest.approx(0.4) and rec["threshold_rule"] == op["rule"]
    assert rec["sensitivity"] == pytest.approx(2 / 3) and rec["at_0.5"]["sensitivity"] == 0.0
    multi = evaluation.result_record(experiment="e", model="m", protocol="clean", y_true=np.array([0, 1, 2]),
                                     y_prob=np.eye(3), class_names=["a", "b", "c"], n_boot=0)
    assert multi["threshold"] is None and multi["threshold_rule"] == "argmax"


def test_osteo_tf_predict_is_exported_lazily():
    code = ("import sys, osteo_tf; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; "
            "from osteo_tf.inference import predict; assert osteo_tf.predict is predict; "
            "assert 'predict' in osteo_tf.__all__")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
