"""Notebook 00: a dataset card. Can this data support the claims made on it?

For a dataset folder / manifest (or the synthetic default): counts per class, per patient and per
split; image sizes, bit depths and formats; sample grids and intensity histograms per class;
pixel-identical duplicates and near-duplicates (the perceptual hashes of ``osteo_tf.datasets``,
pHash / dHash, robust to contrast changes and checked under the 8 rotations / flips); the copy
groups and label conflicts the scan found, side by side, and the uploader's split folders with
the copies that leak across them; quarantined files; for synthetic data the preset and its oracle (Bayes) accuracy; and two cheap
baselines with patient-grouped cross-validation (intensity only, texture + intensity) whose
accuracy tells whether a shortcut (global intensity) already separates the classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from osteo_tf import datasets, evaluation, experiments, settings as _settings, splits
from osteo_tf.experiments import Context, Synthetic

STUDY = "00-dataset-card"
MODES = ("calcaneus", "knee", "dxa")


@dataclass(frozen=True, kw_only=True)
class Settings(_settings.StudySettings):
    """The dataset card's settings. There is no paper protocol: ``full`` only uses more (and
    larger) images.

    Attributes:
        mode: synthetic mode (``calcaneus``, ``knee``, ``dxa``); ignored with a ``data_dir``.
        synth_classes: synthetic classes, 2 or 3; ignored with a ``data_dir``.
        patients: synthetic patients.
        synth_size: side of the synthetic images in px.
        stats_size: px the images are resized to for hashes, statistics and baselines.
        hash_threshold: near-duplicate pHash distance (of 64 bits).
        kfold: folds of the grouped cross-validation baselines.
        n_per_class: sample images shown per class.
    """

    mode: str
    synth_classes: int
    patients: int
    synth_size: int
    stats_size: int
    hash_threshold: int
    kfold: int
    n_per_class: int

    PROFILES = {
        "smoke": {"mode": "calcaneus", "synth_classes": 2, "patients": 24, "synth_size": 64, "stats_size": 64,
                  "hash_threshold": 6, "kfold": 3, "n_per_class": 4},
        "quick": {"mode": "calcaneus", "synth_classes": 2, "patients": 160, "synth_size": 128, "stats_size": 96,
                  "hash_threshold": 6, "kfold": 5, "n_per_class": 6},
        "full": {"mode": "calcaneus", "synth_classes": 2, "patients": 400, "synth_size": 256, "stats_size": 128,
                 "hash_threshold": 6, "kfold": 5, "n_per_class": 8},
    }
    FULL_SMOKE = {"patients": 16, "kfold": 2}

    def check(self) -> None:
        _settings.choice(self, "mode", MODES)
        _settings.choice(self, "synth_classes", (2, 3))
        _settings.positive(self, "patients", "synth_size", "stats_size", "n_per_class")
        _settings.in_range(self, "hash_threshold", 0, datasets.HASH_BITS, closed="both")
        _settings.at_least(self, "kfold", 2)


def setup(settings: Settings, *, data_dir: str | Path | None = None, out_dir: str | Path | None = None,
          seed: int = 0) -> Context:
    """Seed, find or generate the data (the synthetic ``settings.mode``), record provenance.

    Args:
        settings: this run's :class:`Settings`.
        data_dir: a dataset folder or manifest CSV; ``None`` for the synthetic data.
        out_dir: the report folder; ``None`` for ``reports/<study>``.
        seed: global seed.
    """
    return experiments.setup(STUDY, settings, data_dir=data_dir, out_dir=out_dir, seed=seed,
                             synthetic=Synthetic(settings.mode, settings.synth_classes, settings.patients, settings.synth_size),
                             image_size=settings.stats_size)


# ----------------------------------------------------------------------------------------------
# counts


def class_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Per class: images, patients (groups), images per patient (min / mean / max), share of images."""
    rows = []
    for label, part in manifest.groupby("label", sort=True):
        per = part.groupby("group").size()
        rows.append({"class": label, "images": len(part), "patients": per.size,
                     "images per patient min": int(per.min()), "mean": round(float(per.mean()), 2),
                     "max": int(per.max()), "share of images": round(len(part) / max(len(manifest), 1), 3)})
    return pd.DataFrame(rows)


def images_per_patient(manifest: pd.DataFrame) -> pd.DataFrame:
    """How many patients have 1, 2, 3... images, per class."""
    per = manifest.groupby(["group", "label"]).size().rename("images per patient").reset_index()
    table = per.groupby(["images per patient", "label"]).size().unstack("label", fill_value=0)
    return table.reset_index()


def image_properties(manifest: pd.DataFrame) -> pd.DataFrame:
    """Counts of every (height x width, bit depth, format) combination, per class."""
    m = manifest.assign(size=manifest["height"].astype(str) + " x " + manifest["width"].astype(str))
    return (m.groupby(["size", "bit_depth", "format", "label"]).size().unstack("label", fill_value=0)
            .reset_index().rename(columns={"size": "height x width", "bit_depth": "bit depth"}))


def quarantine_table(ctx: Context) -> pd.DataFrame:
    """Files that could not be used (unreadable, or a label conflict), with the reason (empty
    table when there are none)."""
    q = ctx.quarantine if ctx.quarantine is not None else pd.DataFrame(columns=["relpath", "label", "reason"])
    return q[[c for c in ("relpath", "label", "kind", "reason") if c in q.columns]].reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# copy groups, label conflicts, the uploader's split (datasets.find_dataset's copy detection)


COPY_COLUMNS = ["copy group", "files", "n", "labels", "uploader's splits", "max hash distance", "status"]
"""Columns of :func:`copy_group_table`."""


def copy_group_table(ctx: Context) -> pd.DataFrame:
    """Every copy group the scan found (flips, rotations, brightness / contrast, re-encoding,
    rescaling; pixel-identical included): its files, labels, the uploader's split folders it
    sits in, and what the run does with it (kept on one side of every split, or quarantined as
    a label conflict)."""
    ds = ctx.dataset
    if ds is None:
        return pd.DataFrame(columns=COPY_COLUMNS)
    label_of = dict(zip(ds.manifest["relpath"], ds.manifest["label"]))
    label_of.update(zip(ds.quarantine["relpath"], ds.quarantine["label"]))
    conflicts = {tuple(g) for g in ds.conflicts}
    pairs = ds.copy_pairs
    rows = []
    for i, group in enumerate(ds.copies):
        inside = pairs[pairs["a"].isin(group) & pairs["b"].isin(group)]
        splits_in = sorted({ds.split_of.get(r, "") for r in group} - {""})
        rows.append({"copy group": i, "files": " ~ ".join(group), "n": len(group),
                     "labels": ", ".join(sorted({str(label_of.get(r)) for r in group})),
                     "uploader's splits": ", ".join(splits_in) or "-",
                     "max hash distance": int(inside["distance"].max()) if len(inside) else 0,
                     "status": "label conflict: all quarantined" if tuple(group) in conflicts
                     else "kept together (one group)"})
    return pd.DataFrame(rows, columns=COPY_COLUMNS)


def source_split_table(ctx: Context) -> pd.DataFrame:
    """The uploader's split folders: readable images per class in each, and how the split leaks
    (copy groups with images on more than one of its sides). Empty without split folders."""
    ds = ctx.dataset
    if ds is None or not ds.source_splits():
        return pd.DataFrame(columns=["uploader's split", "images"])
    label_of = dict(zip(ds.manifest["relpath"], ds.manifest["label"]))
    label_of.update(zip(ds.quarantine["relpath"], ds.quarantine["label"]))
    leaks = ds.split_leaks()
    rows = []
    for name, n in ds.source_splits().items():
        members = [r for r, s in ds.split_of.items() if s == name]
        row = {"uploader's split": name, "images": n}
        for label in sorted({str(label_of.get(r)) for r in members}):
            row[f"n_{label}"] = sum(str(label_of.get(r)) == label for r in members)
        row["images with a copy on another side"] = sum(1 for g in leaks for r in g if ds.split_of.get(r) == name)
        rows.append(row)
    return pd.DataFrame(rows).fillna(0)


def source_split_verdict(ctx: Context) -> str:
    """One sentence on the uploader's split: absent, clean, or how many copy groups straddle it."""
    ds = ctx.dataset
    if ds is None or not ds.source_splits():
        return "No split folders: there is no uploader's split."
    leaks = ds.split_leaks()
    used = ("this run uses it (respect_source_split=True; straddling groups are moved whole to their earliest side)"
            if ctx.settings.respect_source_split else "the studies draw their own grouped split (respect_source_split=False)")
    if not leaks:
        return f"The uploader's split ({', '.join(ds.source_splits())}) has no copy across its sides; {used}."
    n = sum(len(g) for g in leaks)
    return (f"The uploader's split LEAKS: {len(leaks)} copy group(s) ({n} images) have copies on more than one of its "
            f"sides, so any number measured on its test folder is inflated; {used}.")


def copy_groups_figure(ctx: Context, *, max_groups: int = 12, size: int = 96):
    """Thumbnails of each copy group side by side (one row per group, conflicts marked)."""
    import matplotlib.pyplot as plt

    from osteo_tf import io as oio, preprocessing

    ds = ctx.dataset
    groups = list(ds.copies[:max_groups]) if ds is not None else []
    if not groups:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no copy groups", ha="center", va="center")
        return fig
    conflicts = {tuple(g) for g in ds.conflicts}
    label_of = dict(zip(ds.manifest["relpath"], ds.manifest["label"]))
    label_of.update(zip(ds.quarantine["relpath"], ds.quarantine["label"]))
    cols = max(len(g) for g in groups)
    fig, axes = plt.subplots(len(groups), cols, figsize=(1.9 * cols, 2.1 * len(groups)), squeeze=False)
    for r, group in enumerate(groups):
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(group):
                continue
            rel = group[c]
            try:
                img = preprocessing.resize(oio.load_xray(Path(ds.root) / rel), size)
                ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            except Exception as exc:  # a thumbnail that cannot be drawn is named, never fatal
                ax.text(0.5, 0.5, type(exc).__name__, ha="center", va="center", fontsize=7)
            tag = " CONFLICT" if tuple(group) in conflicts else ""
            ax.set_title(f"{Path(rel).name}\n{label_of.get(rel)} / {ds.split_of.get(rel) or '-'}{tag}", fontsize=6,
                         color="red" if tag else "black")
    fig.suptitle("copy groups (file, label / uploader's split)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (2.1 * len(groups))))
    return fig


def copy_distance_figure(ctx: Context):
    """Histogram of each image's copy-hash distance to its nearest other image, with the
    threshold: copies sit left of it, distinct images (measured) well right of it."""
    import matplotlib.pyplot as plt

    ds = ctx.dataset
    near = ds.nearest.to_numpy() if ds is not None else np.zeros(0)
    near = near[near <= datasets.COPY_HASH_BITS]
    fig, ax = plt.subplots(figsize=(5, 2.8))
    ax.hist(near, bins=np.arange(0, datasets.COPY_HASH_BITS + 2, 2) - 0.5, color="#555")
    ax.axvline(datasets.COPY_THRESHOLD + 0.5, color="r", ls="--",
               label=f"copy threshold ({datasets.COPY_THRESHOLD} of {datasets.COPY_HASH_BITS} bits)")
    ax.set_xlabel("copy-hash distance to the nearest other image")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def duplicate_table(ctx: Context) -> pd.DataFrame:
    """Pixel-identical duplicate groups (``datasets.find_dataset``), with their patients and labels."""
    m = ctx.manifest.set_index("relpath")
    rows = []
    for i, group in enumerate(ctx.duplicates):
        known = [r for r in group if r in m.index]
        rows.append({"duplicate group": i, "files": " == ".join(group), "n": len(group),
                     "patients": m.loc[known, "group"].nunique() if known else None,
                     "labels": ", ".join(sorted(map(str, m.loc[known, "label"].unique()))) if known else ""})
    return pd.DataFrame(rows, columns=["duplicate group", "files", "n", "patients", "labels"])


# ----------------------------------------------------------------------------------------------
# near-duplicates


PAIR_COLUMNS = ["file a", "file b", "pHash distance", "dHash distance", "transform", "pixel identical",
                "same patient", "same label"]
"""Columns of :func:`near_duplicates`' pair table."""


def near_duplicates(manifest: pd.DataFrame, images: Sequence[np.ndarray], *, threshold: int = 6) -> tuple[pd.DataFrame, np.ndarray]:
    """Pairs of images whose pHash distance (minimum over the 8 rotations / flips) is <= ``threshold``.

    The search is :func:`osteo_tf.datasets.near_duplicate_pairs` on :func:`osteo_tf.datasets.phash`;
    this adds the files, the dHash distance and what the two images share.

    Args:
        manifest: rows aligned with ``images`` (``relpath``, ``group``, ``label``, ``sha256``).
        images: grey (H, W) images (any size; a common small size is fine).
        threshold: maximum Hamming distance out of 64 bits.

    Returns:
        ``(pairs, nearest)``: pairs (file a, file b, pHash distance, dHash distance, transform,
        pixel identical, same patient, same label) sorted by distance; nearest: for every image the
        pHash distance to its nearest OTHER image (for the histogram / threshold choice).
    """
    n = len(images)
    if n != len(manifest):
        raise ValueError(f"images and manifest must align. Received: {n} images, {len(manifest)} rows")
    if n < 2:
        return pd.DataFrame(columns=PAIR_COLUMNS), np.zeros(n, int)
    hashes = np.stack([datasets.phash(img) for img in images])
    variants = np.stack([np.stack([datasets.phash(t) for t in datasets.dihedral(img)]) for img in images])
    found, nearest = datasets.near_duplicate_pairs(hashes, variants, threshold=threshold)
    dh = np.stack([datasets.dhash(img) for img in images])
    dd = datasets.hamming(dh, dh)
    m = manifest.reset_index(drop=True)
    rows = []
    for i, j, dist, transform in found.itertuples(index=False):
        rows.append({"file a": m.at[i, "relpath"], "file b": m.at[j, "relpath"], "pHash distance": int(dist),
                     "dHash distance": int(dd[i, j]), "transform": transform,
                     "pixel identical": bool(m.at[i, "sha256"] == m.at[j, "sha256"]),
                     "same patient": bool(m.at[i, "group"] == m.at[j, "group"]),
                     "same label": bool(m.at[i, "label"] == m.at[j, "label"])})
    pairs = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    return pairs.sort_values(["pHash distance", "file a"]).reset_index(drop=True), nearest


def hash_sanity_check(image: np.ndarray, *, seed: int = 0) -> pd.DataFrame:
    """pHash / dHash distances of one image to edited copies of itself (and to noise), so a reader
    sees what the detector catches: contrast / brightness changes, rotations, flips, sharpening."""
    from osteo_tf import augment

    img = np.asarray(image, np.float32)
    variants = {"same image": img, **augment.study01_variants(img), "sharpened": augment.sharpen(img),
                "horizontal flip": np.fliplr(img).copy(),
                "unrelated (noise)": np.random.default_rng([seed, 2**20]).random(img.shape).astype(np.float32)}
    h0, d0 = datasets.phash(img), datasets.dhash(img)
    rows = []
    for name, v in variants.items():
        direct = int(datasets.hamming(h0[None], datasets.phash(v)[None])[0, 0])
        best = int(datasets.hamming(h0[None], np.stack([datasets.phash(t) for t in datasets.dihedral(v)])).min())
        rows.append({"copy": name, "pHash distance": direct, "pHash distance (best of 8 rotations/flips)": best,
                     "dHash distance": int(datasets.hamming(d0[None], datasets.dhash(v)[None])[0, 0])})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# intensity statistics and baselines


# The baseline's features live in ``experiments``: every study's texture floor uses them too.
intensity_features = experiments.intensity_features
texture_features = experiments.texture_features


FEATURE_SETS = ("intensity only", "texture + intensity")


def feature_matrix(images: Sequence[np.ndarray], kind: str) -> np.ndarray:
    """(N, F) features of a :data:`FEATURE_SETS` kind."""
    if kind not in FEATURE_SETS:
        raise ValueError(f"kind must be one of {FEATURE_SETS}. Received: kind={kind!r}")
    inten = np.stack([intensity_features(x) for x in images])
    if kind == "intensity only":
        return inten
    return np.concatenate([np.stack([texture_features(x) for x in images]), inten], axis=1)


def baseline_records(ctx: Context, images: Sequence[np.ndarray], *, k: int = 5, keep: bool = True) -> list[dict]:
    """Logistic regression on each feature set, patient-grouped k-fold CV, pooled out-of-fold predictions.

    Every test fold's patients are unseen by its model; the scaler and the imputer are fitted on
    the training folds only. One metrics.json record per feature set (experiment
    ``"grouped CV baseline"``, protocol ``"clean"``), CIs resampling patients.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from osteo_tf import pipeline

    m = ctx.manifest.reset_index(drop=True)
    y = pipeline.encode_labels(m["label"].astype(str).tolist(), ctx.class_names, label_mode="int")
    n_groups_min = int(m.groupby("label")["group"].nunique().min())
    k = max(2, min(int(k), n_groups_min))
    folds = splits.grouped_kfold(m, k=k, seed=ctx.seed)
    records = []
    for kind in FEATURE_SETS:
        X = feature_matrix(images, kind)
        prob = np.zeros((len(m), len(ctx.class_names)))
        for f in folds:
            tr = (f["split"] == "train").to_numpy()
            clf = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
            clf.fit(X[tr], y[tr])
            p = np.zeros((int((~tr).sum()), len(ctx.class_names)))
            p[:, clf.classes_] = clf.predict_proba(X[~tr])
            prob[~tr] = p
        rec = evaluation.result_record(
            experiment="grouped CV baseline", model=f"logistic regression ({kind})", protocol="clean", y_true=y,
            y_prob=prob, groups=m["group"].astype(str).to_numpy(), class_names=ctx.class_names, seed=ctx.seed,
            extra={"k": k, "features": kind, "image_size": int(np.asarray(images[0]).shape[0])})
        records.append(rec)
        if keep:
            ctx.results.append(rec)
    return records


def synthetic_info(ctx: Context, preset: str) -> pd.DataFrame:
    """For synthetic data: the preset and its oracle accuracy; otherwise a one-line note."""
    from osteo_tf import synthetic

    if not ctx.data["source"].startswith("synthetic"):
        return pd.DataFrame([{"item": "synthetic", "value": "no: user data, there is no oracle accuracy"}])
    p = synthetic.PRESETS[preset]
    n_classes = len(ctx.class_names)
    rows = [("data source", ctx.data["source"]), ("preset", p.name), ("classes", n_classes),
            ("binary class separation d'", p.d_prime), ("3-class coupling rho", p.rho)]
    if "dxa" in ctx.data["source"]:
        rows.append(("oracle accuracy", "not defined for dxa (labels come from a TBS-like score; see synthetic.py)"))
    else:
        rows.append(("oracle (Bayes) accuracy given the latent bone quality q",
                     round(synthetic.oracle_accuracy(p, n_classes, seed=ctx.seed), 4)))
        rows.append(("documented oracle", p.oracle_binary if n_classes == 2 else p.oracle_3class))
    return pd.DataFrame(rows, columns=["item", "value"]).astype(str)


def oracle(ctx: Context, preset: str) -> float | None:
    """The preset's oracle accuracy for synthetic calcaneus/knee data, else None."""
    from osteo_tf import synthetic

    if not ctx.data["source"].startswith("synthetic") or "dxa" in ctx.data["source"]:
        return None
    return float(synthetic.oracle_accuracy(preset, len(ctx.class_names), seed=ctx.seed))


# ----------------------------------------------------------------------------------------------
# figures


def intensity_figure(images: Sequence[np.ndarray], labels: Sequence[str], class_names: Sequence[str]):
    """Grey-value histograms per class (pooled pixels, density) and per-image mean intensity."""
    import matplotlib.pyplot as plt

    labels = np.asarray(labels)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    bins = np.linspace(0, 1, 51)
    means = []
    for c in class_names:
        sel = [np.asarray(x).ravel() for x, lab in zip(images, labels) if lab == c]
        if not sel:
            continue
        axes[0].hist(np.concatenate(sel), bins=bins, density=True, histtype="step", lw=1.5, label=c)
        means.append([float(np.mean(x)) for x in sel])
    axes[0].set_xlabel("grey value")
    axes[0].set_ylabel("density")
    axes[0].set_title("pixel histograms per class", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].boxplot(means, tick_labels=[c for c in class_names if c in set(labels)])
    axes[1].set_ylabel("mean grey value per image")
    axes[1].set_title("per-image mean intensity", fontsize=9)
    fig.tight_layout()
    return fig


def nearest_figure(nearest: np.ndarray, threshold: int):
    """Histogram of each image's pHash distance to its nearest other image."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.8))
    ax.hist(nearest, bins=np.arange(0, datasets.HASH_BITS + 2) - 0.5, color="#555")
    ax.axvline(threshold + 0.5, color="r", ls="--", label=f"near-duplicate threshold ({threshold})")
    ax.set_xlabel("pHash distance to the nearest other image (of 64 bits)")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# the one-minute verdict


def verdict(ctx: Context, *, pairs: pd.DataFrame, baselines: Sequence[dict], oracle_acc: float | None) -> pd.DataFrame:
    """A checklist of what the data can and cannot support, each item with its evidence."""
    m = ctx.manifest
    per_class = m.groupby("label")["group"].nunique()
    per_patient = m.groupby("group").size()
    rows = []

    def add(check, ok, evidence):
        rows.append({"check": check, "status": "ok" if ok else "attention", "evidence": evidence})

    add("enough patients per class (>= 50)", per_class.min() >= 50,
        ", ".join(f"{k}: {v}" for k, v in per_class.items()))
    ratio = per_class.max() / max(per_class.min(), 1)
    add("classes balanced (patients, max/min <= 1.5)", ratio <= 1.5, f"ratio {ratio:.2f}")
    add("one image per patient (else split by patient)", per_patient.max() == 1,
        f"{int((per_patient > 1).sum())} of {per_patient.size} patients have several images (max {int(per_patient.max())})")
    add("no pixel-identical duplicates", len(ctx.duplicates) == 0, f"{len(ctx.duplicates)} duplicate group(s)")
    cross = pairs[~pairs["same patient"]] if len(pairs) else pairs
    add("no near-duplicates across patients", len(cross) == 0,
        f"{len(cross)} pair(s) across patients ({int((~cross['same label']).sum()) if len(cross) else 0} with different labels)")
    add("no unreadable files", ctx.data["n_unreadable"] == 0, f"{ctx.data['n_unreadable']} quarantined")
    if "conflicts" in ctx.data:
        add("no image filed under two classes (label conflicts)", ctx.data["conflicts"] == 0,
            f"{ctx.data['conflicts']} conflict group(s) quarantined; {ctx.data['copy_groups']} copy group(s) kept together")
    if ctx.data.get("source_splits"):
        add("the uploader's split does not leak (no copy across its sides)", ctx.data["source_split_leaks"] == 0,
            f"{ctx.data['source_split_leaks']} copy group(s) straddle {', '.join(ctx.data['source_splits'])}")
    sizes = m[["height", "width"]].drop_duplicates().shape[0]
    depths = sorted(m["bit_depth"].unique().tolist())
    add("one image size and bit depth (else acquisition may differ by class)", sizes == 1 and len(depths) == 1,
        f"{sizes} size(s), bit depths {depths}")
    inten = next((r for r in baselines if r.get("features") == "intensity only"), None)
    if inten is not None:
        lo = (inten.get("ci95") or {}).get("accuracy", [None])[0]
        add("global intensity does not separate the classes (no shortcut)", lo is None or lo <= 0.5 + 1e-9
            or inten["accuracy"] < 0.6, f"intensity-only grouped-CV accuracy {inten['accuracy']:.3f} (CI low {lo})")
    if oracle_acc is not None:
        add("task is learnable (oracle accuracy well above chance)", oracle_acc >= 0.7,
            f"oracle accuracy {oracle_acc:.3f}: no model can beat it on this data; a report above it is suspect")
    add("label provenance stated", bool(ctx.data.get("label_provenance")), ctx.data.get("label_provenance", ""))
    return pd.DataFrame(rows)
