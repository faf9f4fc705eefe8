"""Notebook 06 workflow: the leakage audit on a user folder with a manifest (patient groups), no papermill."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from osteo_tf import splits
from osteo_tf.workflows import leakage_audit


def _tiny_manifest_folder(root, *, patients=10, images_per_patient=2, size=32):
    """normal = smooth gradients, osteoporosis = fine noise; a manifest.csv gives the patient groups."""
    rng = np.random.default_rng(0)
    rows = []
    (root / "imgs").mkdir(parents=True)
    for p in range(patients):
        label = "normal" if p % 2 == 0 else "osteoporosis"
        for k in range(images_per_patient):
            if label == "normal":
                img = np.add.outer(np.linspace(0, 1, size), np.linspace(0, 1, size)) / 2 + rng.normal(0, 0.03, (size, size))
            else:
                img = 0.5 + 0.25 * rng.standard_normal((size, size))
            name = f"imgs/pat{p:02d}_{k}.png"
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / name)
            rows.append({"path": name, "label": label, "group": f"PAT{p:02d}"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    root = _tiny_manifest_folder(tmp_path_factory.mktemp("userdata"))
    out = tmp_path_factory.mktemp("out")
    S = leakage_audit.Settings.for_profile("smoke", lime_patients=6, select_epochs=1)
    ctx = leakage_audit.setup(S, data_dir=str(root), seed=0, out_dir=str(out))
    return ctx, S, leakage_audit.run_audit(ctx, S)


def test_user_manifest_groups_are_used(audit):
    ctx, _, _ = audit
    assert ctx.data["source"].endswith("userdata0") or "userdata" in ctx.data["source"]
    assert "manifest" in ctx.data["label_provenance"]
    assert ctx.manifest["group"].nunique() == 10 and len(ctx.manifest) == 20


def test_every_row_has_a_leaky_and_a_clean_record(audit):
    ctx, _, out = audit
    keys = {(r["experiment"], r["protocol"]) for r in ctx.results}
    for row in leakage_audit.ROWS:
        assert (row, "paper") in keys and (row, "clean") in keys
    for r in ctx.results:
        assert 0.0 <= r["accuracy"] <= 1.0 and "accuracy" in r["ci95"]
    table = leakage_audit.audit_table(ctx.results)
    assert list(table["row"]) == list(leakage_audit.ROWS)
    assert {"inflation (points)", "CIs overlap", "verdict"} <= set(table.columns)


def test_leaky_splits_leak_and_clean_splits_do_not(audit):
    _, _, out = audit
    for row in ("R1", "R2"):
        assert not splits.leakage_report(out[row]["splits"]["paper"])["clean"], row
        assert splits.leakage_report(out[row]["splits"]["clean"])["clean"], row
    assert splits.leakage_report(out["R3"]["splits"]["clean"])["clean"]


def test_selection_picks_by_test_and_by_validation(audit):
    _, _, out = audit
    cand = out["R3"]["candidates"]
    by_test = cand[cand["picked by test"]].iloc[0]
    by_val = cand[cand["picked by validation"]].iloc[0]
    assert by_test["test accuracy"] == cand["test accuracy"].max()
    assert by_val["val accuracy"] == cand["val accuracy"].max()
    rec = out["R3"]["records"]
    assert rec["paper"]["accuracy"] >= rec["clean"]["accuracy"]  # picking by test can only look better


def test_lime_masks_keep_the_split_and_clean_masks_never_saw_test(audit):
    _, _, out = audit
    r4 = out["R4"]
    for protocol in ("paper", "clean"):
        m = r4["masked"][protocol]
        assert set(m["split"]) == {"train", "test"}
        assert m["mask_fraction"].between(0, 1).all()
    clean = r4["masked"]["clean"]
    assert set(clean.loc[clean["split"] == "test", "mask_model"]) == {"train-only"}
    assert set(r4["masked"]["paper"]["mask_model"]) == {"all-images"}


def test_lime_subset_is_balanced_and_grouped():
    m = pd.DataFrame({"path": [f"p{i}" for i in range(30)], "label": ["a"] * 20 + ["b"] * 10,
                      "group": [f"g{i // 2}" for i in range(30)]})
    sub = leakage_audit.lime_subset(m, 6, seed=0)
    per = sub.groupby("label")["group"].nunique()
    assert per.to_dict() == {"a": 3, "b": 3}
    assert sub.groupby("group").size().eq(2).all()  # whole patients


def test_audit_table_inflation_and_overlap_from_records():
    recs = [{"experiment": "R2 image-level split", "model": "m", "protocol": "paper", "accuracy": 0.9,
             "ci95": {"accuracy": [0.85, 0.95]}, "n_test_images": 40},
            {"experiment": "R2 image-level split", "model": "m", "protocol": "clean", "accuracy": 0.6,
             "ci95": {"accuracy": [0.5, 0.7]}, "n_test_images": 20}]
    t = leakage_audit.audit_table(recs)
    assert t.loc[0, "inflation (points)"] == pytest.approx(30.0)
    assert t.loc[0, "CIs overlap"] is False or t.loc[0, "CIs overlap"] == False  # noqa: E712
    assert t.loc[0, "verdict"] == "inflated, CIs apart"


def test_unknown_row_is_rejected():
    with pytest.raises(ValueError, match="unknown audit rows"):
        leakage_audit.run_audit(None, {}, rows=("R9",))


def test_checklist_is_numbered_markdown():
    md = leakage_audit.checklist_markdown()
    assert md.startswith("1. **") and len(md.splitlines()) == len(leakage_audit.CHECKLIST)
