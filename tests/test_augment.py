"""Tests of osteo_tf.augment: offline sets, Keras augmenters, class balancing."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from osteo_tf import augment as A
from osteo_tf import preprocessing as P


def _sources(n=3, size=6):
    rng = np.random.default_rng(0)
    images = [rng.uniform(0.2, 0.8, (size, size)).astype(np.float32) for _ in range(n)]
    return images, [f"src{i}" for i in range(n)], [i % 2 for i in range(n)]


# ------------------------------------------------------------------ study 01
def test_rot90_and_rot270_exact():
    img = np.arange(6, dtype=np.float32).reshape(2, 3) / 8.0  # exact binary fractions
    v = A.study01_variants(img)
    np.testing.assert_array_equal(v["rot90"] * 8, [[2, 5], [1, 4], [0, 3]])  # counter-clockwise
    np.testing.assert_array_equal(v["rot270"] * 8, [[3, 0], [4, 1], [5, 2]])
    assert list(v) == list(A.STUDY01_VARIANTS)


def test_intensity_variants_two_value_image():
    img = np.array([[0.2, 0.6], [0.2, 0.6]], np.float32)  # mean 0.4
    v = A.study01_variants(img)
    np.testing.assert_allclose(v["contrast+30_brightness-30"], [[0.098, 0.462]] * 2, atol=1e-6)
    # contrast -20%: 0.4 -+ 0.16 -> 0.24, 0.56; brightness +20%: x 1.2
    np.testing.assert_allclose(v["brightness+20_contrast-20"], [[0.288, 0.672]] * 2, atol=1e-6)


@pytest.mark.parametrize("set_name,size", [("N", 3), ("A", 12), ("B", 24), ("C", 27)])
def test_offline_set_sizes(set_name, size):
    images, ids, labels = _sources()
    assert len(A.build_offline_set(images, ids, labels, set_name=set_name)) == size


def test_b_is_a_plus_sharpened_a():
    images, ids, labels = _sources()
    a = A.build_offline_set(images, ids, labels, set_name="A")
    b = A.build_offline_set(images, ids, labels, set_name="B")
    assert len(b) == 2 * len(a)
    for ra, rb, rs in zip(a, b[:12], b[12:]):
        np.testing.assert_array_equal(rb["image"], ra["image"])
        np.testing.assert_array_equal(rs["image"], A.sharpen(ra["image"]))
        assert rs["aug"] == ra["aug"] + "+sharpen" and rs["source_id"] == ra["source_id"]


def test_c_is_b_plus_n():
    images, ids, labels = _sources()
    b = A.build_offline_set(images, ids, labels, set_name="B")
    n = A.build_offline_set(images, ids, labels, set_name="N")
    c = A.build_offline_set(images, ids, labels, set_name="C")
    assert [(r["source_id"], r["aug"]) for r in c] == [(r["source_id"], r["aug"]) for r in b + n]
    assert [r["aug"] for r in n] == ["orig"] * 3


def test_groups_and_labels_kept():
    images, ids, labels = _sources()
    c = A.build_offline_set(images, ids, labels, set_name="C")
    for sid, lab in zip(ids, labels):
        mine = [r for r in c if r["source_id"] == sid]
        assert len(mine) == 9 and {r["label"] for r in mine} == {lab}


def test_duplicate_ids_rejected():
    images, _, labels = _sources()
    with pytest.raises(ValueError, match="unique"):
        A.build_offline_set(images, ["a", "a", "b"], labels, set_name="A")


def test_write_offline_set_files_and_manifest(tmp_path):
    from PIL import Image

    images, ids, labels = _sources(2)
    records = A.build_offline_set(images, ids, labels, set_name="A")
    manifest = A.write_offline_set(records, tmp_path)
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and list(rows[0]) == ["path", "label", "group"]
    assert rows[0] == {"path": "0/src0__rot90.png", "label": "0", "group": "src0"}
    png = np.asarray(Image.open(tmp_path / rows[0]["path"]))
    assert png.dtype == np.uint8
    np.testing.assert_array_equal(png, np.round(records[0]["image"] * 255).astype(np.uint8))


# ------------------------------------------------------------------ Keras augmenters
@pytest.fixture(scope="module")
def batch1():
    return np.random.default_rng(0).uniform(0.0, 1.0, (2, 24, 24, 1)).astype("float32")


def test_same_seed_same_output(batch1):
    a = np.asarray(A.augmenter_for("study05", seed=3)(batch1, training=True))
    b = np.asarray(A.augmenter_for("study05", seed=3)(batch1, training=True))
    c = np.asarray(A.augmenter_for("study05", seed=4)(batch1, training=True))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_training_false_is_identity(batch1):
    aug = A.augmenter_for("study05", seed=0)
    np.testing.assert_array_equal(np.asarray(aug(batch1, training=False)), batch1)


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_range_kept(channels):
    x = np.random.default_rng(1).uniform(0.0, 1.0, (2, 20, 28, channels)).astype("float32")
    for study in ("study04", "study05"):
        y = np.asarray(A.augmenter_for(study, seed=0)(x, training=True))
        assert y.shape == x.shape and y.dtype == np.float32
        assert y.min() >= 0.0 and y.max() <= 1.0


def test_study04_preset_layers():
    aug = A.augmenter_for("04", seed=5)
    assert [layer.name for layer in aug.layers] == ["random_rotation", "random_flip", "random_brightness"]
    rotation, flip, brightness = aug.layers
    assert rotation.get_config()["factor"] == pytest.approx((-10 / 360, 10 / 360))
    assert flip.get_config()["mode"] == "horizontal"
    assert tuple(brightness.get_config()["value_range"]) == (0.0, 1.0)
    assert [layer.get_config()["seed"] for layer in aug.layers] == [5, 6, 7]


def test_study05_preset_layers():
    names = [layer.name for layer in A.augmenter_for("study05").layers]
    assert names == ["random_rotation", "random_translation", "random_shear", "random_zoom", "random_flip"]


def test_unknown_study_rejected():
    with pytest.raises(ValueError, match="study='study01'"):
        A.augmenter_for("study01")


def test_augmenter_in_dataset_map(batch1):
    import tensorflow as tf

    aug = A.augmenter_for("study05", seed=0)
    ds = tf.data.Dataset.from_tensor_slices(batch1).batch(2).map(lambda x: aug(x, training=True))
    out = next(iter(ds)).numpy()
    assert out.shape == batch1.shape and np.all(np.isfinite(out))


# ------------------------------------------------------------------ class balancing
def test_class_weights_match_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 7 + [1] * 2 + [2] * 3)
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=y)
    got = A.class_weights(y)
    assert list(got) == [0, 1, 2]
    np.testing.assert_allclose([got[c] for c in (0, 1, 2)], expected)


def test_oversample_reaches_target_fraction_minimally():
    y = np.array([0] * 80 + [1] * 20)
    idx = A.oversample_indices(y, target_fraction=0.37, seed=0)
    # (20 + k) / (100 + k) >= 0.37  <=>  k >= 26.98  ->  k = 27, fraction 47/127
    assert idx.size == 127
    assert np.mean(y[idx] == 1) == pytest.approx(47 / 127)
    assert set(idx.tolist()) == set(range(100))
    np.testing.assert_array_equal(idx, A.oversample_indices(y, target_fraction=0.37, seed=0))


def test_oversample_default_balances():
    y = np.array([0] * 5 + [1] * 2 + [2] * 1)
    idx = A.oversample_indices(y, seed=1)
    assert np.bincount(y[idx]).tolist() == [5, 5, 5]


def test_oversample_already_above_target_keeps_all_once():
    y = np.array([0, 0, 1, 1])
    np.testing.assert_array_equal(A.oversample_indices(y, target_fraction=0.3), [0, 1, 2, 3])


def test_study04_transform_brightness_band():
    img = np.full((12, 12), 0.5, np.float32)  # rotation and flip keep a constant image
    rng = np.random.default_rng(0)
    for _ in range(20):
        out, desc = A.study04_transform(img, rng=rng)
        factor = float(out.mean()) / 0.5
        assert 0.1 - 1e-5 <= abs(factor - 1.0) <= 0.4 + 1e-5
        assert "rot" in desc and "bright" in desc


def test_augment_to_fraction_deterministic_keeps_groups():
    rng = np.random.default_rng(2)
    images = [rng.uniform(0.2, 0.8, (10, 10)).astype(np.float32) for _ in range(10)]
    labels = [0] * 8 + [1] * 2
    groups = [f"p{i}" for i in range(10)]
    recs = A.augment_to_fraction(images, labels, groups, target_fraction=0.37, seed=0)
    # (2 + k) / (10 + k) >= 0.37  ->  k = 3
    assert len(recs) == 13
    assert [r["aug"] for r in recs[:10]] == ["orig"] * 10
    assert all(r["label"] == 1 and r["source_id"] in {"p8", "p9"} for r in recs[10:])
    assert np.mean([r["label"] for r in recs]) >= 0.37
    again = A.augment_to_fraction(images, labels, groups, target_fraction=0.37, seed=0)
    for r1, r2 in zip(recs, again):
        assert r1["aug"] == r2["aug"]
        np.testing.assert_array_equal(r1["image"], r2["image"])


def test_augmented_records_write_with_groups(tmp_path):
    images = [np.full((4, 4), v, np.float32) for v in (0.2, 0.4, 0.6)]
    recs = A.augment_to_fraction(images, [0, 0, 1], ["a", "b", "c"], target_fraction=0.5, seed=0)
    manifest = A.write_offline_set(recs, tmp_path)
    with open(manifest, newline="") as fh:
        groups = [row["group"] for row in csv.DictReader(fh)]
    assert groups == ["a", "b", "c", "c"]


def test_sharpen_is_unsharp_mask_radius3():
    img = np.random.default_rng(3).uniform(0, 1, (16, 16)).astype(np.float32)
    np.testing.assert_array_equal(A.sharpen(img), P.unsharp_sharpen(img, amount=0.5, radius=3))
