"""Fast checks of osteo_tf.workflows.study05 (no notebook run, no model training)."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from osteo_tf import explain, io
from osteo_tf.workflows import study05


def _manifest(n_patients=20, images=(1, 2), root="/x"):
    rows = []
    for p in range(n_patients):
        label = "normal" if p % 2 == 0 else "osteoporosis"
        for k in range(images[p % len(images)]):
            rows.append({"path": f"{root}/{label}/P{p:03d}-{k}.png", "label": label, "group": f"P{p:03d}",
                         "roi_bbox": "10,20,30,40", "height": 256, "width": 256})
    return pd.DataFrame(rows)


def test_profiles_share_fields_and_full_is_the_paper():
    fields = set(study05.Settings.field_names()) - {"preset", "weights", "allow_random_init", "strategy", "classes",
                                                     "respect_source_split"}
    for name, values in study05.Settings.PROFILES.items():
        assert set(values) - {"preset"} == fields, name
        s = study05.Settings.for_profile(name)
        assert set(s.mask_models) <= set(s.models), name
        assert s.kfold >= 2
    full = study05.Settings.for_profile("full")
    assert full.image_size == 224 and full.epochs == 30 and full.lime_samples == 1000
    assert {study05.record_name(m) for m in full.mask_models} == {"mobilenetv3", "efficientnetb0"}
    assert study05.Settings.for_profile("smoke").lime_samples <= 300
    assert study05.Settings.for_profile("quick").lime_samples <= 300


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match=r"mask_models must be one of \['mobilenetv3small'\]"):
        study05.Settings.for_profile("smoke", mask_models="efficientnetb0")
    with pytest.raises(ValueError, match="kfold"):
        study05.Settings.for_profile("smoke", kfold=1)
    with pytest.raises(ValueError, match="no_such_model"):
        study05.Settings.for_profile("smoke", models="no_such_model", mask_models="")
    with pytest.raises(ValueError, match="intensity"):
        study05.Settings.for_profile("smoke", intensity="zscore")


def test_setup_sets_the_intensity_steps_used_for_training_and_explanations(tmp_path, monkeypatch):
    monkeypatch.setenv("OSTEO_TF_CACHE", str(tmp_path / "cache"))
    s = study05.Settings.for_profile("smoke", intensity="standardize").replace(patients=8)
    ctx = study05.setup(s, seed=0, out_dir=str(tmp_path / "out"))
    assert ctx.steps == [("standardize", {})]
    grey, x = study05.model_inputs(ctx, ctx.manifest.head(2), "mobilenetv3small")
    assert abs(float(grey.mean()) - 0.5) < 0.05  # standardized: mean 0.5 before the resize
    assert study05.setup(s.replace(intensity="none"), seed=0, out_dir=str(tmp_path / "out2")).steps == []


def test_record_name_maps_both_mobilenetv3_variants():
    assert study05.record_name("mobilenetv3small") == "mobilenetv3"
    assert study05.record_name("mobilenetv3large") == "mobilenetv3"
    assert study05.record_name("efficientnetb0") == "efficientnetb0"


def test_split_721_is_grouped_and_roughly_7_2_1():
    m = _manifest(40)
    split = study05.split_721(SimpleNamespace(manifest=m, seed=0, settings=study05.Settings.for_profile("smoke"), split=None))
    per = split.groupby("split")["group"].nunique()
    assert per["train"] == 28 and per["val"] == 8 and per["test"] == 4
    assert split.groupby("group")["split"].nunique().max() == 1


def test_masks_come_from_models_that_never_saw_the_image():
    m = _manifest(30)
    split = study05.split_721(SimpleNamespace(manifest=m, seed=1, settings=study05.Settings.for_profile("smoke"), split=None))
    folds = explain.pool_folds(split, 3, seed=1)
    assert len(folds) == 3
    assignment = explain.mask_assignment(split, folds)
    fold_of, trained_on = assignment.model_of, assignment.trained_on
    assert set(fold_of) == set(split["path"])  # every image gets exactly one mask model
    group_of = dict(zip(split["path"], split["group"]))
    for path, key in fold_of.items():
        assert group_of[path] not in trained_on[key], (path, key)
    test_paths = set(split.loc[split["split"] == "test", "path"])
    assert {fold_of[p] for p in test_paths} == {"train-split model"}
    assert not any(fold_of[p] == "train-split model" for p in set(split["path"]) - test_paths)
    # test patients never enter any mask model's training
    test_groups = set(split.loc[split["split"] == "test", "group"])
    assert all(not (test_groups & g) for g in trained_on.values())


def _write_images(tmp_path, m):
    rng = np.random.default_rng(0)
    rows = []
    for _, r in m.iterrows():
        p = tmp_path / "src" / r["label"] / (r["group"] + ".png")
        io.save_png(rng.random((32, 32)).astype(np.float32), p)
        rows.append({**r.to_dict(), "path": str(p)})
    return pd.DataFrame(rows)


def _clf(rgb):
    x = np.asarray(rgb)[..., 0].mean(axis=(1, 2))
    return np.stack([1 - x, x], axis=1)


def test_lime_masking_with_the_assignment_and_the_leakage_guard(tmp_path):
    m = _write_images(tmp_path, _manifest(12, images=(1,)))
    split = study05.split_721(SimpleNamespace(manifest=m, seed=0, settings=study05.Settings.for_profile("smoke"), split=None))
    folds = explain.pool_folds(split, 2, seed=0)
    assignment = explain.mask_assignment(split, folds)
    fold_of, trained_on = assignment.model_of, assignment.trained_on
    fold_models = {k: _clf for k in set(fold_of.values())}
    model_for = assignment.model_for(fold_models)
    out, skipped = explain.lime_masked_dataset(
        split[["path", "label", "group"]], tmp_path / "masked", model_for=model_for, image_size=16,
        trained_on=trained_on, num_samples=20, batch_size=20, seed=0, segmentation=("slic", {"n_segments": 8, "compactness": 0.1, "start_label": 0}))
    assert not skipped and len(out) == len(split)
    assert dict(zip(out["source_path"], out["mask_model"])) == fold_of
    bad = {k: set(split["group"]) for k in trained_on}
    with pytest.raises(ValueError, match="leakage"):
        explain.lime_masked_dataset(split[["path", "label", "group"]], tmp_path / "masked2", model_for=model_for,
                                    image_size=16, trained_on=bad, num_samples=20, batch_size=20)


def test_image_pickers_are_balanced_and_reproducible():
    m = _manifest(40, images=(1, 3))
    split = study05.split_721(SimpleNamespace(manifest=m, seed=0, settings=study05.Settings.for_profile("smoke"), split=None))
    shown = study05.pick_test_images(split, 1, seed=0)
    assert sorted(shown["label"]) == ["normal", "osteoporosis"]
    assert shown.equals(study05.pick_test_images(split, 1, seed=0))
    checked = study05.sanity_images(split, 5, seed=0)
    assert len(checked) == min(5, (split["split"] == "test").sum())
    assert checked["path"].is_unique and set(checked["path"]) <= set(split.loc[split["split"] == "test", "path"])


def test_has_roi_and_segmentation():
    m = _manifest(4)
    assert study05.has_roi(m)
    assert not study05.has_roi(m.drop(columns="roi_bbox"))
    assert not study05.has_roi(m.assign(roi_bbox="nan"))
    algo, params = study05.segmentation(study05.Settings.for_profile("full"))
    assert algo == "slic" and params["n_segments"] == 50 and params["compactness"] == 0.1


def test_original_vs_masked_table():
    recs = [{"experiment": "original", "model": "mobilenetv3", "protocol": "clean", "accuracy": 0.6,
             "ci95": {"accuracy": [0.4, 0.8]}},
            {"experiment": "lime-masked", "model": "mobilenetv3", "protocol": "clean", "accuracy": 0.7,
             "ci95": {"accuracy": [0.5, 0.9]}},
            {"experiment": "mask-fold0", "model": "mobilenetv3", "protocol": "clean", "accuracy": 0.1}]
    t = study05.original_vs_masked(recs, keys=("accuracy",))
    assert list(t["experiment"]) == ["original", "lime-masked"]
    assert t["accuracy masked - original"].tolist() == [0.1, 0.1]
    assert t["accuracy"].iloc[0].startswith("0.600 [0.40, 0.80]")


def test_paper_comparison_compares_a_stand_in_with_the_papers_headline_model(tmp_path):
    from osteo_tf import experiments
    from osteo_tf.config import get_profile

    S = study05.Settings.for_profile("quick")
    ctx = experiments.Context(study=study05.STUDY, profile=get_profile("quick"), seed=0, manifest=None,
                              class_names=["normal", "osteoporosis"], data={"source": "synthetic:knee/default"},
                              out_dir=tmp_path, image_size=96, epochs=1, settings=S)
    ctx.results = [{"experiment": e, "model": "compact_cnn", "protocol": "clean", "accuracy": 0.7, "f1": 0.7,
                    "sensitivity": 0.7, "ppv": 0.7, "ci95": {}} for e in ("original", "lime-masked")]
    table = study05.paper_comparison(ctx, S)
    assert len(table) and set(table["our model"]) == {"compact_cnn"}
    assert set(table["paper model"]) == {"efficientnetb0 (compact_cnn is a stand-in)"}
    acc = table[(table["metric"] == "accuracy") & (table["experiment"] == "lime-masked")]
    assert acc["paper"].tolist() == [0.9189]
