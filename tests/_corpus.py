"""A downloaded-corpus look-alike made in code: the layouts of merged Kaggle / Mendeley knee sets.

``make_corpus(root)`` writes, under ``root/Knee Corpus/``:

* split folders in mixed case (``Train/``, ``VAL/``, ``test/``), each with class folders in mixed
  case and aliases (``Normal``, ``normal``, ``OSTEOPOROSIS``, ``Osteopenia``...);
* distinct source images (synthetic knee radiographs of different patients) as .png / .jpg / .tif;
* pre-augmented copies of sources, each made with one transform (flip, rot90, brightness and
  contrast, JPEG re-encoding, rescaling) and filed in ANOTHER split folder than its source;
* one source with two copies (a copy group of three);
* a MONOCHROME1 / MONOCHROME2 DICOM pair of one image (pydicom's shipped CT_small.dcm, and the
  same pixels inverted and flagged MONOCHROME1) in two split folders;
* two cross-class twins (label conflicts): a pixel-identical copy and a rotated copy filed under
  the other class;
* an unreadable (truncated) image and a text file.

It returns a :class:`Corpus` that says which files form each copy group and each conflict, so
tests can check ``inspect``, the splits and the studies against it.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

TOP = "Knee Corpus"
CLASS_DIRS = {"Train": {"normal": "Normal", "osteopenia": "Osteopenia", "osteoporosis": "Osteoporosis"},
              "VAL": {"normal": "normal", "osteopenia": "osteopenia", "osteoporosis": "OSTEOPOROSIS"},
              "test": {"normal": "NORMAL", "osteopenia": "Osteopenia", "osteoporosis": "osteoporosis"}}
PATIENTS = {"normal": 10, "osteopenia": 8, "osteoporosis": 10}
SIZE = 96


@dataclass
class Corpus:
    root: Path
    copy_groups: list[list[str]] = field(default_factory=list)  # relpaths under root, within one class
    conflicts: list[list[str]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    n_sources: int = 0


def _u8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(image, np.float64) * 255), 0, 255).astype(np.uint8)


def _save(image: np.ndarray, path: Path, *, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF"}[ext]
    kwargs = {"quality": quality} if fmt == "JPEG" else {}
    Image.fromarray(_u8(image)).save(path, format=fmt, **kwargs)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(_u8(image)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf), np.float32) / 255.0


def _rescale(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape
    small = Image.fromarray(_u8(image)).resize((round(w * factor), round(h * factor)), Image.BILINEAR)
    return np.asarray(small, np.float32) / 255.0


TRANSFORMS = {
    "flip": (lambda x: np.fliplr(x), ".png"),
    "rot90": (lambda x: np.rot90(x), ".tif"),
    "brightness-contrast": (lambda x: np.clip(1.25 * x - 0.08, 0, 1), ".png"),
    "jpeg": (lambda x: _jpeg(x, 60), ".jpg"),
    "rescale": (lambda x: _rescale(x, 0.6), ".jpeg"),
}
"""The pre-augmentation of merged corpora: name -> (transform, extension of the copy)."""


def _split_of(i: int) -> str:
    return ("Train", "Train", "Train", "VAL", "test")[i % 5]


def _other_split(split: str) -> str:
    return {"Train": "test", "VAL": "Train", "test": "VAL"}[split]


def _dicom_pair(corpus: Corpus, base: Path) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    src = get_testdata_file("CT_small.dcm")
    a = base / "Train" / "Normal" / "CT0001.dcm"
    b = base / "test" / "NORMAL" / "CT0001_mono1.dcm"
    a.parent.mkdir(parents=True, exist_ok=True)
    b.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, a)
    ds = pydicom.dcmread(src)
    x = ds.pixel_array.astype(np.int32)
    inverted = (x.max() + x.min() - x).astype(ds.pixel_array.dtype)  # same image, stored inverted
    ds.PixelData = inverted.tobytes()
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(b)
    corpus.copy_groups.append(sorted(p.relative_to(corpus.root).as_posix() for p in (a, b)))


def make_corpus(root: Path, *, seed: int = 0) -> Corpus:
    """Write the corpus under ``root`` (which must not exist yet) and describe it."""
    from osteo_tf import io as oio
    from osteo_tf import synthetic

    root = Path(root)
    stage = root.parent / (root.name + "-sources")
    synthetic.write_dataset(stage, mode="knee", classes=3, patients=sum(PATIENTS.values()) + 6, size=SIZE,
                            seed=seed, images_per_patient=1)
    import pandas as pd

    meta = pd.read_csv(stage / "metadata.csv")
    corpus = Corpus(root=root)
    base = root / TOP
    sources: dict[str, list[tuple[str, np.ndarray]]] = {}
    exts = (".png", ".png", ".jpg", ".tif")
    for label, n in PATIENTS.items():
        rows = meta[meta["label"] == label].sort_values("image_id").head(n)
        assert len(rows) == n, (label, len(rows))
        for i, row in enumerate(rows.itertuples()):
            image = oio.load_xray(stage / row.path)
            split = _split_of(i)
            path = base / split / CLASS_DIRS[split][label] / f"{row.image_id}{exts[i % len(exts)]}"
            _save(image, path)
            rel = path.relative_to(root).as_posix()
            sources.setdefault(label, []).append((rel, oio.load_xray(path)))
            corpus.n_sources += 1
    shutil.rmtree(stage)

    def copy(label: str, k: int, name: str, *, into_label: str | None = None, suffix: str = "") -> str:
        rel, image = sources[label][k]
        fn, ext = TRANSFORMS[name]
        split = _other_split(rel.split("/")[1])
        target = into_label or label
        path = base / split / CLASS_DIRS[split][target] / f"{Path(rel).stem}_{name}{suffix}{ext}"
        _save(fn(image), path, quality=90)
        return path.relative_to(root).as_posix()

    # one copy per transform, each in another split folder than its source, same class
    for k, name in enumerate(TRANSFORMS):
        label = ("normal", "osteoporosis")[k % 2]
        corpus.copy_groups.append(sorted([sources[label][k][0], copy(label, k, name)]))
    # a source with two copies (a group of three)
    corpus.copy_groups.append(sorted([sources["osteopenia"][0][0], copy("osteopenia", 0, "flip"),
                                      copy("osteopenia", 0, "jpeg")]))
    _dicom_pair(corpus, base)
    # cross-class twins: a pixel-identical copy, and a rotated copy, filed under the other class
    rel, _ = sources["normal"][6]
    twin = base / "VAL" / CLASS_DIRS["VAL"]["osteoporosis"] / f"{Path(rel).stem}_twin{Path(rel).suffix}"
    twin.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / rel, twin)
    corpus.conflicts.append(sorted([rel, twin.relative_to(root).as_posix()]))
    corpus.conflicts.append(sorted([sources["osteoporosis"][7][0], copy("osteoporosis", 7, "rot90", into_label="normal")]))
    # an unreadable image and a note
    bad = base / "Train" / "Normal" / "scan_truncated.png"
    data = (root / sources["normal"][0][0]).read_bytes() if sources["normal"][0][0].endswith(".png") else b""
    bad.write_bytes(data[: len(data) // 3] or b"\x89PNG\r\n\x1a\n")
    corpus.unreadable.append(bad.relative_to(root).as_posix())
    (base / "README.txt").write_text("merged from three uploads\n")
    corpus.copy_groups.sort()
    corpus.conflicts.sort()
    return corpus


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (relative path -> digest), to prove nothing changed."""
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}
