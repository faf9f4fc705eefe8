"""Tests of osteo_tf.explain.masking: LIME-masked datasets and the out-of-fold mask assignment."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import pandas as pd  # noqa: E402
from _explain_helpers import grey, tiny_cnn  # noqa: E402

from osteo_tf import explain  # noqa: E402
from osteo_tf.io import load_xray, save_png  # noqa: E402


def test_lime_masked_dataset(tmp_path):
    src = tmp_path / "src"
    rows = []
    for i in range(4):
        label = ["normal", "osteoporosis"][i % 2]
        p = save_png(grey(36, seed=10 + i), src / label / f"img{i}.png")
        rows.append({"path": str(p), "label": label, "group": f"P{i // 2}", "fold": i % 2})
    (src / "normal" / "broken.png").write_bytes(b"not an image")
    rows.append({"path": str(src / "normal" / "broken.png"), "label": "normal", "group": "P9", "fold": 0})
    manifest = pd.DataFrame(rows)
    before = {p: (src / p).read_bytes() for p in [r["path"] for r in rows]}
    fold_models = {0: tiny_cnn(size=32, seed=4), 1: tiny_cnn(size=32, seed=5)}
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


# ---------------------------------------------------------------------------------------------
# the out-of-fold assignment (study 05 and the leakage audit)


def _split(n_patients=12, test_every=4, val_every=None):
    rows = []
    for p in range(n_patients):
        side = "test" if p % test_every == 0 else "val" if val_every and p % val_every == 1 else "train"
        for k in range(2):
            rows.append({"path": f"/x/P{p:02d}-{k}.png", "label": ["normal", "osteoporosis"][p % 2],
                         "group": f"P{p:02d}", "split": side})
    return pd.DataFrame(rows)


def test_pool_folds_cover_the_training_side_only():
    split = _split(16, val_every=3)
    folds = explain.pool_folds(split, 2, seed=0)
    pool = split[split["split"] != "test"]
    assert len(folds) == 2
    for f in folds:
        assert f["path"].tolist() == pool["path"].tolist()
        assert set(f["split"]) == {"train", "test"}
    held_out = [p for f in folds for p in f.loc[f["split"] == "test", "path"]]
    assert sorted(held_out) == sorted(pool["path"])  # every training-side image held out once
    with pytest.raises(ValueError, match="split"):
        explain.pool_folds(split.drop(columns="split"), 2)


def test_pool_folds_equal_folds_over_the_training_rows_of_a_split_without_val():
    """The leakage audit's R4 used grouped_kfold on its training rows: the same folds."""
    from osteo_tf import splits

    split = _split(16)
    ours = explain.pool_folds(split, 2, seed=3)
    theirs = splits.grouped_kfold(split[split["split"] == "train"].drop(columns="split"), k=2, seed=3)
    for a, b in zip(ours, theirs):
        assert a["path"].tolist() == b["path"].tolist() and a["split"].tolist() == b["split"].tolist()


def test_mask_assignment_out_of_fold_with_folds():
    split = _split(16, val_every=3)
    folds = explain.pool_folds(split, 2, seed=0)
    a = explain.mask_assignment(split, folds)
    assert set(a.model_of) == set(split["path"])
    test = split[split["split"] == "test"]
    assert {a.model_of[p] for p in test["path"]} == {explain.SPLIT_MODEL}
    assert {a.model_of[p] for p in split.loc[split["split"] != "test", "path"]} == {"fold0", "fold1"}
    assert a.trained_on[explain.SPLIT_MODEL] == set(split.loc[split["split"] != "test", "group"])
    group_of = dict(zip(split["path"], split["group"]))
    assert all(group_of[p] not in a.trained_on[m] for p, m in a.model_of.items())  # never saw it


def test_mask_assignment_in_sample_model_is_not_guarded_and_is_required():
    split = _split(8)
    a = explain.mask_assignment(split, (), split_model="train-only", in_sample_model="train-only (own images)")
    train = split[split["split"] == "train"]
    assert {a.model_of[p] for p in train["path"]} == {"train-only (own images)"}
    assert {a.model_of[p] for p in split.loc[split["split"] == "test", "path"]} == {"train-only"}
    assert a.trained_on == {"train-only": set(train["group"])}
    with pytest.raises(ValueError, match="in_sample_model"):
        explain.mask_assignment(split)
    with pytest.raises(ValueError, match="group"):
        explain.mask_assignment(split.drop(columns="group"))


def test_mask_assignment_model_for_and_source_split():
    split = _split(8)
    a = explain.mask_assignment(split, (), in_sample_model="own")
    models = {explain.SPLIT_MODEL: "model A", "own": "model B"}
    fn = a.model_for(models)
    test_row = split[split["split"] == "test"].iloc[0]
    assert fn(test_row) == (explain.SPLIT_MODEL, "model A")
    assert fn(split[split["split"] == "train"].iloc[0]) == ("own", "model B")
    masked = pd.DataFrame({"path": ["normal/P00-0.png"], "source_path": [test_row["path"]]})
    out = explain.source_split(masked, "/masked", split)
    assert out["split"].tolist() == ["test"]
    assert out["path"].tolist() == out["relpath"].tolist() == ["/masked/normal/P00-0.png"]
    assert masked["path"].tolist() == ["normal/P00-0.png"]  # a copy


def test_upsample_mask_is_nearest_at_pixel_centres():
    from osteo_tf.explain.masking import _upsample_mask

    mask = np.array([[True, False], [False, True]])
    up = _upsample_mask(mask, (4, 4))
    assert up.dtype == bool
    assert np.array_equal(up, np.kron(mask, np.ones((2, 2), bool)))
    assert np.array_equal(_upsample_mask(mask, (2, 2)), mask)
