"""Acceptance tests of the synthetic generator (the properties its design promises): small n, seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from osteo_tf import synthetic


def _binary(items):
    y = np.array([m["label"] != "normal" for _, m in items], int)
    groups = np.array([m["patient_id"] for _, m in items])
    return y, groups


def _crop(image, meta):
    x0, y0, x1, y1 = map(int, meta["roi_bbox"].split(","))
    return image[y0:y1, x0:x1]


def _grouped_cv():
    return StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)


def _logreg():
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def _global_stats(items):
    return np.array([[im.mean(), im.std(), *np.percentile(im, [5, 25, 50, 75, 95])] for im, _ in items])


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- 1. determinism -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["calcaneus", "knee", "dxa"])
def test_same_arguments_give_byte_identical_files(tmp_path, mode):
    kwargs = dict(mode=mode, patients=3, size=64, seed=7)
    synthetic.write_dataset(tmp_path / "a", **kwargs)
    synthetic.write_dataset(tmp_path / "b", **kwargs)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert "metadata.csv" in a and len(a) > 3
    assert a == b


def test_different_seed_gives_different_images(tmp_path):
    synthetic.write_dataset(tmp_path / "a", mode="calcaneus", patients=2, size=48, seed=1)
    synthetic.write_dataset(tmp_path / "b", mode="calcaneus", patients=2, size=48, seed=2)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a["metadata.csv"] != b["metadata.csv"]
    assert not set(a.values()) & set(b.values())  # no file (image or metadata) in common


def test_images_do_not_depend_on_generation_order_or_patient_count():
    few = {m["image_id"]: im for im, m in synthetic.generate("knee", patients=3, size=48, seed=3)}
    more = {m["image_id"]: im for im, m in synthetic.generate("knee", patients=5, size=48, seed=3)}
    assert set(few) < set(more)
    for key, image in few.items():
        np.testing.assert_array_equal(image, more[key])


def test_overwriting_a_synthetic_dataset_is_allowed_but_foreign_folders_are_refused(tmp_path):
    out = tmp_path / "ds"
    synthetic.write_dataset(out, mode="calcaneus", patients=2, size=32, seed=0)
    first = _files(out)
    synthetic.write_dataset(out, mode="calcaneus", patients=2, size=32, seed=0)
    assert _files(out) == first
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="out"):
        synthetic.write_dataset(foreign, mode="calcaneus", patients=1, size=32)
    (out / "extra.txt").write_text("x")
    with pytest.raises(ValueError, match="out"):
        synthetic.write_dataset(out, mode="calcaneus", patients=1, size=32)


def test_sixteen_bit_png_round_trips(tmp_path):
    from PIL import Image

    meta = synthetic.write_dataset(tmp_path, mode="dxa", patients=1, size=64, images_per_patient=1, bit_depth=16)
    with Image.open(tmp_path / meta["path"][0]) as img:
        assert img.mode in ("I;16", "I") and img.size == (32, 64)
        assert np.asarray(img).max() > 255


# --- 2. oracle ----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", sorted(synthetic.PRESETS))
def test_monte_carlo_oracle_matches_documented_table(preset):
    p = synthetic.PRESETS[preset]
    assert synthetic.oracle_accuracy(preset, 2, n=100_000) == pytest.approx(p.oracle_binary, abs=0.03)
    assert synthetic.oracle_accuracy(preset, 3, n=100_000) == pytest.approx(p.oracle_3class, abs=0.03)


# --- variogram ----------------------------------------------------------------------------------
def test_variogram_of_a_ramp_is_lag_squared():
    ramp = np.tile(np.arange(10.0), (5, 1))  # I(x, y) = x
    np.testing.assert_allclose(synthetic.variogram(ramp, [1, 2, 3], axis=1), [1.0, 4.0, 9.0])
    np.testing.assert_allclose(synthetic.variogram(ramp, [1, 2], axis=0), [0.0, 0.0])
    assert synthetic.variogram_slope(ramp, [1, 2, 3, 4], axis=1) == pytest.approx(2.0)


def test_variogram_mask_only_counts_pairs_inside():
    image = np.zeros((4, 6))
    image[:, 3:] = 10.0  # a step between columns 2 and 3
    mask = np.zeros((4, 6), bool)
    mask[:, :3] = True
    np.testing.assert_allclose(synthetic.variogram(image, [1], mask=mask), [0.0])


def test_texture_features_are_gain_and_offset_invariant():
    rng = np.random.default_rng(0)
    image = rng.random((40, 40))
    np.testing.assert_allclose(synthetic.texture_features(image), synthetic.texture_features(3.0 * image + 1.0))
    assert synthetic.texture_features(image).shape == (len(synthetic.TEXTURE_FEATURES),)


# --- 3. texture baseline ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calcaneus_items():
    return list(synthetic.generate("calcaneus", patients=70, size=128, seed=0))


def test_texture_baseline_calcaneus_is_learnable_but_not_trivial(calcaneus_items):
    y, groups = _binary(calcaneus_items)
    x = np.array([synthetic.texture_features(im) for im, _ in calcaneus_items])
    acc = np.mean(cross_val_predict(_logreg(), x, y, groups=groups, cv=_grouped_cv()) == y)
    assert 0.70 <= acc <= 0.95, acc


def test_texture_baseline_knee_roi_is_above_chance():
    items = list(synthetic.generate("knee", patients=80, size=192, seed=0, images_per_patient=2))
    y, groups = _binary(items)
    x = np.array([synthetic.texture_features(_crop(im, m)) for im, m in items])
    acc = np.mean(cross_val_predict(_logreg(), x, y, groups=groups, cv=_grouped_cv()) == y)
    # chance SD ~0.04 at n=160: 0.60 is clearly above chance
    assert acc > 0.60, acc


def test_texture_baseline_dxa_is_learnable_but_not_trivial():
    # the texture-baseline test for the dxa mode (study 04's data): the label lives in the vertebral texture
    items = list(synthetic.generate("dxa", patients=240, seed=0, images_per_patient=1))
    y, groups = _binary(items)
    x = np.array([synthetic.texture_features(im) for im, _ in items])
    acc = np.mean(cross_val_predict(_logreg(), x, y, groups=groups, cv=_grouped_cv()) == y)
    assert 0.70 <= acc <= 0.95, acc


# --- 4. shortcut --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["calcaneus", "knee"])
def test_global_intensity_statistics_are_not_a_shortcut(mode):
    items = list(synthetic.generate(mode, patients=120, size=96, seed=0))
    y, groups = _binary(items)
    proba = cross_val_predict(_logreg(), _global_stats(items), y, groups=groups, cv=_grouped_cv(), method="predict_proba")
    assert roc_auc_score(y, proba[:, 1]) <= 0.65


# --- 5. leakage ---------------------------------------------------------------------------------
def test_image_level_split_inflates_accuracy_over_patient_split():
    items = list(synthetic.generate("calcaneus", patients=40, size=64, seed=0, images_per_patient=3))
    y, groups = _binary(items)
    x = np.array([im.reshape(8, 8, 8, 8).mean(axis=(1, 3)).ravel() for im, _ in items])
    knn = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=1))
    random_acc = np.mean(cross_val_predict(knn, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0)) == y)
    grouped_acc = np.mean(cross_val_predict(knn, x, y, groups=groups, cv=_grouped_cv()) == y)
    assert random_acc - grouped_acc >= 0.03, (random_acc, grouped_acc)


def test_grouped_folds_are_patient_disjoint_and_hold_every_class(calcaneus_items):
    y, groups = _binary(calcaneus_items)
    for train, test in _grouped_cv().split(np.zeros(len(y)), y, groups):
        assert not set(groups[train]) & set(groups[test])
        assert set(y[test]) == {0, 1}


# --- 6. metadata --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,classes", [("calcaneus", 3), ("knee", 2), ("dxa", 3)])
def test_metadata_is_consistent_per_patient(tmp_path, mode, classes):
    meta = synthetic.write_dataset(tmp_path, mode=mode, classes=classes, patients=8, size=64, seed=2)
    assert list(meta.columns) == list(synthetic.COLUMNS)
    assert meta.groupby("patient_id")["label"].nunique().max() == 1
    assert set(meta["label"]) <= set(synthetic.CLASS_NAMES[(mode, classes)])
    assert meta["image_id"].is_unique and meta["image_id"].is_monotonic_increasing
    height, width = (64, 32) if mode == "dxa" else (64, 64)
    for bbox in meta["roi_bbox"]:
        x0, y0, x1, y1 = map(int, bbox.split(","))
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    on_disk = pd.read_csv(tmp_path / "metadata.csv", keep_default_na=False)
    assert list(on_disk["path"]) == [f"{lab}/{iid}.png" for lab, iid in zip(meta["label"], meta["image_id"])]
    assert all((tmp_path / p).is_file() for p in on_disk["path"])


def test_images_per_patient_rule():
    counts = pd.Series([m["patient_id"] for _, m in synthetic.generate("dxa", patients=40, size=32, seed=0)]).value_counts()
    assert counts.min() >= 1 and counts.max() <= 6 and counts.mean() > 1.5
    fixed = pd.Series([m["patient_id"] for _, m in synthetic.generate("dxa", patients=4, size=32, images_per_patient=3)])
    assert (fixed.value_counts() == 3).all()


def test_images_are_float32_in_unit_range():
    for mode in synthetic.MODES:
        image, _ = next(synthetic.generate(mode, patients=1, size=48))
        assert image.dtype == np.float32 and image.shape == ((48, 24) if mode == "dxa" else (48, 48))
        assert 0.0 <= image.min() and image.max() <= 1.0


@pytest.fixture(scope="module")
def dxa_items():
    return list(synthetic.generate("dxa", patients=40, classes=3, seed=0, images_per_patient=1))


def test_dxa_measured_tbs_tracks_true_tbs(dxa_items):
    true = np.array([m["TBS_true"] for _, m in dxa_items])
    measured = np.array([m["TBS_measured"] for _, m in dxa_items])
    assert spearmanr(true, measured)[0] > 0.8
    assert abs(np.mean(measured - true)) < 0.05  # the stored calibration g(H) holds


def test_dxa_labels_follow_tbs_thresholds(dxa_items):
    for _, m in dxa_items:
        tbs = m["TBS_true"]
        expected = "normal" if tbs >= 1.35 else ("degraded" if tbs <= 1.2 else "partially_degraded")
        assert m["label"] == expected
    binary = [m for _, m in synthetic.generate("dxa", patients=10, size=32, images_per_patient=1)]
    assert all((m["TBS_true"] >= 1.35) if m["label"] == "normal" else (m["TBS_true"] <= 1.2) for m in binary)


# --- 7. validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"mode": "hip"}, "mode"),
        ({"classes": 4}, "classes"),
        ({"patients": 0}, "patients"),
        ({"patients": 2.5}, "patients"),
        ({"preset": "medium"}, "preset"),
        ({"size": 8}, "size"),
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
        ({"images_per_patient": 0}, "images_per_patient"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, name):
    args = {"mode": "calcaneus", **kwargs}
    with pytest.raises(ValueError, match=rf"{name}.*Received: {name}="):
        synthetic.generate(args.pop("mode"), **args)


def test_write_dataset_validates_bit_depth_and_out(tmp_path):
    with pytest.raises(ValueError, match="Received: bit_depth=12"):
        synthetic.write_dataset(tmp_path, mode="knee", bit_depth=12)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="out"):
        synthetic.write_dataset(tmp_path / "file", mode="knee", patients=1)


def test_oracle_and_features_validate_arguments():
    with pytest.raises(ValueError, match="Received: classes=5"):
        synthetic.oracle_accuracy("default", 5)
    with pytest.raises(ValueError, match="Received: preset="):
        synthetic.oracle_accuracy("impossible", 2)
    with pytest.raises(ValueError, match="image"):
        synthetic.texture_features(np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="lags"):
        synthetic.variogram_slope(np.zeros((8, 8)) + np.arange(8), [1, 20])
