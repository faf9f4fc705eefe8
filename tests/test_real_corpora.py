"""Issue 15: folders laid out as users download them (split folders, pre-augmented copies, label
conflicts, mixed extensions). The corpus is made in code (``tests/_corpus.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from osteo_tf import datasets, experiments, splits
from osteo_tf.cli import main

from _corpus import make_corpus, snapshot


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("download") / "corpus")


def test_inspect_reports_every_copy_group_whole_and_every_conflict(corpus, capsys):
    before = snapshot(corpus.root)
    assert main(["inspect", str(corpus.root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["near_duplicates"] == sorted(corpus.copy_groups + corpus.conflicts)
    assert out["conflicts"] == corpus.conflicts
    assert set(out["source_splits"]) == {"train", "val", "test"}
    assert [u["path"] for u in out["unreadable"]] == corpus.unreadable
    assert out["classes"] == {"normal": 14, "osteopenia": 10, "osteoporosis": 11}  # Train/VAL/test merged
    reasons = {q["path"]: q["reason"] for q in out["quarantined"]}
    a, b = corpus.conflicts[0]
    assert reasons[a].startswith("label conflict: ") and b in reasons[a]
    assert {g[0] for g in out["source_split_leaks"]} >= {g[0] for g in corpus.copy_groups}
    assert snapshot(corpus.root) == before


def test_inspect_text_prints_copies_conflicts_and_source_splits(corpus, capsys):
    assert main(["inspect", str(corpus.root)]) == 0
    text = capsys.readouterr().out
    assert "Uploader's split folders" in text and "train: " in text
    assert "Copy groups" in text and " ~ ".join(corpus.copy_groups[0]) in text
    assert "Label conflicts (one image filed under several classes; quarantined): 2" in text


def test_split_folders_are_merged_into_classes_with_source_split(corpus):
    ds = datasets.find_dataset(corpus.root)
    assert ds.classes == ["normal", "osteopenia", "osteoporosis"]  # never train / val / test
    m = ds.manifest.set_index("relpath")
    assert m.loc["Knee Corpus/VAL/OSTEOPOROSIS/P00011-00.tif", "source_split"] == "val"
    assert set(m["source_split"]) == {"train", "val", "test"}
    assert {"dicom", "png", "jpeg", "tiff"} <= set(m["format"])
    for group in corpus.copy_groups:  # copies share one group, and one copy_group
        assert m.loc[group, "group"].nunique() == 1 and m.loc[group, "copy_group"].nunique() == 1
    flat = {r for g in corpus.conflicts for r in g}
    assert not flat & set(m.index)
    assert set(ds.quarantine.loc[ds.quarantine["kind"] == "conflict", "relpath"]) == flat


STUDY_SPLITS = {
    "dataset_card": lambda mod, ctx, S: [experiments.split(ctx, val=0.15, test=0.15)],
    "study01": lambda mod, ctx, S: [mod.protocol_split(ctx, "N", "clean")],
    "study02": lambda mod, ctx, S: [experiments.split(ctx, val=mod.SPLIT["val"], test=mod.SPLIT["test"])],
    "study03": lambda mod, ctx, S: [mod.paper_split(c, val=S.val) for c in ctx.subsets.values() if c is not None],
    "study04": lambda mod, ctx, S: [experiments.split(ctx, val=S.val, test=S.test)],
    "study05": lambda mod, ctx, S: [mod.split_721(ctx)],
    "leakage_audit": lambda mod, ctx, S: [experiments.split(ctx, val=0.0, test=S.test)],
}


@pytest.mark.parametrize("name", sorted(STUDY_SPLITS))
def test_every_study_sets_up_and_splits_the_corpus_keeping_copies_together(corpus, name, tmp_path):
    import importlib

    mod = importlib.import_module(f"osteo_tf.workflows.{name}")
    before = snapshot(corpus.root)
    S = mod.Settings.for_profile("smoke")
    files = []
    for run in ("a", "b"):
        ctx = mod.setup(S, data_dir=corpus.root, out_dir=tmp_path / run, seed=3)
        assert ctx.data["conflicts"] == 2 and ctx.data["quarantined"] == 5  # 4 twins + 1 unreadable
        conflicting = {r for g in corpus.conflicts for r in g}
        for split in STUDY_SPLITS[name](mod, ctx, S):
            own = split[split["relpath"].isin(set(ctx.manifest["relpath"]))]
            assert not conflicting & set(split["relpath"])
            for group in corpus.copy_groups:
                sides = set(own.loc[own["relpath"].isin(group), "split"])
                assert len(sides) <= 1, (group, sides)
        experiments.finish(ctx)
        files.append((tmp_path / run / "split.csv").read_bytes())
        written = pd.read_csv(tmp_path / run / "split.csv")
        assert list(written.columns) == ["path", "label", "group", "split", "sha256"]
        assert not conflicting & set(written["path"])
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert metrics["data"]["split_hash"] == splits.split_hash(ctx.split)
        assert {"quarantined", "conflicts", "copy_groups"} <= set(metrics["data"])
    assert files[0] == files[1]  # same seed, same split.csv
    assert snapshot(corpus.root) == before


def test_binary_study_drops_and_counts_the_unused_class_or_merges_it(corpus, tmp_path):
    from osteo_tf.workflows import study05

    ctx = study05.setup(study05.Settings.for_profile("smoke"), data_dir=corpus.root, out_dir=tmp_path, seed=0)
    assert ctx.class_names == ["normal", "osteoporosis"]
    assert ctx.data["dropped_classes"] == {"osteopenia": 10}
    table = experiments.describe(ctx).set_index("item")
    assert "osteopenia: 10 image(s) dropped" in table.loc["classes not used (parameter classes)", "value"]
    merged = study05.setup(study05.Settings.for_profile("smoke", classes="normal,osteopenia=osteoporosis"),
                           data_dir=corpus.root, out_dir=tmp_path, seed=0)
    assert merged.data["classes"] == {"normal": 14, "osteoporosis": 21}
    assert merged.data["merged_classes"] == {"osteopenia": "osteoporosis"}


def test_fewer_than_two_usable_classes_is_one_clear_error(corpus, tmp_path):
    from osteo_tf.workflows import study01

    with pytest.raises(datasets.DatasetError) as err:
        study01.setup(study01.Settings.for_profile("smoke", classes="normal"), data_dir=corpus.root,
                      out_dir=tmp_path, seed=0)
    message = str(err.value)
    assert "\n" not in message and "need at least two classes" in message and "osteoporosis" in message


def test_respect_source_split_uses_the_uploaders_folders_and_moves_straddling_copies_whole(corpus, tmp_path):
    from osteo_tf.workflows import study02

    S = study02.Settings.for_profile("smoke", respect_source_split=True)
    ctx = study02.setup(S, data_dir=corpus.root, out_dir=tmp_path, seed=0)
    split = experiments.split(ctx, val=0.15, test=0.15)
    moved = split[split["split"] != split["source_split"]]
    rank = {"train": 0, "val": 1, "test": 2}
    assert (moved["split"].map(rank) < moved["source_split"].map(rank)).all()  # to the earliest side only
    assert set(moved["relpath"]) <= {r for g in corpus.copy_groups for r in g}
    kept = split[split["split"] == split["source_split"]]
    assert len(kept) == len(split) - len(moved) and len(moved) >= 1
    splits.assert_no_leakage(split)
    assert "used as this run's split" in experiments.describe(ctx).set_index("item").loc["uploader's split folders", "value"]


def test_a_class_left_empty_by_the_quarantine_is_named(tmp_path):
    import shutil

    from osteo_tf.workflows import dataset_card

    c = make_corpus(tmp_path / "c")
    base = c.root / "Knee Corpus"
    twin = next(r for g in c.conflicts for r in g if "_twin" in r)
    for split in ("Train", "VAL", "test"):  # osteopenia holds only a twin of a normal image
        shutil.rmtree(base / split / ("Osteopenia" if split != "VAL" else "osteopenia"))
    (base / "VAL" / "osteopenia").mkdir()
    shutil.copy(c.root / twin, base / "VAL" / "osteopenia" / "only.jpg")
    ctx = dataset_card.setup(dataset_card.Settings.for_profile("smoke"), data_dir=c.root, out_dir=tmp_path / "o", seed=0)
    assert "osteopenia" in ctx.data["empty_classes"]
    assert "osteopenia" in experiments.describe(ctx).set_index("item").loc["classes left empty by the quarantine", "value"]


def test_dataset_card_describes_the_problematic_folder_instead_of_stopping(corpus, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from osteo_tf.workflows import dataset_card

    ctx = dataset_card.setup(dataset_card.Settings.for_profile("smoke"), data_dir=corpus.root, out_dir=tmp_path, seed=0)
    table = dataset_card.copy_group_table(ctx)
    assert sorted(table["files"]) == sorted(" ~ ".join(g) for g in corpus.copy_groups + corpus.conflicts)
    assert (table["status"] == "label conflict: all quarantined").sum() == 2
    leak = dataset_card.source_split_table(ctx).set_index("uploader's split")
    assert set(leak.index) == {"train", "val", "test"} and leak["images with a copy on another side"].sum() > 0
    assert "LEAKS" in dataset_card.source_split_verdict(ctx)
    fig = dataset_card.copy_groups_figure(ctx)
    assert len([ax for ax in fig.axes if ax.images]) == sum(len(g) for g in ctx.dataset.copies)
    verdict = dataset_card.verdict(ctx, pairs=pd.DataFrame(columns=dataset_card.PAIR_COLUMNS), baselines=[],
                                   oracle_acc=None).set_index("check")
    assert verdict.loc["no image filed under two classes (label conflicts)", "status"] == "attention"
    assert verdict.loc["the uploader's split does not leak (no copy across its sides)", "status"] == "attention"
    kinds = dataset_card.quarantine_table(ctx)["kind"].value_counts().to_dict()
    assert kinds == {"conflict": 4, "unreadable": 1}


def test_the_split_hash_is_known_before_training_so_bundles_carry_it(corpus, tmp_path):
    from osteo_tf.workflows import study05

    ctx = study05.setup(study05.Settings.for_profile("smoke"), data_dir=corpus.root, out_dir=tmp_path, seed=0)
    assert "split_hash" not in ctx.data
    split = study05.split_721(ctx)
    assert ctx.data["split_hash"] == splits.split_hash(split)
    assert not experiments.record_split(ctx, split.assign(split="train"))  # the first split stays the run's
    assert ctx.data["split_hash"] == splits.split_hash(split)
