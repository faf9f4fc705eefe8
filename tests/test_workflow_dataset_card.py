"""Notebook 00 workflow: perceptual hashes, near-duplicates, baselines and the verdict (no papermill)."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from osteo_tf import augment, datasets, experiments
from osteo_tf.workflows import dataset_card as card


def _texture(seed, size=64):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random((size, size)), 2.0)
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def test_phash_survives_contrast_sharpening_and_dihedral_copies():
    img = _texture(0)
    h = datasets.phash(img)
    assert h.shape == (64,) and h.dtype == bool
    table = card.hash_sanity_check(img)
    best = dict(zip(table["copy"], table["pHash distance (best of 8 rotations/flips)"]))
    for name in ("same image", "rot90", "rot270", "contrast+30_brightness-30", "brightness+20_contrast-20",
                 "sharpened", "horizontal flip"):
        assert best[name] <= 4, (name, best[name])
    assert best["unrelated (noise)"] > 12


def test_near_duplicates_finds_a_rotated_copy_across_patients():
    imgs = [_texture(s) for s in range(5)]
    imgs.append(np.rot90(augment.study01_variants(imgs[2])["contrast+30_brightness-30"]).copy())
    m = pd.DataFrame({"relpath": [f"f{i}.png" for i in range(6)], "group": [f"P{i}" for i in range(6)],
                      "label": ["a", "b", "a", "b", "a", "b"], "sha256": [str(i) for i in range(6)]})
    pairs, nearest = card.near_duplicates(m, imgs, threshold=6)
    assert len(pairs) == 1
    row = pairs.iloc[0]
    assert {row["file a"], row["file b"]} == {"f2.png", "f5.png"}
    assert not row["same patient"] and not row["same label"] and not row["pixel identical"]
    assert nearest.shape == (6,) and nearest[2] <= 6 and nearest[0] > 6


def test_near_duplicates_rejects_misaligned_inputs():
    with pytest.raises(ValueError, match="align"):
        card.near_duplicates(pd.DataFrame({"relpath": ["a"]}), [_texture(0), _texture(1)])


@pytest.fixture()
def tiny_ctx(tmp_path):
    """A manifest folder where class = brightness (an intensity shortcut), 3 patients per class x 2 images."""
    rows = []
    for p in range(8):
        label = "normal" if p % 2 == 0 else "osteoporosis"
        for k in range(2):
            img = _texture(10 * p + k) * 0.5 + (0.45 if label == "osteoporosis" else 0.05)
            name = f"{label}_{p}_{k}.png"
            Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / name)
            rows.append({"path": name, "label": label, "group": f"P{p}"})
    Image.fromarray((_texture(0) * 255).astype(np.uint8)).save(tmp_path / "copy.png")  # a third image of P0
    rows.append({"path": "copy.png", "label": "normal", "group": "P0"})
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows.append({"path": "broken.png", "label": "normal", "group": "P2"})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return card.setup(card.Settings.for_profile("smoke"), data_dir=str(tmp_path), seed=0,
                      out_dir=str(tmp_path / "out"))


def test_tables_baselines_and_verdict_on_a_user_manifest(tiny_ctx):
    ctx = tiny_ctx
    assert ctx.data["n_unreadable"] == 1
    q = card.quarantine_table(ctx)
    assert list(q["relpath"]) == ["broken.png"] and q["reason"].iloc[0]
    ct = card.class_table(ctx.manifest)
    assert set(ct["class"]) == {"normal", "osteoporosis"} and ct["patients"].sum() == 8
    assert card.image_properties(ctx.manifest)["bit depth"].tolist() == [8]
    assert card.images_per_patient(ctx.manifest)["images per patient"].max() == 3
    images = experiments.load_images(ctx.manifest, 32)
    recs = card.baseline_records(ctx, images, k=3)
    assert [r["features"] for r in recs] == list(card.FEATURE_SETS)
    assert all(0 <= r["accuracy"] <= 1 and r["protocol"] == "clean" for r in recs)
    assert recs[0]["accuracy"] >= 0.75  # the brightness shortcut is found by the intensity-only baseline
    pairs, _ = card.near_duplicates(ctx.manifest, images, threshold=6)
    v = card.verdict(ctx, pairs=pairs, baselines=recs, oracle_acc=None)
    status = dict(zip(v["check"], v["status"]))
    assert status["no unreadable files"] == "attention"
    assert status["global intensity does not separate the classes (no shortcut)"] == "attention"
    assert card.synthetic_info(ctx, "default")["value"].str.contains("no:").any()
    assert card.oracle(ctx, "default") is None
    assert len(ctx.results) == 2
    assert len(experiments.paper_comparison(ctx)) == 0 and "why it differs" in experiments.paper_comparison(ctx).columns
