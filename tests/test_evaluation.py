"""Tests for osteo_tf.evaluation: every metric against scikit-learn or hand counts."""

import json
import math
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from osteo_tf import evaluation as ev


# ---------------------------------------------------------------------------- helpers
def study04_resnet18():
    """Arrays reproducing the study 04 ResNet-18 row: TP 30, FP 9, TN 130, FN 12."""
    y = np.r_[np.ones(30), np.zeros(9), np.zeros(130), np.ones(12)].astype(int)
    p = np.r_[np.full(30, 0.9), np.full(9, 0.7), np.full(130, 0.1), np.full(12, 0.2)]
    return y, p


def noisy_binary(n, seed=0, sep=1.0):
    """Binary labels and a logistic score of fixed quality (same model at any n)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(sep * (2 * y - 1) + rng.normal(0, 1, n))))
    return y, p


def random_multiclass(n=300, c=3, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c)) + 1.5 * np.eye(c)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, np.round(p, 2) / np.round(p, 2).sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------- counts
def test_confusion_counts_binary_hand():
    out = ev.confusion_counts([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert out == {"tp": 2, "fp": 1, "tn": 1, "fn": 1}


def test_confusion_counts_multiclass_one_vs_rest():
    out = ev.confusion_counts([0, 1, 2, 2, 1], [2, 1, 2, 0, 2], positive=2)
    assert out == {"tp": 1, "fp": 2, "tn": 1, "fn": 1}


def test_confusion_counts_length_mismatch_names_arguments():
    with pytest.raises(ValueError, match="Received"):
        ev.confusion_counts([0, 1], [0, 1, 1])


# ---------------------------------------------------------------------------- binary
def test_binary_reproduces_study04_paper_row():
    y, p = study04_resnet18()
    m = ev.binary_metrics(y, p)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (30, 9, 130, 12)
    assert round(m["accuracy"], 3) == 0.884
    assert round(m["sensitivity"], 3) == 0.714
    assert round(m["specificity"], 3) == 0.935
    assert round(m["f1"], 3) == 0.741
    assert m["ppv"] == pytest.approx(30 / 39)
    assert m["npv"] == pytest.approx(130 / 142)
    assert m["n"] == 181 and m["prevalence"] == pytest.approx(42 / 181)
    assert m["confusion_matrix"] == [[130, 9], [12, 30]]


def test_binary_matches_sklearn_with_ties():
    y, p = noisy_binary(200, seed=3)
    p = np.round(p, 1)  # many tied scores
    m = ev.binary_metrics(y, p, threshold=0.5)
    pred = (p >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["ppv"] == pytest.approx(skm.precision_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))


def test_binary_positive_zero_with_two_columns():
    y, p1 = noisy_binary(120, seed=4)
    probs = np.stack([1 - p1, p1], axis=1)
    m = ev.binary_metrics(y, probs, positive=0)
    pred0 = (probs[:, 0] >= 0.5).astype(int)
    assert m["sensitivity"] == pytest.approx(skm.recall_score(1 - y, pred0))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(1 - y, probs[:, 0]))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(1 - y, probs[:, 0]))


def test_binary_column_vector_equals_flat():
    y, p = noisy_binary(50)
    a, b = ev.binary_metrics(y, p), ev.binary_metrics(y, p[:, None])
    assert a["auc"] == b["auc"] and a["f1"] == b["f1"]


def test_binary_zero_over_zero_is_nan_not_crash():
    m = ev.binary_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert m["accuracy"] == 1.0 and m["specificity"] == 1.0
    for key in ("sensitivity", "ppv", "f1", "auc", "pr_auc"):
        assert math.isnan(m[key]), key


def test_binary_single_class_auc_is_nan():
    m = ev.binary_metrics([1, 1, 1, 1], [0.9, 0.2, 0.6, 0.7])
    assert math.isnan(m["auc"])
    assert m["sensitivity"] == pytest.approx(0.75)
    assert math.isnan(m["specificity"])


def test_binary_rejects_bad_threshold_and_labels():
    with pytest.raises(ValueError, match="threshold"):
        ev.binary_metrics([0, 1], [0.2, 0.8], threshold=1.5)
    with pytest.raises(ValueError, match="Received"):
        ev.binary_metrics([0, 2], [0.2, 0.8])
    with pytest.raises(ValueError, match="y_prob"):
        ev.binary_metrics([0, 1], [0.2, 1.8])


def test_ranker_matches_sklearn_with_sample_weights():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 80)
    s = np.round(rng.random(80), 1)
    w = rng.integers(0, 4, 80).astype(float)
    auc, ap = ev._Ranker(s, y == 1)(w[None])
    assert auc[0] == pytest.approx(skm.roc_auc_score(y, s, sample_weight=w))
    assert ap[0] == pytest.approx(skm.average_precision_score(y, s, sample_weight=w))


# ---------------------------------------------------------------------------- multi-class
def test_multiclass_per_class_matches_classification_report():
    y, p = random_multiclass()
    names = ["healthy", "osteopenia", "osteoporosis"]
    m = ev.multiclass_metrics(y, p, class_names=names)
    pred = p.argmax(axis=1)
    rep = skm.classification_report(y, pred, output_dict=True, zero_division=np.nan)
    for k, name in enumerate(names):
        for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert m["per_class"][name][ours] == pytest.approx(rep[str(k)][theirs])
        assert m["per_class"][name]["support"] == rep[str(k)]["support"]
    assert m["accuracy"] == pytest.approx(rep["accuracy"])
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["ppv"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))


def test_multiclass_per_class_auc_matches_one_vs_rest():
    y, p = random_multiclass(seed=5)
    m = ev.multiclass_metrics(y, p)
    for k in range(3):
        assert m["per_class"][str(k)]["auc"] == pytest.approx(skm.roc_auc_score(y == k, p[:, k]))


def test_multiclass_missing_class_is_nan_safe():
    p = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    with pytest.warns(UserWarning, match="Macro AUC averages 2 of 3"):
        m = ev.multiclass_metrics([0, 1, 0, 1], p)
    assert m["auc"] == pytest.approx(1.0)
    assert math.isnan(m["per_class"]["2"]["auc"])
    assert math.isnan(m["per_class"]["2"]["recall"])
    assert m["per_class"]["2"]["support"] == 0


def test_classification_metrics_dispatch():
    y, p = study04_resnet18()
    b = ev.classification_metrics(y, p, class_names=["normal", "degraded"])
    assert b["tp"] == 30 and "confusion_matrix" in b
    assert b["per_class"]["degraded"]["recall"] == pytest.approx(30 / 42)
    assert b["per_class"]["normal"]["recall"] == pytest.approx(130 / 139)
    y3, p3 = random_multiclass()
    mc = ev.classification_metrics(y3, p3, positive=2)
    assert "confusion_matrix" in mc and "tp" not in mc
    ovr = mc["one_vs_rest"]
    pred = p3.argmax(axis=1)
    assert ovr["sensitivity"] == pytest.approx(skm.recall_score(y3 == 2, pred == 2))
    assert ovr["auc"] == pytest.approx(skm.roc_auc_score(y3 == 2, p3[:, 2]))


def test_class_names_length_checked():
    with pytest.raises(ValueError, match="class_names"):
        ev.classification_metrics([0, 1], [0.3, 0.6], class_names=["a", "b", "c"])


# ---------------------------------------------------------------------------- bootstrap
def test_bootstrap_is_seeded():
    y, p = noisy_binary(100)
    a = ev.bootstrap_ci(y, p, n_boot=200, seed=3)
    b = ev.bootstrap_ci(y, p, n_boot=200, seed=3)
    c = ev.bootstrap_ci(y, p, n_boot=200, seed=4)
    assert a == b
    assert a["auc"] != c["auc"]


def test_bootstrap_ci_contains_point_estimate():
    y, p = noisy_binary(300, seed=2)
    point = ev.binary_metrics(y, p)
    ci = ev.bootstrap_ci(y, p, n_boot=500)
    for key in ("accuracy", "sensitivity", "specificity", "f1", "auc", "pr_auc"):
        lo, hi = ci[key]
        assert lo <= point[key] <= hi, key
        assert hi - lo > 0


def test_bootstrap_ci_shrinks_with_n():
    ys, ps = noisy_binary(50, seed=1)
    yl, pl = noisy_binary(2000, seed=1)
    small = ev.bootstrap_ci(ys, ps, metrics=("accuracy", "auc"), n_boot=500)
    large = ev.bootstrap_ci(yl, pl, metrics=("accuracy", "auc"), n_boot=500)
    for key in ("accuracy", "auc"):
        assert large[key][1] - large[key][0] < 0.5 * (small[key][1] - small[key][0])


def test_patient_level_bootstrap_handles_duplicated_images():
    y, p = noisy_binary(100, seed=6)
    ids = np.arange(100)
    y5, p5, g5 = np.repeat(y, 5), np.repeat(p, 5), np.repeat(ids, 5)
    keys = ("accuracy", "auc")
    undup = ev.bootstrap_ci(y, p, metrics=keys, n_boot=500)
    image_level = ev.bootstrap_ci(y5, p5, metrics=keys, n_boot=500)
    patient_level = ev.bootstrap_ci(y5, p5, groups=g5, metrics=keys, n_boot=500)
    for key in keys:
        w_undup = undup[key][1] - undup[key][0]
        assert image_level[key][1] - image_level[key][0] < 0.7 * w_undup
        assert patient_level[key][1] - patient_level[key][0] > image_level[key][1] - image_level[key][0]
        assert patient_level[key][0] == pytest.approx(undup[key][0], abs=1e-9)
        assert patient_level[key][1] == pytest.approx(undup[key][1], abs=1e-9)


def test_bootstrap_skips_and_counts_undefined_resamples():
    y = np.array([1] + [0] * 9)
    p = np.linspace(0.9, 0.0, 10)
    with pytest.warns(UserWarning, match="skipped"):
        ci = ev.bootstrap_ci(y, p, metrics=("auc",), n_boot=300)
    assert ci["auc"].n_skipped > 0
    assert ci["auc"].n_valid + ci["auc"].n_skipped == 300
    stratified = ev.bootstrap_ci(y, p, metrics=("auc",), n_boot=300, stratify=True)
    assert stratified["auc"].n_skipped == 0


def test_bootstrap_multiclass_runs_and_contains_point():
    y, p = random_multiclass(seed=2)
    point = ev.multiclass_metrics(y, p)
    ci = ev.bootstrap_ci(y, p, metrics=("accuracy", "macro_f1", "auc"), n_boot=300)
    for key in ("accuracy", "macro_f1", "auc"):
        assert ci[key][0] <= point[key] <= ci[key][1]


def test_bootstrap_distribution_shape_and_unknown_metric():
    y, p = noisy_binary(40)
    dist = ev.bootstrap_distribution(y, p, metrics=("accuracy",), n_boot=17)
    assert dist["accuracy"].shape == (17,)
    with pytest.raises(ValueError, match="metrics"):
        ev.bootstrap_distribution(y, p, metrics=("kappa",))


def test_bootstrap_1000_resamples_of_500_images_is_fast():
    y, p = noisy_binary(500)
    groups = np.arange(500) // 2
    ev.bootstrap_ci(y, p, groups=groups, n_boot=50)  # warm-up
    start = time.perf_counter()
    ev.bootstrap_ci(y, p, groups=groups, n_boot=1000)
    assert time.perf_counter() - start < 2.0


# ---------------------------------------------------------------------------- calibration
def test_brier_binary_matches_sklearn():
    y, p = noisy_binary(100, seed=9)
    assert ev.brier_score(y, p) == pytest.approx(skm.brier_score_loss(y, p))


def test_brier_multiclass_hand():
    # Sum over one-hot classes, mean over images: (0) + (0.25 + 0.25) = 0.5 / 2 images.
    p = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]
    assert ev.brier_score([0, 1], p) == pytest.approx(0.25)


def test_ece_zero_for_perfectly_calibrated_bins():
    # Bin 0.8: 10 predictions, 8 right; bin 0.6: 5 predictions, 3 right.
    y = np.array([1] * 8 + [0] * 2 + [1] * 3 + [0] * 2)
    p = np.array([0.8] * 10 + [0.6] * 5)
    assert ev.expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)


def test_ece_hand_value():
    # 4 predictions at confidence 0.9, 2 right (gap 0.4); 4 at 0.7, 3 right (gap 0.05).
    y = np.array([1, 1, 0, 0, 1, 1, 1, 0])
    p = np.array([0.9] * 4 + [0.7] * 4)
    assert ev.expected_calibration_error(y, p) == pytest.approx(0.5 * 0.4 + 0.5 * 0.05)


def test_reliability_curve_columns_and_counts():
    y = np.array([1, 1, 0, 0, 1, 1, 1, 0])
    p = np.array([0.9] * 4 + [0.7] * 4)
    curve = ev.reliability_curve(y, p, n_bins=10)
    assert list(curve.columns) == ["bin_lo", "bin_hi", "mean_confidence", "accuracy", "count"]
    assert len(curve) == 10 and curve["count"].sum() == 8
    row = curve[curve["count"] > 0].iloc[0]
    assert row["bin_lo"] == pytest.approx(0.7) and row["accuracy"] == pytest.approx(0.75)


def test_ece_quantile_strategy_equal_count_bins():
    y, p = noisy_binary(400, seed=5)
    curve = ev.reliability_curve(y, p, n_bins=4, strategy="quantile")
    assert curve["count"].tolist() == [100, 100, 100, 100]
    with pytest.raises(ValueError, match="strategy"):
        ev.expected_calibration_error(y, p, strategy="log")


# ---------------------------------------------------------------------------- voting, folds
def test_majority_vote_hand_example_with_tie():
    m1 = np.array([[0.9, 0.1], [0.55, 0.45], [0.45, 0.55]])
    m2 = np.array([[0.8, 0.2], [0.10, 0.90], [0.40, 0.60]])
    m3 = np.array([[0.4, 0.6], [0.20, 0.80], [0.70, 0.30]])
    m4 = np.array([[0.7, 0.3], [0.51, 0.49], [0.35, 0.65]])
    pred, frac = ev.majority_vote([m1, m2, m3, m4])
    # Row 0: 3 of 4 votes for class 0. Row 2: 3 of 4 for class 1.
    # Row 1: 2-2 tie; mean probabilities 0.34 (class 0) vs 0.66 (class 1) -> class 1.
    assert pred.tolist() == [0, 1, 1]
    assert frac.tolist() == [0.75, 0.5, 0.75]
    pred, _ = ev.majority_vote([m1, m2, m3, m4], tie_break="lowest")
    assert pred.tolist() == [0, 0, 1]


def test_majority_vote_tie_broken_by_mean_probability():
    a = np.array([[0.9, 0.1, 0.0]])
    b = np.array([[0.1, 0.6, 0.3]])
    pred, frac = ev.majority_vote([a, b])  # one vote each for 0 and 1; mean 0.5 vs 0.35
    assert pred.tolist() == [0] and frac.tolist() == [0.5]
    c = np.array([[0.45, 0.55, 0.0]])
    d = np.array([[0.0, 0.0, 1.0]])
    pred, _ = ev.majority_vote([c, d, a])  # 1 vote each; mean probs 0.45, 0.217, 0.333
    assert pred.tolist() == [0]
    pred, _ = ev.majority_vote([d, b], tie_break="lowest")  # votes for 2 and 1 -> lowest = 1
    assert pred.tolist() == [1]


def test_soft_vote_is_mean():
    a, b = np.array([[0.2, 0.8]]), np.array([[0.6, 0.4]])
    np.testing.assert_allclose(ev.soft_vote([a, b]), [[0.4, 0.6]])
    with pytest.raises(ValueError, match="prob_list"):
        ev.soft_vote([a, np.ones((2, 2)) / 2])


def test_aggregate_folds_by_hand():
    folds = [{"accuracy": 0.9, "auc": 0.8, "model": "x"},
             {"accuracy": 0.8, "auc": None},
             {"accuracy": 1.0, "auc": 0.9}]
    out = ev.aggregate_folds(folds)
    assert set(out) == {"accuracy", "auc"}
    assert out["accuracy"]["mean"] == pytest.approx(0.9)
    assert out["accuracy"]["std"] == pytest.approx(0.1)
    assert (out["accuracy"]["min"], out["accuracy"]["max"], out["accuracy"]["n"]) == (0.8, 1.0, 3)
    assert out["auc"]["n"] == 2 and out["auc"]["mean"] == pytest.approx(0.85)
    with pytest.raises(ValueError, match="f1"):
        ev.aggregate_folds(folds, keys=["f1"])


def test_image_to_patient_mean_and_conflict():
    y = [1, 1, 0, 0, 0]
    p = [0.8, 0.6, 0.1, 0.3, 0.2]
    g = ["b", "b", "a", "a", "c"]
    yg, pg, ids = ev.image_to_patient(y, p, g)
    assert ids.tolist() == ["a", "b", "c"]
    assert yg.tolist() == [0, 1, 0]
    np.testing.assert_allclose(pg, [0.2, 0.7, 0.2])
    _, pmax, _ = ev.image_to_patient(y, p, g, how="max")
    np.testing.assert_allclose(pmax, [0.3, 0.8, 0.2])
    with pytest.raises(ValueError, match="conflicting"):
        ev.image_to_patient([1, 0], [0.5, 0.5], ["a", "a"])


def test_image_to_patient_multiclass_rows_sum_to_one():
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    _, pg, _ = ev.image_to_patient([0, 0, 2], p, [7, 7, 9], how="median")
    np.testing.assert_allclose(pg.sum(axis=1), 1.0)
    np.testing.assert_allclose(pg[1], [0.1, 0.1, 0.8])


# ---------------------------------------------------------------------------- metrics.json
def record_binary(**kw):
    y, p = study04_resnet18()
    args = dict(experiment="A1", model="ResNet-18", protocol="clean", y_true=y, y_prob=p,
                groups=np.arange(y.size), class_names=["normal", "degraded"], n_boot=200,
                train_seconds=12.5)
    args.update(kw)
    return ev.result_record(**args)


def test_result_record_is_json_safe_and_complete():
    rec = record_binary()
    text = json.dumps(rec, allow_nan=False)
    assert json.loads(text) == rec
    for key in ev.RESULT_KEYS + ("n_test_images", "n_test_groups", "confusion_matrix", "ppv", "npv",
                                 "pr_auc", "brier", "ece", "balanced_accuracy"):
        assert key in rec, key
    assert rec["accuracy"] == pytest.approx(160 / 181)
    assert rec["tp"] == 30 and rec["n_test_images"] == 181 and rec["n_test_groups"] == 181
    lo, hi = rec["ci95"]["accuracy"]
    assert lo <= rec["accuracy"] <= hi
    assert type(rec["accuracy"]) is float


def test_result_record_nan_becomes_none():
    rec = ev.result_record(experiment="E1", model="m", protocol="paper", y_true=[0, 0, 0],
                           y_prob=[0.1, 0.2, 0.3], class_names=["cn", "op"], n_boot=20)
    assert rec["ci"]["skipped"]["auc"] == 20  # recorded in the record rather than warned per record
    json.dumps(rec, allow_nan=False)
    assert rec["sensitivity"] is None and rec["auc"] is None
    assert rec["ci95"]["auc"] == [None, None]


def test_result_record_multiclass_macro_and_per_class():
    y, p = random_multiclass()
    names = ["healthy", "osteopenia", "osteoporosis"]
    rec = ev.result_record(experiment="main", model="resnet50", protocol="clean", y_true=y,
                           y_prob=p, class_names=names, n_boot=100, positive=2)
    json.dumps(rec, allow_nan=False)
    pred = p.argmax(axis=1)
    assert rec["sensitivity"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert rec["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert set(rec["per_class"]) == set(names)
    assert rec["one_vs_rest"]["positive"] == "osteoporosis"


def test_result_record_validates_arguments():
    with pytest.raises(ValueError, match="experiment"):
        record_binary(experiment="")
    with pytest.raises(ValueError, match="extra"):
        record_binary(extra={"accuracy": 1.0})
    with pytest.warns(UserWarning, match="protocol"):
        record_binary(protocol="other", n_boot=0)


def make_doc(results):
    return ev.metrics_document(
        study="04-dxa-tbs", profile="smoke", seed=3,
        data={"source": "synthetic:dxa/default", "n_images": 181, "n_groups": 181,
              "classes": {"normal": 139, "degraded": 42}, "label_provenance": "synthetic TBS"},
        versions={"osteo_tf": "0.1.0"}, results=results,
        paper=[{"experiment": "A1", "model": "resnet18", "accuracy": 0.884}],
    )


def test_metrics_json_roundtrip(tmp_path):
    doc = make_doc([record_binary(y_prob=np.r_[np.full(39, 0.9), np.full(142, 0.1)])])
    doc["results"][0]["auc"] = float("nan")
    path = ev.write_metrics_json(tmp_path / "sub" / "metrics.json", doc)
    text = path.read_text()
    assert "NaN" not in text and '"auc": null' in text
    back = ev.read_metrics_json(path)
    assert back["study"] == "04-dxa-tbs" and back["results"][0]["auc"] is None
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp files left


def test_metrics_document_requires_keys(tmp_path):
    with pytest.raises(ValueError, match="label_provenance"):
        ev.metrics_document(study="s", profile="smoke", seed=0, data={"source": "x"},
                            versions={}, results=[], paper=[])
    with pytest.raises(ValueError, match="results\\[0\\]"):
        make_doc([{"experiment": "E1"}])
    with pytest.raises(ValueError, match="lacks keys"):
        ev.write_metrics_json(tmp_path / "m.json", {"study": "s"})


def test_compare_to_paper_matches_normalised_model_names():
    rec = record_binary(n_boot=300)
    paper = [{"experiment": "A1", "model": "resnet_18", "accuracy": 0.884, "sensitivity": 0.714,
              "recall": 0.714, "auc": 0.1},
             {"experiment": "A1", "model": "SqueezeNet", "accuracy": 0.884}]
    df = ev.compare_to_paper([rec], paper, keys=("accuracy", "recall", "auc"))
    assert isinstance(df, pd.DataFrame)
    acc = df[(df.model == "resnet_18") & (df.metric == "accuracy")].iloc[0]
    assert acc["ours"] == pytest.approx(160 / 181)
    assert acc["difference"] == pytest.approx(160 / 181 - 0.884)
    assert acc["paper_in_ci"] is True and acc["protocol"] == "clean"
    recall = df[df.metric == "recall"].iloc[0]
    assert recall["ours"] == pytest.approx(30 / 42) and recall["paper_in_ci"] is True
    assert df[df.metric == "auc"].iloc[0]["paper_in_ci"] is False
    missing = df[df.model == "SqueezeNet"].iloc[0]
    assert math.isnan(missing["ours"]) and missing["paper_in_ci"] is None
    assert "sensitivity" not in set(df.metric)


def test_compare_to_paper_warns_on_percentages():
    with pytest.warns(UserWarning, match="percentage"):
        ev.compare_to_paper([], [{"experiment": "E4", "model": "resnet50", "accuracy": 99.02}])


def test_module_does_not_import_tensorflow():
    import subprocess
    import sys

    code = "import sys, osteo_tf.evaluation; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_warnings_on_clean_binary_input():
    y, p = noisy_binary(200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev.binary_metrics(y, p)
        ev.bootstrap_ci(y, p, n_boot=100)


# ------------------------------------------------------------------ formatting
def test_format_estimate_with_and_without_an_interval():
    assert ev.format_estimate(0.8123, [0.7, 0.9]) == "0.812 [0.70, 0.90]"
    assert ev.format_estimate(0.8123, (0.7049, 0.9), digits=2, ci_digits=3) == "0.81 [0.705, 0.900]"
    assert ev.format_estimate(0.5, ev.CI(0.25, 0.75, 10, 0)) == "0.500 [0.25, 0.75]"
    assert ev.format_estimate(0.5) == "0.500"
    assert ev.format_estimate(0.5, []) == "0.500"
    assert ev.format_estimate(0.5, [None, 0.9]) == "0.500"  # an undefined bound prints no brackets
    assert ev.format_estimate(None, [0.1, 0.2]) == "–"
    assert ev.format_estimate(np.float32(0.25), np.array([0.125, 0.5])) == "0.250 [0.12, 0.50]"


def test_format_interval_and_bad_arguments():
    assert ev.format_interval(0.7, 0.9) == "[0.70, 0.90]"
    assert ev.format_interval(float("nan"), float("nan"), digits=1) == "[nan, nan]"
    with pytest.raises(ValueError, match="Received: ci=\\[0.5\\]"):
        ev.format_estimate(0.5, [0.5])
    with pytest.raises(TypeError, match="Received: value='0.5'"):
        ev.format_estimate("0.5")
    with pytest.raises(ValueError, match="Received: digits=-1"):
        ev.format_estimate(0.5, digits=-1)
    with pytest.raises(TypeError, match="Received: lo=None"):
        ev.format_interval(None, 0.5)


# --------------------------------------------------------------------------------------------
# paired_effect: the difference of two arms on the same patients
# --------------------------------------------------------------------------------------------
def _arm(y, score, groups, threshold=0.5):
    return {"y_true": np.asarray(y), "y_prob": np.asarray(score, float), "groups": np.asarray(groups),
            "threshold": threshold}


def _paired_data(n=80, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    groups = np.array([f"p{i}" for i in range(n)])
    good = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.15, n), 0, 1)
    weak = np.clip(0.5 + (y - 0.5) * 0.1 + rng.normal(0, 0.25, n), 0, 1)
    return y, groups, good, weak


def test_paired_effect_of_identical_arms_is_exactly_zero():
    y, groups, good, _ = _paired_data()
    for metric in ("auc", "balanced_accuracy", "accuracy"):
        out = ev.paired_effect(_arm(y, good, groups), _arm(y, good, groups), metric=metric, n_boot=1000)
        assert out["effect"] == 0.0 and out["ci95"] == [0.0, 0.0], (metric, out)
        assert out["n_groups"] == 80 and out["n_boot"] == 1000


def test_paired_effect_of_a_better_model_is_positive_and_reversing_flips_the_sign():
    y, groups, good, weak = _paired_data()
    out = ev.paired_effect(_arm(y, weak, groups), _arm(y, good, groups), metric="auc", n_boot=1000, seed=3)
    ref_good = ev.binary_metrics(y, good)["auc"]
    ref_weak = ev.binary_metrics(y, weak)["auc"]
    assert out["a"] == pytest.approx(ref_weak) and out["b"] == pytest.approx(ref_good)
    assert out["effect"] == pytest.approx(ref_good - ref_weak)
    assert 0 < out["ci95"][0] <= out["effect"] <= out["ci95"][1]
    assert out["p_not_positive"] < 0.01
    back = ev.paired_effect(_arm(y, good, groups), _arm(y, weak, groups), metric="auc", n_boot=1000, seed=3)
    assert back["ci95"] == pytest.approx([-out["ci95"][1], -out["ci95"][0]])
    again = ev.paired_effect(_arm(y, weak, groups), _arm(y, good, groups), metric="auc", n_boot=1000, seed=3)
    assert again == out, "seeded"


def test_paired_effect_is_narrower_than_unpaired_for_correlated_arms():
    """Pairing removes the patients' shared difficulty: two close models give a tight interval."""
    y, groups, _, weak = _paired_data()
    rng = np.random.default_rng(1)
    close = np.clip(weak + rng.normal(0, 0.02, weak.size), 0, 1)
    out = ev.paired_effect(_arm(y, weak, groups), _arm(y, close, groups), metric="auc", n_boot=1000)
    single = ev.bootstrap_ci(y, weak, groups=groups, metrics=("auc",), n_boot=1000)["auc"]
    assert 0 < (out["ci95"][1] - out["ci95"][0]) < 0.5 * (single[1] - single[0])


def test_paired_effect_uses_each_arms_threshold_and_resamples_patients():
    y, groups, good, _ = _paired_data()
    # arm b: the same scores shifted down, with its threshold shifted alike -> identical decisions
    shifted = np.clip(good - 0.2, 0, 1)
    out = ev.paired_effect(_arm(y, good, groups, 0.5), _arm(y, shifted, groups, 0.3),
                                   metric="balanced_accuracy", n_boot=500)
    same = np.array_equal(good >= 0.5, shifted >= 0.3)
    assert same and out["effect"] == 0.0 and out["ci95"] == [0.0, 0.0]
    # several images per patient: the arms are resampled by patient
    y2, g2 = np.repeat(y, 3), np.repeat(groups, 3)
    out2 = ev.paired_effect(_arm(y2, np.repeat(good, 3), g2), _arm(y2, np.repeat(shifted, 3), g2),
                                    metric="auc", n_boot=200)
    assert out2["n_groups"] == 80


def test_paired_effect_refuses_or_pairs_different_patients():
    y, groups, good, weak = _paired_data()
    a = _arm(y[:60], weak[:60], groups[:60])
    b = _arm(y[20:], good[20:], groups[20:])
    with pytest.raises(ValueError, match=r"different patients \(20 only in a, 20 only in b, 40 shared\).*pairing='shared'"):
        ev.paired_effect(a, b, metric="auc", n_boot=100)
    out = ev.paired_effect(a, b, metric="auc", n_boot=200, pairing="shared")
    assert out["n_groups"] == 40 and out["n_only_a"] == 20 and out["n_only_b"] == 20
    ref = ev.binary_metrics(y[20:60], good[20:60])["auc"] - ev.binary_metrics(y[20:60], weak[20:60])["auc"]
    assert out["effect"] == pytest.approx(ref)
    with pytest.raises(ValueError, match="share no test patient"):
        ev.paired_effect(_arm(y[:40], good[:40], groups[:40]), _arm(y[40:], good[40:], groups[40:]),
                                 pairing="shared")
    with pytest.raises(ValueError, match="pairing must be one of"):
        ev.paired_effect(a, b, pairing="loose")
    with pytest.raises(ValueError, match="unknown|metric"):
        ev.paired_effect(a, a, metric="nonsense")


def test_paired_effect_multiclass():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], 30)
    groups = np.arange(90).astype(str)
    sharp = np.eye(3)[y] * 0.7 + rng.dirichlet([1, 1, 1], 90) * 0.3
    noise = rng.dirichlet([1, 1, 1], 90)
    out = ev.paired_effect(_arm(y, noise, groups), _arm(y, sharp, groups), metric="balanced_accuracy",
                                   n_boot=500)
    assert out["ci95"][0] > 0.3
