"""`osteo-tf predict` end to end: a saved model, good and bad images, CSV and overlays."""

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

from osteo_tf import cli, inference, io, models  # noqa: E402


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    m = models.build("study01_cnn", input_shape=(32, 32, 1), num_classes=2)
    path = d / "model.keras"
    inference.save_model(m, path, class_names=["normal", "osteoporosis"], image_size=32)
    return path


def _images(tmp_path):
    rng = np.random.default_rng(0)
    good = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        io.save_png(rng.random((40, 40)).astype(np.float32), p)
        good.append(p)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    return good, bad


def test_predict_writes_csv_and_overlays_and_reports_skips(saved_model, tmp_path, capsys):
    good, bad = _images(tmp_path)
    out = tmp_path / "out"
    code = cli.main(["predict", "--model", str(saved_model), *map(str, good), str(bad), "--explain", "gradcam",
                     "--out", str(out)])
    assert code == 1  # one image skipped
    err = capsys.readouterr().err
    assert "bad.png" in err and "1 image(s) skipped" in err
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 2
    assert {"prob_normal", "prob_osteoporosis", "predicted"} <= set(table.columns)
    np.testing.assert_allclose(table[["prob_normal", "prob_osteoporosis"]].sum(1), 1.0, atol=1e-5)
    assert len(list(out.glob("*.png"))) == 2


def test_predict_all_good_exits_zero_without_explain(saved_model, tmp_path):
    good, _ = _images(tmp_path)
    assert cli.main(["predict", "--model", str(saved_model), *map(str, good), "--out", str(tmp_path / "o")]) == 0
    assert not list((tmp_path / "o").glob("*.png"))


def test_predict_missing_model_is_a_clear_error(tmp_path, capsys):
    good, _ = _images(tmp_path)
    assert cli.main(["predict", "--model", str(tmp_path / "nope.keras"), str(good[0])]) == 2
    assert "nope.keras" in capsys.readouterr().err
