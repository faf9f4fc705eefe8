"""Study 04 workflow: TBS labels, imbalance, offline augmentation, settings (no notebook runs)."""

import math

import numpy as np
import pandas as pd
import pytest

from osteo_tf import experiments
from osteo_tf.io import save_png
from osteo_tf.workflows import study04


@pytest.mark.parametrize("tbs, expected", [
    (1.350, "normal"), (1.4, "normal"), (1.3499, "partially_degraded"), (1.2001, "partially_degraded"),
    (1.200, "degraded"), (1.1, "degraded"), (None, None), (float("nan"), None), ("abc", None), ("1.36", "normal"),
])
def test_tbs_class_thresholds_are_inclusive_as_in_the_paper(tbs, expected):
    assert study04.tbs_class(tbs) == expected


def test_labels_from_tbs_drops_the_middle_class_and_counts_it():
    m = pd.DataFrame({"path": [f"p{i}" for i in range(6)], "group": ["a", "b", "c", "c", "d", "e"],
                      "tbs": [1.40, 1.30, 1.10, 1.15, math.nan, 1.35]})
    out, counts = study04.labels_from_tbs(m)
    assert out["label"].tolist() == ["normal", "degraded", "degraded", "normal"]
    by = counts.set_index("class")
    assert by.loc["partially_degraded", "images"] == 1 and not by.loc["partially_degraded", "kept"]
    assert by.loc["no usable TBS", "images"] == 1
    assert by.loc["degraded", "patients"] == 1 and by.loc["degraded", "images"] == 2
    three, _ = study04.labels_from_tbs(m, binary=False)
    assert "partially_degraded" in set(three["label"])
    with pytest.raises(ValueError, match="tbs"):
        study04.labels_from_tbs(m.drop(columns="tbs"))


def test_subsample_to_fraction_drops_whole_degraded_patients():
    m = pd.DataFrame({"group": [f"g{i}" for i in range(20)] + ["g0"],
                      "label": ["normal"] * 10 + ["degraded"] * 10 + ["normal"]})
    out = study04.subsample_to_fraction(m, fraction=0.25, seed=1)
    groups = out.groupby("group")["label"].first()
    assert (groups == "degraded").sum() == 3  # floor(0.25 * 10 / 0.75)
    assert (groups == "normal").sum() == 10
    assert out.equals(study04.subsample_to_fraction(m, fraction=0.25, seed=1).reset_index(drop=True))
    same = study04.subsample_to_fraction(out, fraction=0.5, seed=1)
    assert len(same) == len(out)


def test_class_balance_reports_shares():
    m = pd.DataFrame({"group": list("abcd"), "label": ["normal", "normal", "normal", "degraded"],
                      "split": ["train", "train", "test", "test"]})
    t = study04.class_balance(m).set_index("class")
    assert t.loc["degraded", "share of images"] == 0.25
    per = study04.class_balance(m, by="split")
    assert set(per["split"]) == {"train", "test"}


def _tbs_manifest(tmp_path, n=12):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        rel = f"img/{i:03d}.png"
        save_png(rng.random((40, 30)).astype(np.float32), tmp_path / rel)
        rows.append({"path": rel, "group": f"p{i}", "tbs": [1.42, 1.15, 1.28][i % 3]})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path / "manifest.csv"


def test_setup_derives_labels_from_a_tbs_manifest(tmp_path):
    csv = _tbs_manifest(tmp_path / "data")
    assert study04.is_tbs_manifest(csv) and study04.is_tbs_manifest(csv.parent)
    S = study04.Settings.for_profile("smoke")
    ctx = study04.setup(S, data_dir=str(csv), out_dir=str(tmp_path / "out"))
    table = ctx.tables["labels"]
    assert ctx.class_names == ["normal", "degraded"]
    assert ctx.data["classes"] == {"normal": 4, "degraded": 4}
    assert "derived from the 'tbs' column" in ctx.data["label_provenance"]
    assert "4 image(s)" in ctx.data["label_provenance"]  # the partially degraded ones, dropped
    assert table.set_index("class").loc["partially_degraded", "images"] == 4


def test_setup_synthetic_keeps_the_paper_imbalance(tmp_path, monkeypatch):
    S = study04.Settings.for_profile("smoke", patients=16, synth_size=64)
    ctx = study04.setup(S, out_dir=str(tmp_path / "out"))
    table = ctx.tables["labels"]
    assert ctx.class_names == ["normal", "degraded"]
    assert ctx.data["classes"]["normal"] == 8 and ctx.data["classes"]["degraded"] == 2  # floor(.25*8/.75)
    assert table["generator label agrees"].all()
    assert "degraded patients dropped" in ctx.data["label_provenance"]


def test_augment_offline_balances_train_and_val_and_never_touches_test(tmp_path):
    S = study04.Settings.for_profile("smoke", patients=24, synth_size=64)
    ctx = study04.setup(S, out_dir=str(tmp_path / "out"))
    from osteo_tf import splits

    split = splits.grouped_split(ctx.manifest, val=0.2, test=0.3, seed=0)
    data, summary = study04.augment_offline(ctx, split, size=32, target_fraction=0.37)
    s = summary.set_index("split")
    assert s.loc["test", "augmented copies added"] == 0
    assert (data.loc[data["split"] == "test", "aug"] == "orig").all()
    assert s.loc["train", "degraded share after"] >= 0.37
    for name in ("train", "val", "test"):  # originals all kept, one per source
        assert (data[(data["split"] == name) & (data["aug"] == "orig")]["source"].nunique()
                == (split["split"] == name).sum())
    assert experiments.leakage_summary(data)["clean"].item()
    images, titles = study04.augmentation_examples(data)
    assert len(images) == len(titles) and images[0].shape == (32, 32)


def test_settings_profiles_and_recipes():
    fields = set(study04.Settings.field_names()) - {"preset", "weights", "allow_random_init", "strategy", "classes",
                                                     "respect_source_split"}
    for profile, values in study04.Settings.PROFILES.items():
        assert set(values) == fields, profile
        assert set(study04.Settings.for_profile(profile).approaches) <= {"approach1", "approach2", "approach3"}
    full = study04.Settings.for_profile("full")
    assert full.transfer_models == ("resnet18", "alexnet", "vgg16", "densenet121", "squeezenet")
    assert full.image_size == 224 and full.approach1_epochs == 50 and full.approach2_epochs == 20
    r = study04.recipe_for(full, "approach1")
    assert (r.batch_size, r.learning_rate, r.momentum, r.epochs) == (24, 1e-4, 0.9, 50)
    r4 = study04.recipe_for(full, "approach3", "study04_model4")
    assert (r4.batch_size, r4.learning_rate, r4.epochs, r4.patience) == (48, 1e-4, 200, 15)
    smoke = study04.Settings.for_profile("smoke")
    assert study04.model_size(smoke, "study04_model1") == 94
    assert study04.work_size(smoke.replace(image_size=48, transfer_models=("resnet18",),
                                           small_models=("study04_model1",))) == 94
    with pytest.raises(ValueError):
        study04.recipe_for(full, "approach9")
    assert study04.steps(full) == []  # the paper: resize only
    assert study04.steps(study04.Settings.for_profile("quick")) == [("standardize", {})]
    with pytest.raises(ValueError, match="intensity must be one of"):
        study04.Settings.for_profile("quick", intensity="zscore")
    with pytest.raises(ValueError, match="approaches must be one of"):
        study04.Settings.for_profile("quick", approaches="approach1,approach9")


def test_paper_tables_use_registry_experiment_names():
    t = study04.paper_table()
    assert set(t["approach"]) == {"approach1", "approach2", "approach3"}
    assert len(study04.paper_records()) == 14
    rec = {"experiment": "approach1", "model": "resnet18", "tp": 1, "fp": 2, "tn": 3, "fn": 4, "accuracy": 0.4,
           "sensitivity": 0.2, "specificity": 0.6, "f1": 0.25, "auc": 0.5, "seconds_per_10_epochs": 12.0}
    row = study04.counts_table([rec]).iloc[0]
    assert (row["TP"], row["FN"], row["s / 10 epochs"]) == (1, 4, 12.0)
