"""Find a dataset on disk and describe it as a manifest, without ever writing into it.

Three layouts are recognised, in this order:

1. a manifest CSV (``root`` is a ``.csv`` file, ``root/manifest.csv`` exists, or ``manifest=`` is
   given) with columns ``path,label[,group]``; paths are relative to the CSV's folder. A ``tbs``
   column may replace ``label`` (study 04). Extra columns are kept.
2. ``root/metadata.csv`` written by ``osteo-tf synth``: ``group`` = ``patient_id``.
3. class folders, ``root/<class>/**/<image>``, possibly wrapped in any number of single folders
   (``root/Osteoporosis Knee X-ray/normal/N1.jpg``). Folder names go through
   :func:`canonical_label`. Non-image files directly in the class root (``patient details.xlsx``,
   a README) are ignored; inside class folders they are quarantined with a reason. Split folders
   (``train``, ``val``, ``valid``, ``validation``, ``test`` in any case, at any depth above the
   class folders: ``root/Train/Normal``, ``root/data/VAL/normal``) are merged: their class folders
   become one set of classes and the uploader's split is kept in column ``source_split``
   (``train`` / ``val`` / ``test``; ``""`` without split folders). A manifest's ``split`` or
   ``source_split`` column fills the same column.

Every candidate file is decoded once (:func:`osteo_tf.io.load_xray_with_info`, in a small thread
pool, results in a deterministic order). A file that cannot be used goes to the quarantine
table with a reason; one bad file never stops the scan and none is dropped silently.
Pixel-identical images (same :func:`osteo_tf.io.pixel_sha256`) are listed as duplicates.

Copies are found in the same pass: every image gets :func:`copy_hashes` (a perceptual hash of its
canonical orientation, so the 8 rotations / flips share it; robust to brightness / contrast,
re-encoding and rescaling), all hashes are compared at once (:func:`copy_pairs`, vectorised) and
images within :data:`COPY_THRESHOLD` bits, or pixel-identical, are joined into copy groups
(connected components). A copy group whose images all carry one label is kept, and its images
get one ``group`` (their patients' groups are merged), so a split keeps them together; its
members share column ``copy_group``. A copy group filed under two or more labels is a label
conflict: every member is quarantined with a reason naming its twin ("pixel-identical to
val/Normal/X001.png, filed as normal"), so it is never trained or tested on.

Near-duplicates (copies that were flipped, rotated, re-exposed, re-encoded or rescaled) are found
with perceptual hashes: :func:`phash` and :func:`dhash` of an image, :func:`dihedral` for its 8
rotations / flips, :func:`hamming` distances between hashes and :func:`near_duplicate_pairs`, the
search over every pair of images, which works on the hashes alone.

:func:`rooted` turns the manifest of an image set a workflow wrote itself (paths relative to the
folder it wrote them to) into a manifest of usable paths.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from osteo_tf._phash import (
    COPY_HASH_BITS,
    COPY_THRESHOLD,
    DIHEDRAL_TRANSFORMS,
    HASH_BITS,
    copy_hashes,
    copy_pairs,
    dhash,
    dihedral,
    hamming,
    near_duplicate_pairs,
    nearest_distances,
    pack_hashes,
    phash,
)
from osteo_tf.io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageLoadError,
    is_image_candidate,
    load_xray,
    load_xray_with_info,
    pixel_sha256,
)

__all__ = [
    "COPY_HASH_BITS",
    "COPY_THRESHOLD",
    "DIHEDRAL_TRANSFORMS",
    "HASH_BITS",
    "Dataset",
    "DatasetError",
    "canonical_label",
    "canonical_split",
    "copy_hashes",
    "copy_pairs",
    "dhash",
    "dihedral",
    "find_dataset",
    "format_summary",
    "hamming",
    "near_duplicate_pairs",
    "nearest_distances",
    "pack_hashes",
    "phash",
    "quarantine_mixed_copies",
    "rooted",
    "select_classes",
]

_ALIASES: dict[str, str] = {
    **dict.fromkeys(["healthy", "normal", "cn", "control", "ct", "negative", "0"], "normal"),
    **dict.fromkeys(["osteoporosis", "op", "os", "osteoporotic", "porosis"], "osteoporosis"),
    **dict.fromkeys(["osteopenia", "osteopenic", "penia"], "osteopenia"),
    **dict.fromkeys(["partiallydegraded"], "partially_degraded"),
}
_JUNK_FILES = {".ds_store", "thumbs.db", "desktop.ini"}
_SKIP_DIRS = {"__macosx"}
_MAX_WRAPPER_DEPTH = 16
_SPLITS: dict[str, str] = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_COLUMNS = ["path", "relpath", "label", "group", "sha256", "height", "width", "bit_depth", "format", "source_split",
            "copy_group"]
_QUARANTINE_COLUMNS = ["path", "relpath", "label", "reason", "kind"]
_PAIR_COLUMNS = ["a", "b", "distance", "pixel_identical"]
_TEXT_COLUMNS = {"path", "label", "label_name", "group", "patient_id", "image_id", "split", "source_split"}
_KEY_COLUMNS = _TEXT_COLUMNS | {"tbs"}


class DatasetError(ValueError):
    """The dataset root cannot be used at all (missing, empty, or a malformed manifest)."""


def canonical_split(name: str) -> str | None:
    """``"train"``, ``"val"`` or ``"test"`` for a split folder's name (``Train``, ``VAL``,
    ``valid``, ``Validation``, ``TEST``: any case, spaces / underscores / hyphens ignored), else None."""
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str. Received: name={name!r}")
    return _SPLITS.get(re.sub(r"[\s_\-]+", "", name.lower()))


def canonical_label(name: str) -> str:
    """Normalise a class name from a folder or a manifest.

    Matching ignores case, spaces, underscores and hyphens. ``healthy``, ``normal``, ``CN``,
    ``control``, ``CT``, ``negative``, ``0`` -> ``"normal"``; ``osteoporosis``, ``OP``, ``OS``,
    ``osteoporotic``, ``porosis`` -> ``"osteoporosis"``; ``osteopenia``, ``osteopenic``, ``penia``
    -> ``"osteopenia"``. Note that the Mendeley knee set names its osteopenia FILES ``OP13``; its
    labels come from folder names, so this alias never applies there. Any other name is kept,
    lower-cased, with spaces and hyphens turned into ``_`` (``"Partially degraded"`` ->
    ``"partially_degraded"``).

    Args:
        name: the raw class name.

    Returns:
        The canonical label.
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str. Received: name={name!r}")
    key = re.sub(r"[\s_\-]+", "", name.lower())
    if not key:
        raise ValueError(f"`name` must contain a class name. Received: name={name!r}")
    if key in _ALIASES:
        return _ALIASES[key]
    return re.sub(r"_+", "_", re.sub(r"[\s\-]+", "_", name.strip().lower())).strip("_")


@dataclass
class Dataset:
    """A scanned dataset.

    Attributes:
        root: the folder (or the manifest's folder) all ``relpath`` values are relative to.
        manifest: one row per readable image: path (absolute), relpath, label, group, sha256,
            height, width, bit_depth, format, then any extra manifest columns.
            ``source_split`` is the uploader's split folder (``""`` when none), ``copy_group`` the
            first relpath of the image's copy group (``""`` when it has no copy).
        quarantine: one row per unusable file: path, relpath, label (or None), reason, kind
            (``"unreadable"`` or ``"conflict"``).
        duplicates: groups (size >= 2) of relpaths of pixel-identical images (quarantined
            conflicts included).
        source: ``"folders"``, ``"manifest"`` or ``"synthetic"``.
        label_provenance: where the labels came from, for reports.
        copies: every copy group (size >= 2, relpaths; pixel-identical and conflicting ones
            included), whole.
        conflicts: the copy groups filed under more than one label (all quarantined).
        copy_pairs: the pairs behind the groups: ``a``, ``b`` (relpaths), ``distance`` (bits of
            :data:`COPY_HASH_BITS`), ``pixel_identical``.
        nearest: each readable image's hash distance to its nearest other image (index relpath),
            for reports of how far distinct images lie apart.
    """

    root: Path
    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    duplicates: list[list[str]] = field(default_factory=list)
    source: str = "folders"
    label_provenance: str = ""
    copies: list[list[str]] = field(default_factory=list)
    conflicts: list[list[str]] = field(default_factory=list)
    copy_pairs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=_PAIR_COLUMNS))
    nearest: pd.Series = field(default_factory=lambda: pd.Series(dtype="int64"))
    split_of: dict[str, str] = field(default_factory=dict)
    """The uploader's split folder of every readable image (conflicts included), by relpath."""

    @property
    def unreadable(self) -> pd.DataFrame:
        """The quarantined files that could not be read (not the label conflicts)."""
        return self.quarantine[self.quarantine["kind"] != "conflict"]

    def source_splits(self) -> dict[str, int]:
        """Readable images per uploader's split folder (conflicts included); ``{}`` without any."""
        counts: dict[str, int] = {}
        for name in self.split_of.values():
            if name:
                counts[name] = counts.get(name, 0) + 1
        order = {"train": 0, "val": 1, "test": 2}
        return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], 3), kv[0])))

    def split_leaks(self) -> list[list[str]]:
        """Copy groups whose images sit in more than one of the uploader's split folders."""
        return [g for g in self.copies if len({self.split_of.get(r, "") for r in g} - {""}) > 1]

    @property
    def classes(self) -> list[str]:
        """Sorted labels that have at least one readable image."""
        return sorted(str(x) for x in self.manifest["label"].dropna().unique())

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (keys: n_images, n_groups, classes, unreadable, duplicates, ...)."""
        m = self.manifest
        counts = {str(k): int(v) for k, v in m["label"].dropna().value_counts().items()}
        for label in self.quarantine["label"].dropna().unique():
            counts.setdefault(str(label), 0)  # a class whose every file is unreadable
        sizes: dict[str, int] = {}
        if len(m):
            sizes = {
                "distinct": int(m[["height", "width"]].drop_duplicates().shape[0]),
                "min_height": int(m["height"].min()),
                "max_height": int(m["height"].max()),
                "min_width": int(m["width"].min()),
                "max_width": int(m["width"].max()),
            }
        unreadable = self.unreadable
        return {
            "root": str(self.root),
            "source": self.source,
            "label_provenance": self.label_provenance,
            "n_images": int(len(m)),
            "n_groups": int(m["group"].nunique()),
            "classes": dict(sorted(counts.items())),
            "n_unreadable": int(len(unreadable)),
            "unreadable": [{"path": str(r.relpath), "reason": str(r.reason)} for r in unreadable.itertuples()],
            "n_quarantined": int(len(self.quarantine)),
            "quarantined": [{"path": str(r.relpath), "reason": str(r.reason)} for r in self.quarantine.itertuples()],
            "duplicates": [list(g) for g in self.duplicates],
            "near_duplicates": [list(g) for g in self.copies],
            "conflicts": [list(g) for g in self.conflicts],
            "source_splits": self.source_splits(),
            "source_split_leaks": self.split_leaks(),
            "copy_threshold": f"{COPY_THRESHOLD} of {COPY_HASH_BITS} bits",
            "bit_depths": {str(k): int(v) for k, v in sorted(m["bit_depth"].value_counts().items())},
            "formats": {str(k): int(v) for k, v in sorted(m["format"].value_counts().items())},
            "sizes": sizes,
        }


@dataclass
class _Entry:
    path: Path
    relpath: str
    label: str | None
    group: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    reject: str | None = None  # set when the file must not even be opened
    split: str = ""  # the uploader's split folder (canonical name), "" when none


def find_dataset(
    root: str | os.PathLike,
    *,
    manifest: str | os.PathLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
) -> Dataset:
    """Scan a dataset folder or manifest; decode every image once; never write anything.

    Args:
        root: a folder (class folders, ``manifest.csv`` or ``metadata.csv`` inside) or a CSV.
        manifest: a manifest CSV to use instead (relative paths are relative to ``root``).
        max_pixels: images larger than this are quarantined (checked before decoding).
        workers: decoding threads (default: 2 to 4 depending on the CPU count).

    Returns:
        A :class:`Dataset`. Fewer than two classes is not an error here.

    Raises:
        DatasetError: ``root`` or the manifest is missing, unreadable, or holds no image file.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"`root` must be a str or os.PathLike. Received: root={root!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"`workers` must be a positive int or None. Received: workers={workers!r}")
    root_path = Path(os.path.abspath(Path(root).expanduser()))
    if not root_path.exists():
        raise DatasetError(
            f"{root}: dataset folder not found (expected a folder of class sub-folders such as "
            "normal/ and osteoporosis/, or a manifest CSV with columns path,label[,group])"
        )
    csv: Path | None = None
    if manifest is not None:
        csv = Path(manifest).expanduser()
        csv = csv if csv.is_absolute() else root_path / csv
        if not csv.is_file():
            raise DatasetError(f"{manifest}: manifest CSV not found. Received: manifest={manifest!r}")
    elif root_path.is_file():
        if root_path.suffix.lower() != ".csv":
            raise DatasetError(f"{root}: expected a dataset folder or a manifest .csv file")
        csv = root_path
    elif (root_path / "manifest.csv").is_file():
        csv = root_path / "manifest.csv"

    if csv is not None:
        base = Path(os.path.abspath(csv.parent))
        entries = _manifest_entries(csv, base, synthetic=False)
        source, provenance = "manifest", f"manifest {csv.name} (column 'label')"
    elif (root_path / "metadata.csv").is_file():
        base = root_path
        entries = _manifest_entries(root_path / "metadata.csv", base, synthetic=True)
        source, provenance = "synthetic", "synthetic generator metadata.csv (latent class of each patient)"
    else:
        base = root_path
        entries, class_roots = _folder_entries(root_path)
        source = "folders"
        wheres = [r.relative_to(root_path).as_posix() for r in class_roots]
        if wheres == ["."]:
            provenance = "class folder names"
        else:
            provenance = "class folder names under " + ", ".join(f"{w}/" if w != "." else "./" for w in wheres)
        if any(e.split for e in entries):
            provenance += " (the uploader's split folders are merged and kept as column source_split)"
    if source == "folders" and not any(e.reject is None for e in entries):
        others = f"; found {len(entries)} other file(s)" if entries else ""
        raise DatasetError(
            f"{root}: no image files found (expected {root}/<class>/*.png|jpg|tif|bmp|dcm, or a manifest "
            f"CSV with columns path,label[,group]){others}"
        )
    return _build(base, entries, source, provenance, max_pixels, workers)


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable, multi-line text of :meth:`Dataset.summary`."""
    if not isinstance(summary, dict):
        raise TypeError(f"`summary` must be a dict from Dataset.summary(). Received: {type(summary).__name__}")
    missing = [k for k in ("n_images", "n_groups", "classes", "unreadable", "duplicates") if k not in summary]
    if missing:
        raise ValueError(f"`summary` lacks keys {missing}. Received keys: {sorted(summary)}")
    lines = []
    if "root" in summary:
        lines.append(f"Dataset: {summary['root']} (source: {summary.get('source', '?')})")
    if summary.get("label_provenance"):
        lines.append(f"Labels from: {summary['label_provenance']}")
    unreadable = summary["unreadable"]
    n_conflicted = len(summary.get("quarantined", [])) - len(unreadable)
    lines.append(
        f"Images: {summary['n_images']} usable, {len(unreadable)} unreadable"
        + (f", {n_conflicted} quarantined as label conflicts" if n_conflicted > 0 else "")
        + f"; groups: {summary['n_groups']}"
    )
    lines.append("Classes:")
    width = max((len(c) for c in summary["classes"]), default=0)
    for name, count in summary["classes"].items():
        lines.append(f"  {name:<{width}}  {count}")
    if not summary["classes"]:
        lines.append("  (none)")
    sizes = summary.get("sizes") or {}
    if sizes:
        lines.append(
            f"Sizes (HxW): {sizes['min_height']}x{sizes['min_width']} to {sizes['max_height']}x{sizes['max_width']}"
            f" ({sizes['distinct']} distinct)"
        )
    if summary.get("bit_depths"):
        lines.append("Bit depths: " + ", ".join(f"{k}-bit: {v}" for k, v in summary["bit_depths"].items()))
    if summary.get("formats"):
        lines.append("Formats: " + ", ".join(f"{k}: {v}" for k, v in summary["formats"].items()))
    if summary.get("source_splits"):
        lines.append("Uploader's split folders (merged; kept as source_split): "
                     + ", ".join(f"{k}: {v}" for k, v in summary["source_splits"].items()))
        leaks = summary.get("source_split_leaks") or []
        lines.append(f"  copy groups across the uploader's split: {len(leaks)}")
        lines.extend("    " + " ~ ".join(group) for group in leaks)
    dups = summary["duplicates"]
    lines.append(f"Pixel-identical duplicates: {len(dups)} group(s)")
    lines.extend("  " + " == ".join(group) for group in dups)
    if "near_duplicates" in summary:
        near = summary["near_duplicates"]
        where = f" (copy hash within {summary['copy_threshold']})" if summary.get("copy_threshold") else ""
        lines.append(f"Copy groups (flips, rotations, brightness, re-encoding, rescaling; pixel-identical included)"
                     f"{where}: {len(near)} group(s); each is kept on one side of every split, or quarantined "
                     "when filed under several classes")
        lines.extend("  " + " ~ ".join(group) for group in near)
    if "conflicts" in summary:
        lines.append(f"Label conflicts (one image filed under several classes; quarantined): {len(summary['conflicts'])}")
        lines.extend("  " + " ~ ".join(group) for group in summary["conflicts"])
    lines.append(f"Unreadable files: {len(unreadable)}")
    lines.extend(f"  {u['path']}: {u['reason']}" for u in unreadable)
    conflicted = [q for q in summary.get("quarantined", []) if q not in unreadable]
    if conflicted:
        lines.append(f"Quarantined for a label conflict: {len(conflicted)}")
        lines.extend(f"  {q['path']}: {q['reason']}" for q in conflicted)
    return "\n".join(lines)


def rooted(manifest: pd.DataFrame, folder: str | os.PathLike, *, sha256: bool = False) -> pd.DataFrame:
    """A copy of ``manifest`` whose ``path`` values, relative to ``folder``, become paths under it.

    For image sets a workflow writes itself (offline augmentation, LIME-masked copies), whose
    manifest lists each file relative to the folder it was written to: ``path`` becomes
    ``str(Path(folder) / path)`` and ``relpath`` the same string (such a set lies outside any
    dataset root, so there is nothing shorter to be relative to). Every other column is kept.

    Args:
        manifest: rows with a ``path`` column of non-empty relative path strings.
        folder: the folder the paths are relative to.
        sha256: also set column ``sha256`` to each decoded image's :func:`osteo_tf.io.pixel_sha256`
            (what :func:`find_dataset` records), reading every file once.

    Returns:
        The new DataFrame (``manifest`` is not modified).

    Raises:
        TypeError: ``manifest`` is not a DataFrame or ``folder`` not a path.
        ValueError: no ``path`` column, or a path that is not a non-empty string.
        osteo_tf.io.ImageLoadError: with ``sha256=True``, a file that cannot be read.
    """
    if not isinstance(manifest, pd.DataFrame):
        raise TypeError(f"`manifest` must be a pandas DataFrame. Received: manifest={type(manifest).__name__}")
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"`folder` must be a str or os.PathLike. Received: folder={folder!r}")
    if "path" not in manifest.columns:
        raise ValueError(f"`manifest` must have a 'path' column. Received columns: {list(manifest.columns)}")
    bad = [p for p in manifest["path"] if not isinstance(p, str) or not p]
    if bad:
        raise ValueError(f"every manifest path must be a non-empty string. Received: path={bad[0]!r}")
    out = manifest.copy()
    out["path"] = [str(Path(folder) / p) for p in out["path"]]
    out["relpath"] = out["path"]
    if sha256:
        out["sha256"] = [pixel_sha256(load_xray(p)) for p in out["path"]]
    return out


def select_classes(manifest: pd.DataFrame, classes: tuple[str, ...] | list[str]
                   ) -> tuple[pd.DataFrame, dict[str, str], dict[str, int]]:
    """Keep the classes a study uses, merging ``source=target`` entries first.

    Names go through :func:`canonical_label` (``"OP"`` keeps ``osteoporosis``). An empty
    ``classes`` keeps every class.

    Args:
        manifest: rows with a ``label`` column.
        classes: class names to keep and ``source=target`` merges (``StudySettings.classes``).

    Returns:
        ``(manifest, merged, dropped)``: the kept rows (a copy, index reset; merged rows carry
        their target label), ``merged`` source -> target for the merges that applied, and
        ``dropped`` label -> images removed because their class is not used.
    """
    if not isinstance(manifest, pd.DataFrame) or "label" not in manifest.columns:
        raise ValueError("`manifest` must be a DataFrame with a 'label' column. "
                         f"Received: {type(manifest).__name__}")
    if not classes:
        return manifest.reset_index(drop=True), {}, {}
    keep, merges = set(), {}
    for entry in classes:
        if "=" in entry:
            src, dst = (canonical_label(p.strip()) for p in entry.split("=", 1))
            merges[src] = dst
            keep.add(dst)
        else:
            keep.add(canonical_label(entry))
    labels = manifest["label"].map(lambda v: merges.get(v, v) if isinstance(v, str) else v)
    present = set(manifest["label"].dropna().astype(str))
    merged = {k: v for k, v in merges.items() if k in present}
    used = labels.isin(keep)
    dropped = {str(k): int(v) for k, v in manifest.loc[~used, "label"].value_counts().sort_index().items()}
    out = manifest.assign(label=labels)[used].reset_index(drop=True)
    return out, merged, dropped


def quarantine_mixed_copies(manifest: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Move out copy groups whose images carry different labels after relabelling.

    :func:`find_dataset` quarantines copies filed under two classes; labels derived later (study
    04's TBS ranges, a ``classes`` merge) can still put copies of one image under two labels.

    Returns:
        ``(kept rows, quarantine rows)``; the quarantine rows have :class:`Dataset`'s quarantine
        columns with kind ``"conflict"``.
    """
    if "copy_group" not in manifest.columns or not len(manifest):
        return manifest, pd.DataFrame(columns=_QUARANTINE_COLUMNS)
    linked = manifest[manifest["copy_group"].astype(str) != ""]
    n_labels = linked.groupby("copy_group")["label"].nunique()
    mixed = set(n_labels[n_labels > 1].index)
    if not mixed:
        return manifest, pd.DataFrame(columns=_QUARANTINE_COLUMNS)
    bad = manifest["copy_group"].isin(mixed)
    rows = []
    for r in manifest[bad].itertuples():
        others = manifest[(manifest["copy_group"] == r.copy_group) & (manifest["label"] != r.label)]
        other = others.iloc[0]
        rows.append({"path": r.path, "relpath": r.relpath, "label": r.label, "kind": "conflict",
                     "reason": f"label conflict: copy of {other['relpath']}, labelled {other['label']}"})
    return manifest[~bad].reset_index(drop=True), pd.DataFrame(rows, columns=_QUARANTINE_COLUMNS)


# ----------------------------------------------------------------------------- discovery


def _visible(p: Path) -> bool:
    return not p.name.startswith(".") and p.name.lower() not in _SKIP_DIRS


def _listdir(folder: Path) -> tuple[list[Path], list[Path]]:
    children = sorted((c for c in folder.iterdir() if _visible(c)), key=lambda c: c.name)
    return [c for c in children if c.is_dir()], [c for c in children if c.is_file()]


def _has_images(files: list[Path]) -> bool:
    return any(f.suffix.lower() in IMAGE_EXTENSIONS for f in files)


def _is_wrapper(folder: Path) -> bool:
    """A lone sub-folder is a wrapper unless it looks like a class (known label, or images in it)
    or is a split folder."""
    if re.sub(r"[\s_\-]+", "", folder.name.lower()) in _ALIASES or canonical_split(folder.name):
        return False
    subdirs, files = _listdir(folder)
    return bool(subdirs) and not _has_images(files)


def _descend(folder: Path) -> Path:
    """Through single wrapper folders, stopping at a level that holds split folders."""
    for _ in range(_MAX_WRAPPER_DEPTH):
        subdirs, files = _listdir(folder)
        if any(canonical_split(d.name) for d in subdirs):
            break
        if len(subdirs) != 1 or _has_images(files) or not _is_wrapper(subdirs[0]):
            break
        folder = subdirs[0]
    return folder


def _class_roots(root: Path) -> list[tuple[Path, str]]:
    """(folder holding class folders, uploader's split) pairs: one per split folder, or the root."""
    top = _descend(root)
    subdirs, _ = _listdir(top)
    split_dirs = [d for d in subdirs if canonical_split(d.name)]
    if not split_dirs:
        return [(top, "")]
    out = [(_descend(d), canonical_split(d.name) or "") for d in split_dirs]
    others = [d for d in subdirs if not canonical_split(d.name)]
    if others:  # class folders beside the split folders: read them too, without a source split
        out.append((top, ""))
    return out


def _folder_entries(root: Path) -> tuple[list[_Entry], list[Path]]:
    if not root.is_dir():
        raise DatasetError(f"{root}: expected a dataset folder")
    entries: list[_Entry] = []
    roots = _class_roots(root)
    for class_root, split in roots:
        subdirs, files = _listdir(class_root)
        for f in files:
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                rel = f.relative_to(root).as_posix()
                entries.append(_Entry(f, rel, None, reject="image outside any class folder (expected <root>/<class>/<file>)",
                                      split=split))
        for folder in subdirs:
            if not split and canonical_split(folder.name) and len(roots) > 1:
                continue  # a split folder, read as its own class root
            label = canonical_label(folder.name)
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in _SKIP_DIRS)
                for name in sorted(filenames):
                    if name.startswith(".") or name.lower() in _JUNK_FILES:
                        continue
                    path = Path(dirpath) / name
                    rel = path.relative_to(root).as_posix()
                    if is_image_candidate(path):
                        entries.append(_Entry(path, rel, label, split=split))
                    else:
                        entries.append(_Entry(path, rel, label, reject=f"not an image file (extension {path.suffix})",
                                              split=split))
    entries.sort(key=lambda e: e.relpath)
    return entries, [r for r, _ in roots]


def _read_csv(csv: Path) -> pd.DataFrame:
    try:
        header = pd.read_csv(csv, nrows=0).columns
        dtype = {c: str for c in header if str(c).strip().lower() in _TEXT_COLUMNS}
        df = pd.read_csv(csv, dtype=dtype)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DatasetError(f"{csv}: cannot read manifest CSV ({exc})") from None
    # key columns match in any case; other columns (H, T_latent, ...) keep their names
    df.columns = [str(c).strip().lower() if str(c).strip().lower() in _KEY_COLUMNS else str(c) for c in df.columns]
    if df.columns.duplicated().any():
        raise DatasetError(f"{csv}: duplicate column names. Received columns: {list(df.columns)}")
    return df


def _manifest_entries(csv: Path, base: Path, *, synthetic: bool) -> list[_Entry]:
    df = _read_csv(csv)
    cols = set(df.columns)
    if synthetic and "path" not in cols and {"image_id", "label"} <= cols:
        folder = df["label_name"] if "label_name" in cols else df["label"]
        df["path"] = folder.astype(str) + "/" + df["image_id"].astype(str) + ".png"
        cols.add("path")
    label_col = "label"
    if "label_name" in cols and "label" in cols and df["label"].dropna().astype(str).str.fullmatch(r"\d+").all():
        label_col = "label_name"  # numeric class index next to its name
    if "path" not in cols or not ({"label", "tbs"} & cols):
        raise DatasetError(
            f"{csv}: a manifest needs columns path,label[,group] (or path,tbs). Received columns: {sorted(cols)}"
        )
    if len(df) == 0:
        raise DatasetError(f"{csv}: manifest has no rows")
    group_col = "group" if "group" in cols else ("patient_id" if "patient_id" in cols else None)
    split_col = "source_split" if "source_split" in cols else ("split" if "split" in cols else None)
    consumed = {"path", "label", "group", "split", "source_split"}
    extra_cols = [c for c in df.columns if c not in consumed]
    rename = {c: (f"{c}_manifest" if c in _COLUMNS else c) for c in extra_cols}
    real_base = os.path.realpath(base)
    entries = []
    for i, row in enumerate(df.to_dict("records")):
        raw = row["path"]
        label_raw = row.get(label_col)
        label = canonical_label(str(label_raw)) if isinstance(label_raw, str) and label_raw.strip() else None
        group = row.get(group_col) if group_col else None
        group = str(group) if group is not None and not pd.isna(group) else None
        extra = {rename[c]: row[c] for c in extra_cols}
        split_raw = row.get(split_col) if split_col else None
        split = (canonical_split(split_raw) or str(split_raw).strip().lower()) if isinstance(split_raw, str) and split_raw.strip() else ""
        if not isinstance(raw, str) or not raw.strip():
            entries.append(_Entry(base, f"<row {i + 2}>", label, group, extra, reject="empty path in manifest", split=split))
            continue
        norm = raw.strip().replace("\\", "/")
        rel = PurePosixPath(norm)
        reject = None
        if rel.is_absolute() or re.match(r"^[A-Za-z]:", norm):
            reject = f"absolute path not allowed in a manifest (paths are relative to {base})"
        elif ".." in rel.parts:
            reject = "path escapes the manifest folder via '..'"
        else:
            real = os.path.realpath(base / rel)
            if os.path.commonpath([real, real_base]) != real_base:
                reject = "path resolves outside the manifest folder (symlink)"
        rel_str = raw if reject else rel.as_posix()
        entries.append(_Entry(base / rel if not reject else Path(norm), rel_str, label, group, extra, reject, split))
    return entries


# ----------------------------------------------------------------------------- decoding


def _probe(path: Path, max_pixels: int) -> tuple[Any, str, np.ndarray] | str:
    """(ImageInfo, sha256, copy hashes) of a readable image, else the reason it is unusable."""
    try:
        image, info = load_xray_with_info(path, max_pixels=max_pixels)
        return info, pixel_sha256(image), copy_hashes(image)
    except ImageLoadError as exc:
        return exc.reason
    except Exception as exc:  # recorded in the quarantine with its type, never fatal
        return f"unexpected error while reading ({type(exc).__name__}: {exc})"


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component label of each of ``n`` nodes joined by edges ``a[k] - b[k]``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _copy_structure(rows: list[dict], probes: list[np.ndarray]) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """Copy components of the readable images: (component per row, pairs table, nearest distances)."""
    n = len(rows)
    counts = np.array([len(p) for p in probes], int)
    if n and counts.sum():
        words = pack_hashes(np.concatenate([p for p in probes if len(p)]))
        owners = np.repeat(np.arange(n), counts)
        a, b, dist = copy_pairs(words, owners, threshold=COPY_THRESHOLD)
        nearest = nearest_distances(words, owners, n)
    else:
        a = b = dist = np.zeros(0, np.int64)
        nearest = np.full(n, COPY_HASH_BITS + 1, np.int64)
    shas = [r["sha256"] for r in rows]
    first_of: dict[str, int] = {}
    ia, ib = [], []
    for k, sha in enumerate(shas):  # pixel-identical images are copies even without a hash (tiny images)
        if sha in first_of:
            ia.append(first_of[sha])
            ib.append(k)
        else:
            first_of[sha] = k
    ident = np.array([shas[x] == shas[y] for x, y in zip(a, b)], bool)
    extra = {(x, y) for x, y in zip(ia, ib)} - set(zip(a.tolist(), b.tolist()))
    if extra:
        ea, eb = map(np.array, zip(*sorted(extra)))
        a, b = np.r_[a, ea], np.r_[b, eb]
        dist, ident = np.r_[dist, np.zeros(len(ea), np.int64)], np.r_[ident, np.ones(len(ea), bool)]
        nearest[ea] = np.minimum(nearest[ea], 0)
        nearest[eb] = np.minimum(nearest[eb], 0)
    comp = _components(n, a, b) if n else np.zeros(0, int)
    pairs = pd.DataFrame({"a": a.astype(int), "b": b.astype(int), "distance": dist.astype(int),
                          "pixel_identical": ident}, columns=_PAIR_COLUMNS)
    return comp, pairs.sort_values(["a", "b"]).reset_index(drop=True), nearest


def _conflict_reason(k: int, rows: list[dict], partners: list[tuple[int, int, bool]]) -> str:
    """Why row ``k`` of a conflicting copy group is quarantined: its closest twin of another label."""
    label = rows[k]["label"]
    other = [(d, rows[j]["relpath"], j, ident) for j, d, ident in partners if rows[j]["label"] != label]
    if not other:
        return "in a copy group filed under several labels"
    d, rel, j, ident = min(other)
    what = "pixel-identical to" if ident else f"near-duplicate (hash distance {d} of {COPY_HASH_BITS} bits) of"
    return f"label conflict: {what} {rel}, filed as {rows[j]['label']}"


def _build(
    base: Path, entries: list[_Entry], source: str, provenance: str, max_pixels: int, workers: int | None
) -> Dataset:
    todo = [e for e in entries if e.reject is None]
    n_workers = workers or min(4, max(2, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        results = dict(zip(map(id, todo), pool.map(lambda e: _probe(e.path, max_pixels), todo)))
    rows, bad, probes = [], [], []
    for e in entries:
        result = e.reject if e.reject is not None else results[id(e)]
        if isinstance(result, str):
            path = str(e.path) if e.reject is None or source == "folders" else e.relpath
            bad.append({"path": path, "relpath": e.relpath, "label": e.label, "reason": result, "kind": "unreadable"})
            continue
        info, sha, hashes = result
        probes.append(hashes)
        rows.append(
            {
                "path": str(e.path),
                "relpath": e.relpath,
                "label": e.label,
                "group": e.group if e.group is not None else e.relpath,
                "sha256": sha,
                "height": info.height,
                "width": info.width,
                "bit_depth": info.bit_depth,
                "format": info.format,
                "source_split": e.split,
                "copy_group": "",
                **e.extra,
            }
        )
    comp, pairs, nearest = _copy_structure(rows, probes)
    members: dict[int, list[int]] = {}
    for k, c in enumerate(comp):
        members.setdefault(int(c), []).append(k)
    partners: dict[int, list[tuple[int, int, bool]]] = {}
    for x, y, d, ident in pairs.itertuples(index=False):
        partners.setdefault(x, []).append((y, d, ident))
        partners.setdefault(y, []).append((x, d, ident))
    copies, conflicts, conflicted = [], [], set()
    for ks in members.values():
        if len(ks) < 2:
            continue
        rels = sorted(rows[k]["relpath"] for k in ks)
        copies.append(rels)
        labels = {rows[k]["label"] for k in ks if rows[k]["label"] is not None}
        if len(labels) > 1:
            conflicts.append(rels)
            for k in ks:
                conflicted.add(k)
                r = rows[k]
                bad.append({"path": r["path"], "relpath": r["relpath"], "label": r["label"], "kind": "conflict",
                            "reason": _conflict_reason(k, rows, partners.get(k, []))})
        else:
            for k in ks:
                rows[k]["copy_group"] = rels[0]
    kept = [k for k in range(len(rows)) if k not in conflicted]
    _merge_groups([rows[k] for k in kept])
    split_of = {r["relpath"]: r["source_split"] for r in rows}
    extra_cols = list(dict.fromkeys(c for e in entries for c in e.extra))
    manifest = pd.DataFrame([rows[k] for k in kept], columns=_COLUMNS + extra_cols)
    quarantine = pd.DataFrame(bad, columns=_QUARANTINE_COLUMNS).sort_values("relpath", kind="stable").reset_index(drop=True)
    by_sha: dict[str, list[str]] = {}
    for r in rows:
        by_sha.setdefault(r["sha256"], []).append(r["relpath"])
    duplicates = sorted(sorted(g) for g in by_sha.values() if len(g) >= 2)
    rel = [r["relpath"] for r in rows]
    pair_table = pd.DataFrame({"a": [rel[x] for x in pairs["a"]], "b": [rel[y] for y in pairs["b"]],
                               "distance": pairs["distance"].astype(int), "pixel_identical": pairs["pixel_identical"]},
                              columns=_PAIR_COLUMNS)
    return Dataset(
        root=base,
        manifest=manifest,
        quarantine=quarantine,
        duplicates=duplicates,
        source=source,
        label_provenance=provenance,
        copies=sorted(copies),
        conflicts=sorted(conflicts),
        copy_pairs=pair_table,
        nearest=pd.Series(nearest.astype(int), index=rel, name="nearest copy-hash distance"),
        split_of=split_of,
    )


def _merge_groups(rows: list[dict]) -> None:
    """Give the images of one copy group one ``group``: the groups (patients) the copies link are
    merged, each merged group named by its smallest member group (in place)."""
    linked = [r for r in rows if r["copy_group"]]
    if not linked:
        return
    names = sorted({str(r["group"]) for r in rows})
    index = {g: i for i, g in enumerate(names)}
    first_group: dict[str, int] = {}
    a, b = [], []
    for r in linked:
        g = index[str(r["group"])]
        c = first_group.setdefault(r["copy_group"], g)
        a.append(c)
        b.append(g)
    comp = _components(len(names), np.array(a), np.array(b))
    smallest: dict[int, str] = {}
    for g, c in zip(names, comp):  # names are sorted: the first seen is the smallest
        smallest.setdefault(int(c), g)
    for r in rows:
        r["group"] = smallest[int(comp[index[str(r["group"])]])]
