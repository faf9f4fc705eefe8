"""Notebook 06: a leakage audit. Four leaky protocols beside their clean twins, same data, same model.

Rows (each one leaky protocol vs its clean twin, test accuracy with patient-level bootstrap 95% CIs):

* ``R1 augment-then-split``: study 01's paper protocol (offline augmentation of ALL images, then an
  image-by-image split) vs split-then-augment (patients split first, training side augmented,
  test = untouched originals). Reuses :mod:`osteo_tf.workflows.study01`.
* ``R2 image-level split``: images split one by one (a patient's images on both sides) vs a
  patient-grouped split, no augmentation.
* ``R3 test-set reuse``: several configurations x epochs; pick the candidate with the best TEST
  accuracy and report that same accuracy, vs pick by VALIDATION accuracy and touch the test
  split once.
* ``R4 LIME masks``: study 05's LIME-masked dataset where the masks come from a model trained on
  every image (test included) vs masks from models that never saw the image they mask
  (out-of-fold models inside the training split; a training-split model for the test images).
  A classifier is then retrained on the masked training images and tested on the masked test
  images.

Records use ``protocol="paper"`` for the leaky variant and ``"clean"`` for its twin, so
:func:`osteo_tf.workflows.study01.leakage_gap` pairs them.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from osteo_tf import evaluation, experiments, settings as _settings, splits
from osteo_tf._warnings import BOOTSTRAP_SKIPPED, RAN_OUT_OF_DATA, quiet as _quiet
from osteo_tf.experiments import Context, FitResult, Synthetic, fit_evaluate
from osteo_tf.training import Recipe
from osteo_tf.workflows import study01

STUDY = "06-leakage-audit"

@dataclass(frozen=True, kw_only=True)
class Settings(_settings.StudySettings):
    """The leakage audit's settings: one model and one recipe for every row.

    Attributes:
        model: the registry model every row trains.
        filters: the four conv widths of ``study01_cnn`` (ignored by other models).
        image_size: square model input in px.
        synth_size: side of the synthetic calcaneus images in px.
        patients: synthetic patients.
        offline_set: study 01's offline set of R1 (``A``, ``B`` or ``C``).
        epochs, batch_size, optimizer, learning_rate: the recipe of R1, R2 and R4.
        test: patient share of every test split.
        select_lrs: R3's candidate learning rates.
        select_epochs: R3's candidate epochs (1 ... select_epochs).
        lime_patients: patients of R4 (the costly row).
        lime_samples: LIME perturbation samples per image.
        lime_features: superpixels a LIME mask keeps.
        lime_folds: 0 (the clean variant masks the training images with the train-split model,
            as the leaky one does: the row isolates whether the masker saw the TEST images) or
            k >= 2 (the clean training images are masked out of fold, k more trainings).

    ``quick`` uses set B and mini-batches of 8: the BatchNorm small CNN needs about a thousand
    steps before its inference statistics settle (with fewer it predicts one class and memorises
    nothing, which hides the leak). ``full`` follows study 01 (set C, 80/20, SGD lr 1e-4, batch 5,
    20 epochs, 174 patients, the paper's small CNN) and study 05 (LIME with 1000 samples, 5
    superpixels).
    """

    model: str
    filters: tuple[int, ...]
    image_size: int
    synth_size: int
    patients: int
    offline_set: str
    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    test: float
    select_lrs: tuple[float, ...]
    select_epochs: int
    lime_patients: int
    lime_samples: int
    lime_features: int
    lime_folds: int

    classes: tuple[str, ...] = ("normal", "osteoporosis")  # the paper's classes (StudySettings.classes)

    PROFILES = {
        "smoke": {"model": "study01_cnn", "filters": (8, 16, 16, 16), "image_size": 32, "synth_size": 32,
                  "patients": 16, "preset": "easy", "offline_set": "A", "epochs": 1, "batch_size": 16,
                  "optimizer": "adam", "learning_rate": 1e-3, "test": 0.25, "select_lrs": (1e-3,),
                  "select_epochs": 2, "lime_patients": 8, "lime_samples": 10, "lime_features": 4,
                  "lime_folds": 0},
        "quick": {"model": "study01_cnn", "filters": (16, 32, 64, 64), "image_size": 48, "synth_size": 48,
                  "patients": 64, "preset": "easy", "offline_set": "B", "epochs": 10, "batch_size": 8,
                  "optimizer": "adam", "learning_rate": 1e-3, "test": 0.25, "select_lrs": (3e-3, 1e-3, 3e-4),
                  "select_epochs": 6, "lime_patients": 32, "lime_samples": 32, "lime_features": 5,
                  "lime_folds": 0},
        "full": {"model": "study01_cnn", "filters": (32, 64, 128, 128), "image_size": 224, "synth_size": 256,
                 "patients": 174, "preset": "default", "offline_set": "C", "epochs": 20, "batch_size": 5,
                 "optimizer": "sgd", "learning_rate": 1e-4, "test": 0.2, "select_lrs": (1e-3, 3e-4, 1e-4),
                 "select_epochs": 20, "lime_patients": 174, "lime_samples": 1000, "lime_features": 5,
                 "lime_folds": 3},
    }
    FULL_SMOKE = {"patients": 12, "epochs": 1, "select_epochs": 1, "lime_patients": 6, "lime_samples": 20,
                  "lime_folds": 2}

    def check(self) -> None:
        _settings.model_names(self, "model")
        _settings.choice(self, "offline_set", ("A", "B", "C"))
        _settings.choice(self, "optimizer", study01.OPTIMIZERS)
        _settings.positive(self, "image_size", "synth_size", "patients", "epochs", "batch_size", "select_epochs",
                           "lime_patients", "lime_samples", "lime_features")
        if len(self.filters) != 4 or min(self.filters) < 1:
            raise ValueError(f"filters must be four positive conv widths. Received: filters={self.filters!r}")
        _settings.in_range(self, "learning_rate", 0.0, 1.0)
        _settings.in_range(self, "test", 0.0, 1.0)
        _settings.not_empty(self, "select_lrs")
        if any(not 0.0 < lr < 1.0 for lr in self.select_lrs):
            raise ValueError(f"select_lrs must be learning rates in (0, 1). Received: select_lrs={self.select_lrs!r}")
        if self.lime_folds == 1 or self.lime_folds < 0:
            raise ValueError(f"lime_folds must be 0 (no out-of-fold masks) or at least 2. "
                             f"Received: lime_folds={self.lime_folds!r}")


def setup(settings: Settings, *, data_dir: str | Path | None = None, out_dir: str | Path | None = None,
          seed: int = 0) -> Context:
    """Seed, find or generate the data (synthetic calcaneus, 1 + Poisson(1.5) images per
    patient), record provenance.

    Args:
        settings: this run's :class:`Settings`.
        data_dir: a dataset folder or manifest CSV with patient groups; ``None`` for synthetic data.
        out_dir: the report folder; ``None`` for ``reports/<study>``.
        seed: global seed.
    """
    return experiments.setup(STUDY, settings, data_dir=data_dir, out_dir=out_dir, seed=seed,
                             synthetic=Synthetic("calcaneus", 2, settings.patients, settings.synth_size))


ROWS = {
    "R1 augment-then-split": ("study 01 paper protocol: offline augmentation of every image, then an "
                              "image-by-image split", "split patients first, augment the training side only"),
    "R2 image-level split": ("images split one by one: a patient's images on both sides",
                             "patient-grouped split"),
    "R3 test-set reuse": ("best of several configs x epochs chosen by TEST accuracy, that accuracy reported",
                          "chosen by validation accuracy, test touched once"),
    "R4 LIME masks": ("LIME masks from a model trained on every image, test images included",
                      "masks from models that never saw the masked image"),
}
"""Row name -> (leaky protocol, clean twin)."""

CHECKLIST = [
    ("Unit of the split", "Is the split made by patient (or by source image), and is that stated? "
     "Are there several images per patient, and are they all on one side?"),
    ("Augmentation order", "Was augmentation (offline copies, rotations, contrast changes) done AFTER the "
     "split, on the training side only? 'Dataset grew from 174 to 1566 images, then 80/20' is a red flag."),
    ("Duplicates", "Were pixel-identical and near-duplicate images (merged public corpora, pre-augmented "
     "copies) removed or grouped before splitting?"),
    ("Preprocessing statistics", "Were normalisation statistics, denoising caches, feature selection and "
     "tuned thresholds fitted on the training split only?"),
    ("Test set touched once", "Were epochs, architectures and hyperparameters chosen on a validation split "
     "or by inner cross-validation, never on the test accuracy that is reported?"),
    ("Derived datasets", "Do masks, crops or features used to build a new dataset (LIME, Grad-CAM, "
     "segmentations) come from models that never saw the images they are applied to?"),
    ("Uncertainty", "Are 95% CIs given, resampled by patient, and is the test set large enough for them to "
     "exclude chance?"),
    ("External validation", "Is there an external test set (other site/scanner)? If not, is the result "
     "labelled 'internal validation only'?"),
    ("Too good to be true", "Does accuracy jump when the dataset is augmented (e.g. 50% on originals, 98% "
     "on augmented sets)? Jumps like that are usually leakage, not learning."),
]
"""A checklist a reader can apply to a paper (the report ends with it)."""


# ----------------------------------------------------------------------------------------------
# shared helpers


def recipe(settings: Settings) -> Recipe:
    """The one training recipe every row uses (study 01's small-CNN recipe with the profile's values)."""
    return replace(study01.RECIPES["small_cnn"], optimizer=settings.optimizer, learning_rate=settings.learning_rate,
                   batch_size=settings.batch_size, epochs=settings.epochs)


def model_options(settings: Settings) -> dict:
    """Options of the audit model (``filters`` for study01_cnn)."""
    if settings.model == "study01_cnn":
        return {"filters": settings.filters}
    return {}


def _fit(ctx: Context, split: pd.DataFrame, settings: Settings, *, experiment: str, protocol: str,
         keep: bool = True, record_as: str | None = None, rec=None) -> FitResult:
    return fit_evaluate(ctx, split, model=settings.model, experiment=experiment, rec=rec or recipe(settings),
                        protocol=protocol, model_options=model_options(settings), keep=keep, record_as=record_as)


# ----------------------------------------------------------------------------------------------
# R1: study 01's augment-then-split vs split-then-augment


def augmentation_row(ctx: Context, settings: Settings) -> dict[str, Any]:
    """R1. Returns {"splits": {protocol: manifest}, "fits": {protocol: FitResult}}."""

    name = "R1 augment-then-split"
    out = {"splits": {}, "fits": {}}
    for protocol in ("paper", "clean"):
        split = study01.protocol_split(ctx, settings.offline_set, protocol, test=settings.test)
        out["splits"][protocol] = split
        out["fits"][protocol] = _fit(ctx, split, settings, experiment=name, protocol=protocol)
    return out


# ----------------------------------------------------------------------------------------------
# R2: image-level vs patient-grouped split


def grouping_row(ctx: Context, settings: Settings) -> dict[str, Any]:
    """R2. Image-level split (``splits.paper_protocol_split`` of the originals) vs grouped split."""
    name = "R2 image-level split"
    test = settings.test
    sp = {"paper": splits.paper_protocol_split(ctx.manifest, test=test, seed=ctx.seed),
          "clean": splits.grouped_split(ctx.manifest, val=0.0, test=test, seed=ctx.seed)}
    return {"splits": sp, "fits": {p: _fit(ctx, s, settings, experiment=name, protocol=p) for p, s in sp.items()}}


# ----------------------------------------------------------------------------------------------
# R3: test-set reuse for model selection


def selection_candidates(ctx: Context, split: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, dict]:
    """Train one model per learning rate in ``select_lrs``; after every epoch predict val and test.

    Returns:
        ``(table, predictions)``: one row per candidate (config, epoch, val accuracy, test
        accuracy); predictions maps candidate id -> (val probabilities, test probabilities).
    """
    from dataclasses import replace

    from osteo_tf import pipeline, training
    from osteo_tf.experiments import build_model

    parts = {s: split[split["split"] == s] for s in ("train", "val", "test")}
    size = ctx.image_size
    base = recipe(settings)
    common = dict(class_names=ctx.class_names, image_size=size, label_mode="categorical",
                  batch_size=base.batch_size)
    train_ds = pipeline.make_dataset(parts["train"], training=True, seed=ctx.seed, **common)
    val_ds = pipeline.make_dataset(parts["val"], **common)
    test_ds = pipeline.make_dataset(parts["test"], **common)
    y = {s: pipeline.encode_labels(parts[s]["label"].astype(str).tolist(), ctx.class_names, label_mode="int")
         for s in ("val", "test")}
    rows, preds = [], {}
    for lr in settings.select_lrs:
        rec = replace(base, learning_rate=float(lr))
        model = build_model(ctx, settings.model, **model_options(settings))
        training.compile_model(model, rec, run_eagerly=ctx.profile.run_eagerly)
        for epoch in range(1, settings.select_epochs + 1):
            model.fit(train_ds, epochs=1, verbose=0, shuffle=False)
            pv, pt = training.predict_proba(model, val_ds), training.predict_proba(model, test_ds)
            cid = f"lr={float(lr):g}, epoch {epoch}"
            preds[cid] = (pv, pt)
            rows.append({"candidate": cid, "learning_rate": float(lr), "epoch": epoch,
                         "val accuracy": float(np.mean(pv.argmax(1) == y["val"])),
                         "test accuracy": float(np.mean(pt.argmax(1) == y["test"]))})
    return pd.DataFrame(rows), preds


def selection_row(ctx: Context, settings: Settings) -> dict[str, Any]:
    """R3. Best candidate by test accuracy (reported on that same test) vs best by validation.

    Ties are broken by the earlier candidate, the same rule for both selections.
    """
    name = "R3 test-set reuse"
    split = splits.grouped_split(ctx.manifest, val=settings.test, test=settings.test,
                                 seed=ctx.seed)
    t0 = time.perf_counter()
    table, preds = selection_candidates(ctx, split, settings)
    seconds = round(time.perf_counter() - t0, 2)
    test = split[split["split"] == "test"]
    from osteo_tf import pipeline

    y_test = pipeline.encode_labels(test["label"].astype(str).tolist(), ctx.class_names, label_mode="int")
    groups = test["group"].astype(str).to_numpy()
    picked = {"paper": table.loc[table["test accuracy"].idxmax(), "candidate"],
              "clean": table.loc[table["val accuracy"].idxmax(), "candidate"]}
    records = {}
    for protocol, cid in picked.items():
        rec = evaluation.result_record(
            experiment=name, model=settings.model, protocol=protocol, y_true=y_test, y_prob=preds[cid][1],
            groups=groups, class_names=ctx.class_names, train_seconds=seconds, seed=ctx.seed,
            extra={"selected": cid, "selected_by": "test accuracy" if protocol == "paper" else "validation accuracy",
                   "n_candidates": int(len(table)), "image_size": ctx.image_size, "weights": None})
        ctx.results.append(rec)
        records[protocol] = rec
    table["picked by test"] = table["candidate"] == picked["paper"]
    table["picked by validation"] = table["candidate"] == picked["clean"]
    return {"splits": {"paper": split, "clean": split}, "records": records, "candidates": table}


# ----------------------------------------------------------------------------------------------
# R4: LIME masks from a model that saw the test images vs models that did not


def lime_subset(manifest: pd.DataFrame, n_patients: int, *, seed: int = 0) -> pd.DataFrame:
    """Rows of ``n_patients`` patients (groups), as balanced over the labels as possible."""
    groups = manifest.groupby("group", sort=True)["label"].first()
    if n_patients >= len(groups):
        return manifest.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    labels = sorted(groups.unique())
    per = {lab: list(rng.permutation(groups[groups == lab].index.to_numpy())) for lab in labels}
    chosen: list = []
    while len(chosen) < n_patients and any(per.values()):
        for lab in labels:
            if per[lab] and len(chosen) < n_patients:
                chosen.append(per[lab].pop())
    return manifest[manifest["group"].isin(set(chosen))].reset_index(drop=True)


def lime_row(ctx: Context, settings: Settings) -> dict[str, Any]:
    """R4. Leaky masks (a model trained on every image, test included) vs clean masks.

    Clean masks come from a model trained on the training split only, so no test image was ever
    seen by its masker (``osteo_tf.explain.mask_assignment``, study 05's rule); ``trained_on``
    makes :func:`osteo_tf.explain.lime_masked_dataset` raise if a test image's mask came from a
    model that saw its patient. With ``lime_folds`` >= 2 the clean training images are masked
    out-of-fold too (study 05's requirement: every mask from a model that never saw the image;
    ``lime_folds`` extra trainings); with 0 the training images are masked by the train-split
    model in both variants, so the row isolates exactly one thing: whether the masker saw the
    TEST images. A classifier (same model and recipe as every row) is then trained on the masked
    training images and tested on the masked test images; the maskers' own accuracy on the test
    images is returned too.
    """
    from osteo_tf import explain

    name = "R4 LIME masks"
    subset = lime_subset(ctx.manifest, settings.lime_patients, seed=ctx.seed)
    split = splits.grouped_split(subset, val=0.0, test=settings.test, seed=ctx.seed)
    test = split[split["split"] == "test"]
    # leaky masker: trained on train + test, evaluated on the test images it has seen
    everything = pd.concat([split.assign(split="train"), test], ignore_index=True)
    leaky = _fit(ctx, everything, settings, experiment=f"{name} masker", protocol="paper", keep=False,
                 record_as="masker-saw-test")
    honest = _fit(ctx, split, settings, experiment=f"{name} masker", protocol="clean", keep=False,
                  record_as="masker-train-only")
    models = {"train-only": honest.model, "train-only (its own training images)": honest.model}
    k = settings.lime_folds
    folds = explain.pool_folds(split, k, seed=ctx.seed) if k >= 2 else []
    for i, fold in enumerate(folds):
        models[f"fold{i}"] = _fit(ctx, fold, settings, experiment=f"{name} fold{i}", protocol="clean",
                                  keep=False).model
    clean = explain.mask_assignment(split, folds, split_model="train-only", fold_model="fold{k}",
                                    in_sample_model="train-only (its own training images)")
    lime_kw = dict(image_size=ctx.image_size, num_samples=settings.lime_samples,
                   batch_size=256, seed=ctx.seed, num_features=settings.lime_features)
    root = ctx.out_dir / "data" / "lime"
    src = split[["path", "label", "group"]]
    t0 = time.perf_counter()
    m_leaky, _ = explain.lime_masked_dataset(
        src, root / "leaky", model_for={p: ("all-images", leaky.model) for p in split["path"].astype(str)},
        **lime_kw)
    m_clean, _ = explain.lime_masked_dataset(src, root / "clean", model_for=clean.model_for(models),
                                             trained_on=clean.trained_on, **lime_kw)
    lime_seconds = round(time.perf_counter() - t0, 1)
    masked = {"paper": explain.source_split(m_leaky, root / "leaky", split),
              "clean": explain.source_split(m_clean, root / "clean", split)}
    fits = {p: _fit(ctx, m, settings, experiment=name, protocol=p) for p, m in masked.items()}
    maskers = pd.DataFrame([
        {"masker": "saw every image (leaky)", "accuracy on the test images": leaky.record["accuracy"],
         "CI": leaky.record["ci95"].get("accuracy"), "trained on": "train + test"},
        {"masker": "training split only (clean)", "accuracy on the test images":
         honest.record["accuracy"], "CI": honest.record["ci95"].get("accuracy"), "trained on": "train"},
    ])
    return {"splits": {"paper": split, "clean": split}, "masked": masked, "fits": fits, "maskers": maskers,
            "lime_seconds": lime_seconds, "n_images": int(len(split)),
            "clean_training_masks": "out-of-fold" if k >= 2 else "train-split model (saw them, as in the leaky variant)"}


# ----------------------------------------------------------------------------------------------
# the audit table and figures


@contextlib.contextmanager
def quiet():
    """Keep the report's stderr clean: Keras' "ran out of data" notice (expected with cached
    finite datasets), the bootstrap's note on undefined resamples (recorded in each record's
    ``ci.skipped``), lime's tqdm import warning and TensorFlow's retracing notice."""
    import logging

    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    with _quiet(RAN_OUT_OF_DATA, BOOTSTRAP_SKIPPED, ".*IProgress not found.*"):
        tf_log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            tf_log.setLevel(level)


def run_audit(ctx: Context, settings: Settings, rows: tuple[str, ...] = ("R1", "R2", "R3", "R4")) -> dict[str, dict]:
    """Run the requested rows (``R1``..``R4``) and return their outputs by row id."""
    funcs = {"R1": augmentation_row, "R2": grouping_row, "R3": selection_row, "R4": lime_row}
    unknown = sorted(set(rows) - set(funcs))
    if unknown:
        raise ValueError(f"unknown audit rows {unknown}. Known: {sorted(funcs)}")
    with quiet():
        return {r: funcs[r](ctx, settings) for r in rows}


def audit_table(records: list[dict], *, metric: str = "accuracy") -> pd.DataFrame:
    """One line per audit row: leaky vs clean ``metric`` with CIs, inflation in points, CI overlap."""

    gap = study01.leakage_gap(records, metric=metric)
    by = {(r["experiment"], r.get("protocol")): r for r in records}
    rows = []
    for _, g in gap.iterrows():
        leaky, clean = by[(g["experiment"], "paper")], by[(g["experiment"], "clean")]
        desc = ROWS.get(g["experiment"], ("", ""))
        infl = g["inflation (points)"]
        verdict = ("inflated, CIs apart" if infl is not None and infl > 0 and g["CIs overlap"] is False else
                   "inflated, within noise (CIs overlap)" if infl is not None and infl > 0 else
                   "no inflation measured")
        rows.append({"row": g["experiment"], "leaky protocol": desc[0], "clean twin": desc[1],
                     f"leaky {metric} [95% CI]": evaluation.format_estimate(leaky.get(metric), (leaky.get("ci95") or {}).get(metric)),
                     f"clean {metric} [95% CI]": evaluation.format_estimate(clean.get(metric), (clean.get("ci95") or {}).get(metric)),
                     "inflation (points)": infl, "CIs overlap": g["CIs overlap"],
                     "test images leaky / clean": f"{leaky.get('n_test_images')} / {clean.get('n_test_images')}",
                     "verdict": verdict})
    return pd.DataFrame(rows)


def audit_figure(records: list[dict], *, metric: str = "accuracy"):
    """Paired bars with 95% CI error bars: leaky protocol vs clean twin, one pair per row."""
    import matplotlib.pyplot as plt

    by = {(r["experiment"], r.get("protocol")): r for r in records}
    names = [e for e in ROWS if (e, "paper") in by and (e, "clean") in by]
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(names) + 2), 3.4))
    xs = np.arange(len(names))
    for off, proto, label, color in ((-0.2, "paper", "leaky protocol", "#d62728"),
                                     (0.2, "clean", "clean twin", "#1f77b4")):
        vals = [by[(n, proto)].get(metric) or 0.0 for n in names]
        cis = [(by[(n, proto)].get("ci95") or {}).get(metric) or [v, v] for n, v in zip(names, vals)]
        err = np.array([[max(v - (c[0] if c[0] is not None else v), 0), max((c[1] if c[1] is not None else v) - v, 0)]
                        for v, c in zip(vals, cis)]).T
        ax.bar(xs + off, vals, 0.4, yerr=err if len(names) else None, capsize=3, label=label, color=color, alpha=0.8)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(xs, [n.replace(" ", "\n", 1) for n in names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"test {metric}")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Leaky protocol vs clean twin (bars: 95% patient-bootstrap CI)", fontsize=9)
    fig.tight_layout()
    return fig


def selection_figure(candidates: pd.DataFrame):
    """Validation and test accuracy of every R3 candidate, with both picks marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for lr, part in candidates.groupby("learning_rate"):
        line, = ax.plot(part["epoch"], part["test accuracy"], "-o", ms=3, label=f"test, lr={lr:g}")
        ax.plot(part["epoch"], part["val accuracy"], "--", color=line.get_color(), label=f"val, lr={lr:g}")
    for col, marker, label in (("picked by test", "*", "picked by test (leaky)"),
                               ("picked by validation", "s", "picked by validation (clean)")):
        sel = candidates[candidates[col]]
        ax.scatter(sel["epoch"], sel["test accuracy"], marker=marker, s=120, zorder=5, facecolors="none",
                   edgecolors="k", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def lime_figure(lime_out: dict, *, n: int = 4):
    """A few test images: original, leaky-masked and clean-masked."""
    import matplotlib.pyplot as plt

    from osteo_tf.io import load_xray

    leaky, clean = lime_out["masked"]["paper"], lime_out["masked"]["clean"]
    test = leaky[leaky["split"] == "test"].head(n)
    fig, axes = plt.subplots(3, max(len(test), 1), figsize=(2.1 * max(len(test), 1), 6.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for j, (_, row) in enumerate(test.iterrows()):
        other = clean[clean["source_path"] == row["source_path"]].iloc[0]
        for i, (path, title) in enumerate(((row["source_path"], f"{row['label']}\noriginal"),
                                           (row["path"], "mask: saw it"), (other["path"], "mask: never saw it"))):
            axes[i, j].imshow(load_xray(path), cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_title(title, fontsize=7)
    fig.tight_layout()
    return fig


def checklist_markdown() -> str:
    """The closing checklist as Markdown."""
    return "\n".join(f"{i}. **{k}.** {v}" for i, (k, v) in enumerate(CHECKLIST, 1))


def study01_reference() -> list[dict]:
    """Study 01's published small CNN on set C (E5, paper protocol) beside our R1 rows."""
    return [{"experiment": "R1 augment-then-split", "model": "study01_cnn", "accuracy": 0.961,
             "specificity": 0.955, "sensitivity": 0.968,
             "source": "study 01 E5: small CNN on set C, augment-then-split (Acc 96.1 / Sp 95.5 / Sn 96.8)"}]
