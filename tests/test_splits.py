import pandas as pd
import pytest

from osteo_tf import splits


def _manifest(n_groups=30, per_group=3, classes=("normal", "osteoporosis")):
    rows = []
    for g in range(n_groups):
        label = classes[g % len(classes)]
        for i in range(per_group):
            rows.append({"relpath": f"{label}/p{g}_{i}.png", "label": label, "group": f"p{g}", "sha256": f"s{g}_{i}"})
    return pd.DataFrame(rows)


def test_grouped_split_is_group_disjoint_and_stratified():
    out = splits.grouped_split(_manifest(), val=0.2, test=0.2, seed=0)
    per_group = out.groupby("group")["split"].nunique()
    assert per_group.max() == 1
    for name in ("train", "val", "test"):
        assert set(out.loc[out.split == name, "label"]) == {"normal", "osteoporosis"}
    # 15 groups per class: round(0.2*15)=3 test, 3 val, 9 train
    assert (out.groupby("split")["group"].nunique().to_dict()) == {"test": 6, "train": 18, "val": 6}


def test_grouped_split_same_seed_same_hash_other_seed_differs():
    m = _manifest()
    a = splits.grouped_split(m, seed=3)
    b = splits.grouped_split(m, seed=3)
    c = splits.grouped_split(m, seed=4)
    assert splits.split_hash(a) == splits.split_hash(b)
    assert splits.split_hash(a) != splits.split_hash(c)


def test_grouped_split_rejects_mixed_label_groups():
    m = _manifest()
    m.loc[0, "label"] = "osteoporosis"  # p0 now has two labels
    with pytest.raises(ValueError, match="more than one label"):
        splits.grouped_split(m)


def test_grouped_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="val \\+ test"):
        splits.grouped_split(_manifest(), val=0.5, test=0.5)
    with pytest.raises(ValueError, match="Received: test=1.2"):
        splits.grouped_split(_manifest(), test=1.2)


def test_kfold_folds_partition_groups_and_are_disjoint():
    m = _manifest(n_groups=12)
    folds = splits.grouped_kfold(m, k=3, seed=0)
    assert len(folds) == 3
    test_groups = [set(f.loc[f.split == "test", "group"]) for f in folds]
    assert set().union(*test_groups) == set(m.group)
    assert sum(len(t) for t in test_groups) == 12
    for f in folds:
        assert splits.leakage_report(f)["clean"]


def test_kfold_rejects_too_few_groups():
    with pytest.raises(ValueError, match="at least 5 groups per class"):
        splits.grouped_kfold(_manifest(n_groups=4), k=5)


def test_paper_protocol_leaks_augmented_copies():
    m = _manifest(n_groups=40, per_group=4)
    out = splits.paper_protocol_split(m, test=0.2, seed=0)
    rep = splits.leakage_report(out)
    assert not rep["clean"]
    assert rep["test_images_with_train_group"] > 0
    with pytest.raises(splits.LeakageError):
        splits.assert_no_leakage(out)


def test_leakage_detects_pixel_identical_images_across_splits():
    m = _manifest(n_groups=10, per_group=1)
    out = splits.grouped_split(m, val=0, test=0.3, seed=0)
    # make one test image a pixel copy of a train image
    train_sha = out.loc[out.split == "train", "sha256"].iloc[0]
    out.loc[out.index[out.split == "test"][0], "sha256"] = train_sha
    rep = splits.leakage_report(out)
    assert rep["n_shared_images"] == 1 and rep["n_shared_groups"] == 0
    with pytest.raises(splits.LeakageError, match="pixel-identical"):
        splits.assert_no_leakage(out)


def test_split_counts_and_write(tmp_path):
    out = splits.grouped_split(_manifest(), seed=0)
    table = splits.split_counts(out)
    assert table["images"].sum() == 90
    h = splits.write_split(out, tmp_path / "split.csv")
    back = pd.read_csv(tmp_path / "split.csv")
    assert splits.split_hash(back) == h


def test_paper_protocol_splits_a_dataset_holding_its_own_pixel_identical_copies():
    m = _manifest(n_groups=40, per_group=2)
    m["sha256"] = m["group"]  # both images of a group are pixel-identical copies
    out = splits.paper_protocol_split(m, test=0.2, seed=0)  # image-level by design: no LeakageError
    assert splits.leakage_report(out)["n_shared_images"] > 0
    folds = splits.grouped_kfold(m.assign(_row=range(len(m))), k=3, seed=0, group_col="_row", sha_col=None)
    assert any(splits.leakage_report(f)["n_shared_images"] for f in folds)
    with pytest.raises(splits.LeakageError):
        splits.grouped_kfold(m.assign(_row=range(len(m))), k=3, seed=0, group_col="_row")


def test_source_split_follows_the_uploader_and_moves_a_straddling_group_to_its_earliest_side():
    m = _manifest(n_groups=12, per_group=2)
    m["source_split"] = ["train", "train", "val", "val", "test", "test"] * 4
    m.loc[5, "source_split"] = "train"  # group p2 now straddles train and test
    out = splits.source_split(m)
    assert (out.loc[[4, 5], "split"] == "train").all()
    assert (out.drop(index=[4, 5])["split"] == out.drop(index=[4, 5])["source_split"]).all()
    assert set(splits.source_split(m, keep_val=False)["split"]) == {"train", "test"}
    with pytest.raises(ValueError, match="respect_source_split"):
        splits.source_split(m.drop(columns="source_split"))
