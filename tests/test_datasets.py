"""Tests of osteo_tf.datasets: layouts, labels, manifests, quarantine, duplicates, read-only."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from osteo_tf import datasets
from osteo_tf.datasets import Dataset, DatasetError, canonical_label, find_dataset, format_summary
from osteo_tf.io import load_xray, pixel_sha256, save_png


def _img(path: Path, value: int, size: tuple[int, int] = (6, 5), fmt: str | None = None) -> Path:
    """Write a tiny grey image whose pixels encode ``value`` (distinct values -> distinct hashes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (np.arange(size[0] * size[1]).reshape(size) + value) % 256
    Image.fromarray(data.astype(np.uint8)).save(path, format=fmt)
    return path


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """Mixed formats and depths, a truncated file, a DICOM, a text file and junk."""
    root = tmp_path / "messy"
    _img(root / "Normal" / "a.png", 1)
    _img(root / "Normal" / "deeper" / "b.JPG", 2, fmt="JPEG")
    save_png(np.linspace(0, 1, 30).reshape(6, 5), root / "Normal" / "c16.png", bit_depth=16)
    _img(root / "osteoporosis" / "d.tif", 3)
    _img(root / "osteoporosis" / "e.bmp", 4)
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "osteoporosis" / "scan.dcm")
    data = _img(root / "osteoporosis" / "trunc.png", 5, size=(64, 64)).read_bytes()
    (root / "osteoporosis" / "trunc.png").write_bytes(data[: len(data) // 2])
    (root / "osteoporosis" / "notes.txt").write_text("labels checked by hand")
    (root / "osteoporosis" / "Thumbs.db").write_bytes(b"junk")
    (root / "osteoporosis" / ".DS_Store").write_bytes(b"junk")
    shutil.copy(root / "Normal" / "a.png", root / "osteoporosis" / "a_copy.png")
    (root / "__MACOSX" / "Normal").mkdir(parents=True)
    (root / "__MACOSX" / "Normal" / "._a.png").write_bytes(b"resource fork")
    return root


# ----------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Healthy", "normal"),
        ("NORMAL", "normal"),
        ("CN", "normal"),
        ("0", "normal"),
        ("OP", "osteoporosis"),
        ("Osteo-Porosis", "osteoporosis"),
        ("osteoporotic", "osteoporosis"),
        ("Osteopenia", "osteopenia"),
        ("osteopenic", "osteopenia"),
        ("Partially degraded", "partially_degraded"),
        ("partially_degraded", "partially_degraded"),
        ("Degraded", "degraded"),
    ],
)
def test_canonical_label(raw, expected):
    assert canonical_label(raw) == expected


def test_canonical_label_rejects_empty():
    with pytest.raises(ValueError, match="Received: name=' _ '"):
        canonical_label(" _ ")


# ----------------------------------------------------------------------------- class folders


def test_class_folders_with_aliases_and_mixed_case(tmp_path):
    _img(tmp_path / "Healthy" / "h1.png", 1)
    _img(tmp_path / "Healthy" / "h2.png", 2)
    _img(tmp_path / "OP" / "p1.png", 3)
    _img(tmp_path / "Osteopenia" / "q1.png", 4)
    ds = find_dataset(tmp_path)
    assert ds.source == "folders"
    assert ds.classes == ["normal", "osteopenia", "osteoporosis"]
    assert ds.summary()["classes"] == {"normal": 2, "osteopenia": 1, "osteoporosis": 1}
    assert list(ds.manifest["relpath"]) == sorted(ds.manifest["relpath"])
    assert list(ds.manifest["group"]) == list(ds.manifest["relpath"])  # one image, one group


def test_mendeley_layout_nested_wrapper_and_jpeg_extensions(tmp_path):
    top = tmp_path / "download" / "Osteoporosis Knee X-ray"
    _img(top / "normal" / "N1.jpg", 1, fmt="JPEG")
    _img(top / "osteopenia" / "OP13.JPEG", 2, fmt="JPEG")
    _img(top / "osteoporosis" / "OS40.Jpg", 3, fmt="JPEG")
    (top / "patient details.xlsx").write_bytes(b"PK not really")
    ds = find_dataset(tmp_path)
    assert ds.summary()["classes"] == {"normal": 1, "osteopenia": 1, "osteoporosis": 1}
    assert "download/Osteoporosis Knee X-ray/osteopenia/OP13.JPEG" in set(ds.manifest["relpath"])
    assert ds.quarantine.empty  # the xlsx next to the class folders is documentation, not data
    assert "Osteoporosis Knee X-ray" in ds.label_provenance


def test_messy_folder_reports_each_bad_file_with_reason(messy):
    ds = find_dataset(messy)
    reasons = {u["path"]: u["reason"] for u in ds.summary()["unreadable"]}
    assert set(reasons) == {"osteoporosis/notes.txt", "osteoporosis/trunc.png"}
    assert reasons["osteoporosis/notes.txt"] == "not an image file (extension .txt)"
    assert "truncated" in reasons["osteoporosis/trunc.png"]
    # a.png is filed under both classes (a_copy.png): a label conflict, quarantined on both sides
    assert ds.summary()["classes"] == {"normal": 2, "osteoporosis": 3}
    assert ds.conflicts == [["Normal/a.png", "osteoporosis/a_copy.png"]]
    conflict = ds.quarantine.set_index("relpath").loc["Normal/a.png"]
    assert conflict["kind"] == "conflict"
    assert conflict["reason"] == "label conflict: pixel-identical to osteoporosis/a_copy.png, filed as osteoporosis"


def test_messy_folder_reads_every_format_and_depth(messy):
    m = find_dataset(messy).manifest.set_index("relpath")
    assert m.loc["osteoporosis/scan.dcm", "format"] == "dicom"
    assert m.loc["Normal/c16.png", "bit_depth"] == 16
    assert m.loc["Normal/deeper/b.JPG", "format"] == "jpeg"
    assert {"tiff", "bmp", "png"} <= set(m["format"])
    assert all(Path(p).is_absolute() for p in m["path"])


def test_messy_folder_lists_pixel_identical_duplicates(messy):
    ds = find_dataset(messy)
    assert ds.duplicates == [["Normal/a.png", "osteoporosis/a_copy.png"]]
    assert ds.summary()["duplicates"] == ds.duplicates


def test_nothing_is_written_into_the_data_folder(messy):
    before = _snapshot(messy)
    ds = find_dataset(messy)
    format_summary(ds.summary())
    assert _snapshot(messy) == before


def test_order_is_deterministic_across_worker_counts(messy):
    one = find_dataset(messy, workers=1).manifest
    four = find_dataset(messy, workers=4).manifest
    pd.testing.assert_frame_equal(one, four)


def test_oversized_images_are_quarantined(tmp_path):
    _img(tmp_path / "normal" / "a.png", 1, size=(40, 40))
    _img(tmp_path / "osteoporosis" / "b.png", 2, size=(4, 4))
    ds = find_dataset(tmp_path, max_pixels=100)
    assert list(ds.quarantine["relpath"]) == ["normal/a.png"]
    assert "too large" in ds.quarantine["reason"][0]
    assert ds.summary()["classes"] == {"normal": 0, "osteoporosis": 1}  # the empty class stays visible


def test_image_outside_class_folder_is_quarantined(tmp_path):
    _img(tmp_path / "normal" / "a.png", 1)
    _img(tmp_path / "osteoporosis" / "b.png", 2)
    _img(tmp_path / "stray.png", 3)
    ds = find_dataset(tmp_path)
    assert "outside any class folder" in ds.quarantine.set_index("relpath").loc["stray.png", "reason"]


# ----------------------------------------------------------------------------- manifests


def test_manifest_csv_with_groups_and_extra_columns(tmp_path):
    _img(tmp_path / "imgs" / "1.png", 1)
    _img(tmp_path / "imgs" / "2.png", 2)
    _img(tmp_path / "imgs" / "3.png", 3)
    (tmp_path / "manifest.csv").write_text(
        "path,label,group,site\nimgs/1.png,Healthy,p1,left\nimgs/2.png,healthy,p1,right\nimgs/3.png,OP,p2,left\n"
    )
    ds = find_dataset(tmp_path)
    assert ds.source == "manifest"
    assert list(ds.manifest["label"]) == ["normal", "normal", "osteoporosis"]
    assert list(ds.manifest["group"]) == ["p1", "p1", "p2"]
    assert list(ds.manifest["site"]) == ["left", "right", "left"]
    assert ds.summary()["n_groups"] == 2


def test_manifest_given_as_csv_file_path(tmp_path):
    _img(tmp_path / "1.png", 1)
    (tmp_path / "list.csv").write_text("path,label\n1.png,normal\n")
    ds = find_dataset(tmp_path / "list.csv")
    assert list(ds.manifest["relpath"]) == ["1.png"]


def test_manifest_paths_escaping_the_folder_are_quarantined_unread(tmp_path):
    secret = _img(tmp_path / "outside.png", 9)
    data = tmp_path / "data"
    _img(data / "ok.png", 1)
    (data / "link.png").symlink_to(secret)
    (data / "manifest.csv").write_text(
        f"path,label\nok.png,normal\n../outside.png,normal\n{secret},osteoporosis\nlink.png,osteoporosis\n"
    )
    ds = find_dataset(data)
    assert list(ds.manifest["relpath"]) == ["ok.png"]
    reasons = dict(zip(ds.quarantine["relpath"], ds.quarantine["reason"]))
    assert "escapes the manifest folder" in reasons["../outside.png"]
    assert "absolute path not allowed" in reasons[str(secret)]
    assert "outside the manifest folder" in reasons["link.png"]


def test_manifest_tbs_without_label_is_allowed(tmp_path):
    _img(tmp_path / "1.png", 1)
    (tmp_path / "manifest.csv").write_text("path,tbs\n1.png,1.31\n")
    ds = find_dataset(tmp_path)
    assert ds.manifest["tbs"].tolist() == [1.31]
    assert ds.classes == []


def test_manifest_without_path_column_is_a_dataset_error(tmp_path):
    (tmp_path / "manifest.csv").write_text("file,label\n1.png,normal\n")
    with pytest.raises(DatasetError, match=r"path,label.*Received columns: \['file', 'label'\]"):
        find_dataset(tmp_path)


def test_synthetic_metadata_groups_by_patient(tmp_path):
    _img(tmp_path / "normal" / "i0.png", 1)
    _img(tmp_path / "normal" / "i1.png", 2)
    _img(tmp_path / "osteoporosis" / "i2.png", 3)
    pd.DataFrame(
        {
            "image_id": ["i0", "i1", "i2"],
            "patient_id": ["p0", "p0", "p1"],
            "label": ["normal", "normal", "osteoporosis"],
            "path": ["normal/i0.png", "normal/i1.png", "osteoporosis/i2.png"],
            "H": [0.3, 0.3, 0.5],
        }
    ).to_csv(tmp_path / "metadata.csv", index=False)
    ds = find_dataset(tmp_path)
    assert ds.source == "synthetic"
    assert list(ds.manifest["group"]) == ["p0", "p0", "p1"]
    assert ds.summary()["n_groups"] == 2
    assert "H" in ds.manifest.columns


# ----------------------------------------------------------------------------- errors and output


def test_missing_folder_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        find_dataset(tmp_path / "nope")


def test_folder_without_images_is_a_dataset_error(tmp_path):
    (tmp_path / "normal").mkdir()
    (tmp_path / "normal" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="no image files found"):
        find_dataset(tmp_path)


def test_single_class_is_not_an_error_in_find_dataset(tmp_path):
    _img(tmp_path / "normal" / "a.png", 1)
    assert isinstance(find_dataset(tmp_path), Dataset)


def test_summary_is_json_serialisable_with_contract_keys(messy):
    summary = json.loads(json.dumps(find_dataset(messy).summary()))
    assert {"n_images", "n_groups", "classes", "unreadable", "duplicates"} <= set(summary)
    assert summary["n_images"] == 5 and summary["bit_depths"] == {"8": 3, "16": 2}  # the twin a.png is quarantined
    assert summary["conflicts"] == [["Normal/a.png", "osteoporosis/a_copy.png"]]
    assert summary["near_duplicates"] == summary["conflicts"] and summary["source_splits"] == {}


def test_format_summary_names_classes_duplicates_and_bad_files(messy):
    text = format_summary(find_dataset(messy).summary())
    assert "osteoporosis  3" in text
    assert "Normal/a.png == osteoporosis/a_copy.png" in text
    assert "Label conflicts (one image filed under several classes; quarantined): 1" in text
    assert "Normal/a.png: label conflict: pixel-identical to osteoporosis/a_copy.png, filed as osteoporosis" in text
    assert "osteoporosis/notes.txt: not an image file (extension .txt)" in text


# ----------------------------------------------------------------------------- perceptual hashes


def _texture(seed, size=64):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random((size, size)), 2.0)
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def test_hashes_of_unrelated_images_are_far_apart():
    hs = np.stack([datasets.phash(_texture(s)) for s in range(6)])
    d = datasets.hamming(hs, hs)
    assert (np.diag(d) == 0).all()
    assert d[~np.eye(6, dtype=bool)].min() > 12
    dh = datasets.dhash(_texture(1))
    assert dh.shape == (64,)


def test_hamming_counts_differing_bits():
    a = np.array([[True, False, True], [False, False, False]])
    b = np.array([[True, True, True]])
    np.testing.assert_array_equal(datasets.hamming(a, b), [[1], [3]])
    with pytest.raises(ValueError, match="same length"):
        datasets.hamming(a, np.ones((1, 4), bool))
    with pytest.raises(ValueError, match="bool array"):
        datasets.hamming(a.astype(int), b)


def test_dihedral_gives_the_eight_named_transforms_identity_first():
    img = np.arange(6).reshape(2, 3)
    out = datasets.dihedral(img)
    assert len(out) == len(datasets.DIHEDRAL_TRANSFORMS) == 8
    np.testing.assert_array_equal(out[0], img)
    np.testing.assert_array_equal(out[1], np.fliplr(img))
    np.testing.assert_array_equal(out[2], np.rot90(img))
    assert len({o.tobytes() + bytes(o.shape) for o in out}) == 8  # all distinct for a generic image


def test_phash_rejects_non_2d_images_and_bad_sizes():
    with pytest.raises(ValueError, match=r"Received: image.shape=\(4,\)"):
        datasets.phash(np.zeros(4))
    with pytest.raises(ValueError, match="Received: size=1"):
        datasets.dhash(_texture(0), size=1)


def test_near_duplicate_pairs_works_on_hashes_alone():
    hashes = np.zeros((3, 4), bool)
    hashes[1, :2] = True  # 2 bits from image 0
    hashes[2] = True      # 4 bits from image 0, 2 from image 1
    variants = np.repeat(hashes[:, None, :], 8, axis=1).copy()
    variants[2, :, :] = True
    variants[2, 5] = False  # transform 5 of image 2 equals image 0
    pairs, nearest = datasets.near_duplicate_pairs(hashes, variants, threshold=1)
    assert pairs.to_dict("records") == [{"a": 0, "b": 2, "distance": 0, "transform": "rot180+flip"}]
    np.testing.assert_array_equal(nearest, [0, 2, 0])
    wider, _ = datasets.near_duplicate_pairs(hashes, variants, threshold=2)
    assert wider[["a", "b", "distance"]].values.tolist() == [[0, 1, 2], [0, 2, 0], [1, 2, 2]]
    empty, none = datasets.near_duplicate_pairs(hashes[:1], variants[:1], threshold=1)
    assert len(empty) == 0 and none.tolist() == [0]


def test_near_duplicate_pairs_rejects_mismatched_inputs():
    hashes = np.zeros((2, 4), bool)
    with pytest.raises(ValueError, match=r"variants must be an \(N, 8, B\)"):
        datasets.near_duplicate_pairs(hashes, np.zeros((2, 7, 4), bool), threshold=1)
    with pytest.raises(ValueError, match="Received: threshold=5"):
        datasets.near_duplicate_pairs(hashes, np.zeros((2, 8, 4), bool), threshold=5)


def test_near_duplicate_pairs_finds_a_rotated_contrast_changed_copy():
    from osteo_tf import augment

    imgs = [_texture(s) for s in range(4)]
    imgs.append(np.rot90(augment.study01_variants(imgs[1])["contrast+30_brightness-30"]).copy())
    hashes = np.stack([datasets.phash(im) for im in imgs])
    variants = np.stack([np.stack([datasets.phash(t) for t in datasets.dihedral(im)]) for im in imgs])
    pairs, nearest = datasets.near_duplicate_pairs(hashes, variants, threshold=6)
    assert pairs[["a", "b"]].values.tolist() == [[1, 4]]
    assert pairs["transform"].iloc[0] == "rot270"  # rotating the copy by 270 degrees undoes its 90
    assert nearest[1] <= 6 and nearest[0] > 6


# ----------------------------------------------------------------------------- rooted


def test_rooted_makes_paths_under_the_folder_and_keeps_other_columns(tmp_path):
    m = pd.DataFrame({"path": ["a/x.png", "b/y.png"], "label": ["normal", "osteoporosis"], "group": ["p1", "p2"]})
    out = datasets.rooted(m, tmp_path)
    assert out["path"].tolist() == [str(tmp_path / "a/x.png"), str(tmp_path / "b/y.png")]
    assert out["relpath"].tolist() == out["path"].tolist()
    assert out.columns.tolist() == ["path", "label", "group", "relpath"]
    assert m["path"].tolist() == ["a/x.png", "b/y.png"]  # the input is not modified
    assert "sha256" not in out.columns


def test_rooted_with_sha256_hashes_each_decoded_image(tmp_path):
    _img(tmp_path / "n" / "1.png", 3)
    _img(tmp_path / "n" / "2.png", 9)
    out = datasets.rooted(pd.DataFrame({"path": ["n/1.png", "n/2.png"]}), str(tmp_path), sha256=True)
    assert out["sha256"].tolist() == [pixel_sha256(load_xray(tmp_path / "n" / p)) for p in ("1.png", "2.png")]
    assert out["sha256"].iloc[0] != out["sha256"].iloc[1]


def test_rooted_rejects_a_manifest_without_usable_paths(tmp_path):
    with pytest.raises(ValueError, match="'path' column"):
        datasets.rooted(pd.DataFrame({"file": ["a.png"]}), tmp_path)
    with pytest.raises(ValueError, match="Received: path=nan"):
        datasets.rooted(pd.DataFrame({"path": ["a.png", float("nan")]}), tmp_path)
    with pytest.raises(TypeError, match="Received: folder=3"):
        datasets.rooted(pd.DataFrame({"path": ["a.png"]}), 3)


# ----------------------------------------------------------------------------- copy detection


def test_copy_hashes_are_shared_by_the_8_rotations_and_flips():
    img = _texture(7, size=80)[:, :72]  # not square: rot90 swaps the sides
    ref = datasets.copy_hashes(img)
    assert ref.shape[1] == datasets.COPY_HASH_BITS and 1 <= len(ref) <= 8
    for view in datasets.dihedral(img):
        probes = datasets.copy_hashes(np.ascontiguousarray(view))
        d = (probes[:, None, :] != ref[None, :, :]).sum(-1).min()
        assert d == 0


def test_copy_hashes_skip_tiny_and_constant_images():
    assert datasets.copy_hashes(np.zeros((6, 5))).shape == (0, datasets.COPY_HASH_BITS)
    assert datasets.copy_hashes(np.full((64, 64), 0.5)).shape == (0, datasets.COPY_HASH_BITS)


def test_copy_pairs_match_a_brute_force_search_in_any_block_size():
    rng = np.random.default_rng(0)
    hashes = rng.random((40, datasets.COPY_HASH_BITS)) < 0.5
    hashes[5] = hashes[3]
    hashes[9] = hashes[3] ^ (np.arange(datasets.COPY_HASH_BITS) < 3)  # 3 bits away
    owners = np.r_[np.arange(30), np.arange(10)]  # images 0-9 own two hashes each
    words = datasets.pack_hashes(hashes)
    d = (hashes[:, None, :] != hashes[None, :, :]).sum(-1)
    expect = {}
    for i in range(40):
        for j in range(40):
            a, b = sorted((owners[i], owners[j]))
            if a != b and d[i, j] <= 3:
                expect[(a, b)] = min(expect.get((a, b), 99), int(d[i, j]))
    for block in (7, 1 << 20):
        a, b, dist = datasets.copy_pairs(words, owners, threshold=3, block_elements=block)
        assert dict(zip(zip(a.tolist(), b.tolist()), dist.tolist())) == expect
    assert expect  # the planted pairs are there
    near = datasets.nearest_distances(words, owners, 30)
    assert near[3] == 0 and near[9] <= 3
