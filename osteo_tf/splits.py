"""Leakage-safe splits: stratified, group-disjoint train/val/test and k-fold, plus the papers' protocol.

A *group* is the unit that must never straddle two splits: a patient (several images), or a
source image together with all of its augmented copies. The clean protocol splits groups
BEFORE any augmentation, denoising cache or normalisation statistic is computed, and asserts the
leakage checks below. :func:`paper_protocol_split` reproduces study 01's flawed protocol (augment
first, then split image by image) under a name that says what it is.

Every split is written into a copy of the manifest as a ``split`` column; :func:`split_hash`
fingerprints it so a rerun can prove it used the same split.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

SPLIT_NAMES = ("train", "val", "test")


class LeakageError(AssertionError):
    """Raised when a split puts one group, or one pixel-identical image, on two sides."""


def _check_manifest(manifest: pd.DataFrame, *, label_col: str, group_col: str) -> None:
    if not isinstance(manifest, pd.DataFrame):
        raise TypeError(f"manifest must be a pandas DataFrame. Received: {type(manifest).__name__}")
    for col in (label_col, group_col):
        if col not in manifest.columns:
            raise ValueError(
                f"manifest has no column {col!r}. Columns: {list(manifest.columns)}"
            )
    if len(manifest) == 0:
        raise ValueError("manifest is empty: nothing to split")
    labels_per_group = manifest.groupby(group_col)[label_col].nunique()
    mixed = labels_per_group[labels_per_group > 1]
    if len(mixed):
        raise ValueError(
            f"{len(mixed)} group(s) carry more than one label (e.g. {list(mixed.index[:3])}); "
            "a patient-level split needs one label per group"
        )


def _group_table(manifest: pd.DataFrame, label_col: str, group_col: str) -> pd.DataFrame:
    """One row per group with its label, in a deterministic (sorted) order."""
    return (
        manifest.groupby(group_col, sort=True)[label_col]
        .first()
        .reset_index()
        .rename(columns={group_col: "group", label_col: "label"})
    )


def grouped_split(
    manifest: pd.DataFrame,
    *,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    label_col: str = "label",
    group_col: str = "group",
) -> pd.DataFrame:
    """Stratified, group-disjoint train / val / test split.

    Groups are assigned whole; within each label the groups are shuffled with ``seed`` and cut
    at the requested fractions (counted in groups, so every class is represented in every split
    when it has at least three groups).

    Args:
        manifest: one row per image with ``label_col`` and ``group_col``.
        val: fraction of groups for validation (0 allowed).
        test: fraction of groups for the test split (0 allowed).
        seed: shuffling seed.
        label_col: column holding the class label.
        group_col: column holding the patient / source id.

    Returns:
        A copy of ``manifest`` with a ``split`` column in {"train", "val", "test"}.

    Raises:
        ValueError: on bad fractions, missing columns or groups with mixed labels.
    """
    for name, frac in (("val", val), ("test", test)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name} must be in [0, 1). Received: {name}={frac}")
    if val + test >= 1.0:
        raise ValueError(f"val + test must be < 1. Received: val={val}, test={test}")
    out = _assign_groups(manifest, val=val, test=test, seed=seed, label_col=label_col, group_col=group_col)
    assert_no_leakage(out, group_col=group_col)
    return out


def _assign_groups(manifest: pd.DataFrame, *, val: float, test: float, seed: int, label_col: str,
                   group_col: str) -> pd.DataFrame:
    """:func:`grouped_split`'s assignment, without its leakage check."""
    _check_manifest(manifest, label_col=label_col, group_col=group_col)
    groups = _group_table(manifest, label_col, group_col)
    rng = np.random.default_rng(seed)
    assignment: dict = {}
    for label in sorted(groups["label"].unique(), key=str):
        ids = groups.loc[groups["label"] == label, "group"].to_numpy()
        ids = ids[rng.permutation(len(ids))]
        n = len(ids)
        n_test = int(round(test * n))
        n_val = int(round(val * n))
        if test > 0 and n >= 3:
            n_test = max(n_test, 1)
        if val > 0 and n >= 3:
            n_val = max(n_val, 1)
        n_test = min(n_test, max(n - 1, 0))
        n_val = min(n_val, max(n - 1 - n_test, 0))
        for g in ids[:n_test]:
            assignment[g] = "test"
        for g in ids[n_test : n_test + n_val]:
            assignment[g] = "val"
        for g in ids[n_test + n_val :]:
            assignment[g] = "train"
    out = manifest.copy()
    out["split"] = out[group_col].map(assignment)
    return out


def grouped_kfold(
    manifest: pd.DataFrame,
    *,
    k: int = 3,
    seed: int = 0,
    label_col: str = "label",
    group_col: str = "group",
    sha_col: str | None = "sha256",
) -> list[pd.DataFrame]:
    """Stratified group k-fold: ``k`` copies of the manifest, each with a train/test ``split``.

    Every fold is checked for leakage (groups, and pixel-identical images by ``sha_col``;
    ``sha_col=None`` checks groups only: study 01's image-level paper protocol, which leaks copies
    by design).

    Raises:
        ValueError: when ``k`` < 2 or exceeds the number of groups of the smallest class.
    """
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an integer >= 2. Received: k={k!r}")
    _check_manifest(manifest, label_col=label_col, group_col=group_col)
    groups = _group_table(manifest, label_col, group_col)
    smallest = groups["label"].value_counts().min()
    if smallest < k:
        raise ValueError(
            f"k={k} folds need at least {k} groups per class; the smallest class has {smallest}"
        )
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    labels = manifest[label_col].astype(str).to_numpy()
    folds = []
    for _, test_idx in cv.split(np.zeros(len(manifest)), labels, manifest[group_col].to_numpy()):
        out = manifest.copy()
        out["split"] = "train"
        out.iloc[test_idx, out.columns.get_loc("split")] = "test"
        assert_no_leakage(out, group_col=group_col, sha_col=sha_col)
        folds.append(out)
    return folds


def paper_protocol_split(
    manifest: pd.DataFrame,
    *,
    test: float = 0.2,
    val: float = 0.0,
    seed: int = 0,
    label_col: str = "label",
) -> pd.DataFrame:
    """Study 01's PAPER protocol: split the (already augmented) images one by one, stratified.

    This deliberately ignores groups, so augmented copies of one source image (and a dataset's own
    copies) can sit on both sides; no leakage check is made. It exists to reproduce and measure the published numbers; never use it to claim
    performance. :func:`leakage_report` on its output shows the leak.

    Returns:
        A copy of ``manifest`` with a ``split`` column.
    """
    if not 0.0 < test < 1.0:
        raise ValueError(f"test must be in (0, 1). Received: test={test}")
    if not 0.0 <= val < 1.0 or val + test >= 1.0:
        raise ValueError(f"val must be in [0, 1) with val + test < 1. Received: val={val}")
    if label_col not in manifest.columns:
        raise ValueError(f"manifest has no column {label_col!r}. Columns: {list(manifest.columns)}")
    tmp = manifest.copy()
    tmp["_row"] = np.arange(len(tmp))
    # no leakage check: copies of one image on both sides are this protocol's flaw, reported by
    # leakage_report (a dataset's own pre-augmented copies leak here too, as they did in the paper)
    split = _assign_groups(tmp, val=val, test=test, seed=seed, label_col=label_col, group_col="_row")
    return split.drop(columns="_row")


def leakage_report(
    manifest: pd.DataFrame, *, group_col: str = "group", sha_col: str = "sha256"
) -> dict:
    """Count what crosses split boundaries.

    Returns:
        dict with ``shared_groups`` (groups present in more than one split), ``shared_images``
        (pixel hashes present in more than one split, when ``sha_col`` exists), the number of
        images of the test split whose group also appears in training (``test_images_with_train_group``)
        and ``clean`` (True when both counts are zero).
    """
    if "split" not in manifest.columns:
        raise ValueError("manifest has no 'split' column: split it first")
    splits_per_group = manifest.groupby(group_col)["split"].nunique()
    shared = sorted(map(str, splits_per_group[splits_per_group > 1].index))
    shared_images: list[str] = []
    if sha_col in manifest.columns:
        per_sha = manifest.groupby(sha_col)["split"].nunique()
        shared_images = sorted(map(str, per_sha[per_sha > 1].index))
    train_groups = set(manifest.loc[manifest["split"] == "train", group_col])
    test_rows = manifest[manifest["split"] == "test"]
    n_leaky_test = int(test_rows[group_col].isin(train_groups).sum())
    return {
        "shared_groups": shared,
        "n_shared_groups": len(shared),
        "shared_images": shared_images,
        "n_shared_images": len(shared_images),
        "test_images_with_train_group": n_leaky_test,
        "n_test_images": int(len(test_rows)),
        "clean": not shared and not shared_images,
    }


def assert_no_leakage(manifest: pd.DataFrame, *, group_col: str = "group", sha_col: str = "sha256") -> None:
    """Raise :class:`LeakageError` if any group or pixel-identical image sits on two sides."""
    rep = leakage_report(manifest, group_col=group_col, sha_col=sha_col)
    if not rep["clean"]:
        raise LeakageError(
            f"split leaks: {rep['n_shared_groups']} group(s) on several sides "
            f"(e.g. {rep['shared_groups'][:3]}), {rep['n_shared_images']} pixel-identical image(s) "
            f"on several sides (e.g. {rep['shared_images'][:3]})"
        )


def source_split(manifest: pd.DataFrame, *, keep_val: bool = True, column: str = "source_split",
                 group_col: str = "group") -> pd.DataFrame:
    """The uploader's split (split folders, manifest column ``source_split``) as this run's split.

    A group (patient, or copy group) found on several of the uploader's sides is moved whole to
    the earliest of them (train before val before test), so the split stays leak-free; the rows
    whose ``split`` differs from ``column`` are the ones moved.

    Args:
        manifest: rows with ``column`` in {"train", "val", "test"}.
        keep_val: keep the uploader's validation side; ``False`` files it under train.
        column: the uploader's split column.
        group_col: the group column.

    Returns:
        A copy of ``manifest`` with a ``split`` column.

    Raises:
        ValueError: no ``column``, rows without a usable value, or no train or test rows.
    """
    if column not in manifest.columns:
        raise ValueError(f"respect_source_split needs the uploader's split (split folders train/, val/, test/ or a "
                         f"manifest column {column!r}); this data has none. Columns: {list(manifest.columns)}")
    values = manifest[column].fillna("").astype(str)
    bad = sorted(set(values) - set(SPLIT_NAMES))
    if bad:
        n = int((~values.isin(SPLIT_NAMES)).sum())
        raise ValueError(f"respect_source_split: {n} image(s) have no uploader's split in {list(SPLIT_NAMES)} "
                         f"(found {bad}); e.g. {manifest.loc[~values.isin(SPLIT_NAMES), 'relpath' if 'relpath' in manifest else group_col].iloc[0]}")
    rank = {"train": 0, "val": 1 if keep_val else 0, "test": 2}
    side = values.map(rank)
    earliest = side.groupby(manifest[group_col]).transform("min")
    names = {0: "train", 1: "val", 2: "test"}
    out = manifest.copy()
    out["split"] = earliest.map(names).to_numpy()
    if not (out["split"] == "train").any() or not (out["split"] == "test").any():
        raise ValueError(f"respect_source_split: the uploader's split needs train and test images. "
                         f"Received: {out['split'].value_counts().to_dict()}")
    assert_no_leakage(out, group_col=group_col)
    return out


def split_counts(manifest: pd.DataFrame, *, label_col: str = "label", group_col: str = "group") -> pd.DataFrame:
    """Images, groups and per-class image counts for each split (a report table)."""
    rows = []
    for name in [s for s in SPLIT_NAMES if s in set(manifest["split"])] + sorted(
        set(manifest["split"]) - set(SPLIT_NAMES)
    ):
        part = manifest[manifest["split"] == name]
        row = {"split": name, "images": len(part), "groups": part[group_col].nunique()}
        for label, n in part[label_col].value_counts().sort_index().items():
            row[f"n_{label}"] = int(n)
        rows.append(row)
    return pd.DataFrame(rows).fillna(0)


def split_hash(manifest: pd.DataFrame, *, key_col: str = "relpath") -> str:
    """SHA-256 (first 16 hex digits) of the sorted (key, split) pairs: same split -> same hash."""
    col = key_col if key_col in manifest.columns else "path"
    pairs = sorted(zip(manifest[col].astype(str), manifest["split"].astype(str)))
    h = hashlib.sha256("\n".join(f"{a}\t{b}" for a, b in pairs).encode()).hexdigest()
    return h[:16]


SPLIT_CSV_COLUMNS = ("path", "label", "group", "split", "sha256")
"""Columns of ``split.csv``: ``path`` relative to the data root (the manifest's ``relpath``)."""


def write_split(manifest: pd.DataFrame, path) -> str:
    """Write the split as CSV (:data:`SPLIT_CSV_COLUMNS`, rows sorted by path) and return its
    :func:`split_hash`; the same split gives a byte-identical file."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"path": manifest["relpath"] if "relpath" in manifest.columns else manifest["path"]})
    for col in SPLIT_CSV_COLUMNS[1:]:
        table[col] = manifest[col].to_numpy() if col in manifest.columns else ""
    table.sort_values(["path", "split"]).to_csv(path, index=False, lineterminator="\n")
    return split_hash(manifest)


def parts(manifest: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Dictionary split name -> rows of that split (index reset)."""
    return {s: manifest[manifest["split"] == s].reset_index(drop=True) for s in sorted(set(manifest["split"]))}
