"""Study 04: lumbar-spine DXA, bone quality by TBS range; transfer models and small tuned CNNs.

What the paper did (study 04) and how this module reproduces it:

* Labels come from the Trabecular Bone Score: >= 1.350 normal, 1.200-1.350 partially degraded,
  <= 1.200 degraded. The binary task keeps normal vs degraded and DROPS the middle class
  (:func:`tbs_class`, :func:`labels_from_tbs`). A user's manifest CSV with a ``tbs`` column and
  no ``label`` column gets its labels this way (:func:`setup`).
* The data are imbalanced (text: 1098 normal / 371 degraded). The synthetic generator draws
  balanced classes, so :func:`subsample_to_fraction` drops degraded patients (seeded) until the
  paper's share is reached; that is stated in the report.
* Patient-grouped train / validation / test split FIRST; then offline augmentation of train
  and validation only (horizontal flip, rotation +-10 deg, brightness/darkness 10-40%), the
  minority class augmented up to 37% (:func:`augment_offline`, written as PNG files); the test
  split is only resized, never augmented.
* Approach 1 (all layers) / approach 2 (new head only, trained on cached backbone features: the
  augmentation is offline, so the frozen backbone sees the same images every epoch) / approach 3
  (Table II's four small CNNs and a KerasTuner search, :func:`tuner_search`).
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from dataclasses import dataclass, replace

from osteo_tf import augment, datasets, experiments, io, models, pipeline, settings as _settings
from osteo_tf._warnings import RAN_OUT_OF_DATA, quiet
from osteo_tf.experiments import Context, Synthetic, load_images
from osteo_tf.training import TENSORBOARD_DIR, Recipe, tensorboard_callback

STUDY = "04-dxa-tbs"

TBS_NORMAL = 1.350
"""TBS at or above which bone micro-architecture is 'normal'."""
TBS_DEGRADED = 1.200
"""TBS at or below which bone micro-architecture is 'degraded'."""
MIDDLE_CLASS = "partially_degraded"
POSITIVE = "degraded"
PAPER_DEGRADED_FRACTION = 371 / 1469
"""The paper's text: 1098 normal / 371 degraded (its Table I sums to 1258 / 211, i.e. 14.4%)."""
TARGET_FRACTION = 0.37
"""Share of degraded images in train and validation after the offline augmentation."""
TRANSFER_DROPOUT = 0.4
"""The paper's new head: dropout 0.4, then a 2-way softmax."""

APPROACHES = ("approach1", "approach2", "approach3")

RECIPES: dict[str, Recipe] = {
    "approach1": Recipe("sgd", 1e-4, 0.9, 24, 50, None, "val_loss", "all",
                        source="study 04 approach 1: all layers retrained, batch 24, SGD lr 1e-4 momentum 0.9, 50 epochs"),
    "approach2": Recipe("sgd", 1e-4, 0.9, 24, 20, None, "val_loss", "head",
                        source="study 04 approach 2: only the new head trained, 20 epochs"),
    "model1": Recipe("sgd", 1e-3, 0.6, 24, 200, 15, "val_loss", "all", "binary_crossentropy",
                     source="study 04 approach 3, Model 1 (Table II)"),
    "model2": Recipe("sgd", 1e-4, 0.7, 24, 200, 15, "val_loss", "all", "binary_crossentropy",
                     source="study 04 approach 3, Model 2 (Table II)"),
    "model3": Recipe("sgd", 1e-3, 0.9, 24, 200, 15, "val_loss", "all", "binary_crossentropy",
                     source="study 04 approach 3, Model 3 (Table II)"),
    "model4": Recipe("sgd", 1e-4, 0.9, 48, 200, 15, "val_loss", "all", "binary_crossentropy",
                     source="study 04 approach 3, Model 4 (Table II)"),
}
"""The paper's recipes: approaches 1 and 2, and Table II's SGD settings of Models 1-4."""


@dataclass(frozen=True, kw_only=True)
class Settings(_settings.StudySettings):
    """Study 04's settings.

    Attributes:
        transfer_models: the transfer models of approaches 1 and 2.
        approaches: the approaches to run (``approach1``, ``approach2``, ``approach3``).
        small_models: approach 3's Table II CNNs (``study04_model1`` ... ``study04_model4``).
        image_size: square model input in px (raised to a model's minimum input size).
        approach1_epochs, approach2_epochs, small_epochs: epochs of each approach.
        patience: early-stopping patience of approach 3.
        tuner_trials: KerasTuner trials of approach 3 (0: no search).
        tuner_epochs: epochs of each tuner trial.
        patients: synthetic patients generated (before the degraded share is cut).
        synth_size: side of the synthetic DXA images in px.
        degraded_fraction: share of degraded patients the synthetic data is cut to.
        val, test: patient shares of the validation and test splits.
        target_fraction: share of degraded images in train and validation after augmentation.
        transfer_lr: SGD learning rate of approaches 1 and 2.
        intensity: after the resize, ``none`` (the paper) or ``standardize`` (per-image z-score).

    The paper: 1469 patients (one image each; 2196 synthetic patients are generated and the
    degraded ones dropped to 25.3%), 224 px, batch 24, SGD lr 1e-4 / momentum 0.9, approach 1 50
    epochs, approach 2 20 epochs, approach 3 at most 200 epochs with early stopping after 15, test
    181 images (12.3%), validation 161 (11%). The quick profile keeps the generator's full
    256 x 128 DXA resolution (resized to 128 px): the label lives in the fine vertebral texture,
    which a 64 px input averages away. Its approach 3 trains Model 1 (the paper's best); Models
    2-4 and the KerasTuner search are left to ``full`` (``small_models`` adds them), and the smoke
    profile runs Model 3 and one tuner trial to keep those code paths tested. ResNet-18 from random
    initialisation stays near chance (AUC 0.50 after 4 epochs, 2026-12-01), so approach 1 runs 2
    epochs: it is the paper's method only with ImageNet weights.
    """

    transfer_models: tuple[str, ...]
    approaches: tuple[str, ...]
    small_models: tuple[str, ...]
    image_size: int
    approach1_epochs: int
    approach2_epochs: int
    small_epochs: int
    patience: int
    tuner_trials: int
    tuner_epochs: int
    patients: int
    synth_size: int
    degraded_fraction: float
    val: float
    test: float
    target_fraction: float
    transfer_lr: float
    intensity: str

    PROFILES = {
        "smoke": {"transfer_models": ("squeezenet",), "approaches": APPROACHES,
                  "small_models": ("study04_model3",), "image_size": 48, "approach1_epochs": 1,
                  "approach2_epochs": 2, "small_epochs": 1, "patience": 15, "tuner_trials": 1,
                  "tuner_epochs": 1, "patients": 40, "synth_size": 96, "degraded_fraction": 0.25,
                  "val": 0.2, "test": 0.3, "target_fraction": TARGET_FRACTION, "transfer_lr": 1e-4,
                  "intensity": "standardize"},
        "quick": {"transfer_models": ("resnet18",), "approaches": APPROACHES,
                  "small_models": ("study04_model1",), "image_size": 128,
                  "approach1_epochs": 2, "approach2_epochs": 20, "small_epochs": 30, "patience": 15,
                  "tuner_trials": 0, "tuner_epochs": 2, "patients": 800, "synth_size": 256,
                  "degraded_fraction": 0.25, "val": 0.15, "test": 0.2, "target_fraction": TARGET_FRACTION,
                  "transfer_lr": 1e-2, "intensity": "standardize"},
        "full": {"transfer_models": ("resnet18", "alexnet", "vgg16", "densenet121", "squeezenet"),
                 "approaches": APPROACHES,
                 "small_models": ("study04_model1", "study04_model2", "study04_model3", "study04_model4"),
                 "image_size": 224, "approach1_epochs": 50, "approach2_epochs": 20, "small_epochs": 200,
                 "patience": 15, "tuner_trials": 20, "tuner_epochs": 20, "patients": 2196, "synth_size": 256,
                 "degraded_fraction": round(PAPER_DEGRADED_FRACTION, 3), "val": 0.11, "test": 0.123,
                 "target_fraction": TARGET_FRACTION, "transfer_lr": 1e-4, "intensity": "none"},
    }
    FULL_SMOKE = {"patients": 40, "approach1_epochs": 1, "approach2_epochs": 1, "small_epochs": 1,
                  "tuner_trials": 1, "tuner_epochs": 1}
    WITH_WEIGHTS = {"quick": {"transfer_models": ("densenet121",), "approach2_epochs": 5, "transfer_lr": 1e-4,
                              "intensity": "none"}}
    """With DenseNet121's ImageNet file on disk, approaches 1 and 2 use the paper's DenseNet121 at
    128 px (the paper's learning rate; approach 2 for 5 epochs) instead of the ResNet-18 stand-in,
    which Keras has no ImageNet weights for."""
    STANDIN_NOTE = ("ResNet-18 (the paper's, built by osteo_tf; Keras has no ImageNet weights for it) from random "
                    "initialisation: approach 2 then trains a head on random features.")

    def check(self) -> None:
        _settings.choice(self, "approaches", APPROACHES)
        _settings.not_empty(self, "approaches")
        _settings.model_names(self, "transfer_models", "small_models")
        _settings.choice(self, "small_models", tuple(f"study04_model{k}" for k in range(1, 5)))
        _settings.positive(self, "image_size", "approach1_epochs", "approach2_epochs", "small_epochs", "patience",
                           "tuner_epochs", "patients", "synth_size")
        _settings.at_least(self, "tuner_trials", 0, meaning="0: no search")
        for name in ("degraded_fraction", "val", "test", "target_fraction"):
            _settings.in_range(self, name, 0.0, 1.0)
        _settings.in_range(self, "transfer_lr", 0.0, 1.0)
        _settings.choice(self, "intensity", tuple(pipeline.INTENSITY_STEPS))


# ----------------------------------------------------------------------------------------------
# labels from TBS
# ----------------------------------------------------------------------------------------------

def tbs_class(tbs: Any) -> str | None:
    """The TBS range of one value: "normal" (>= 1.350), "degraded" (<= 1.200), else
    "partially_degraded"; None for a missing / non-numeric value."""
    try:
        v = float(tbs)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v):
        return None
    if v >= TBS_NORMAL:
        return "normal"
    if v <= TBS_DEGRADED:
        return "degraded"
    return MIDDLE_CLASS


def labels_from_tbs(manifest: pd.DataFrame, *, tbs_col: str = "tbs", binary: bool = True
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Derive labels from a TBS column.

    Args:
        manifest: rows with a ``tbs_col`` column.
        tbs_col: the TBS column.
        binary: keep normal vs degraded only (the paper's task): partially degraded rows and rows
            without a usable TBS are dropped.

    Returns:
        ``(labelled manifest, counts)``: counts has one row per TBS range with the number of
        images and patients, and whether the range is kept.

    Raises:
        ValueError: no ``tbs_col`` column.
    """
    if tbs_col not in manifest.columns:
        raise ValueError(f"manifest has no {tbs_col!r} column. Columns: {list(manifest.columns)}")
    m = manifest.copy()
    m["label"] = [tbs_class(v) for v in m[tbs_col]]
    m["label"] = m["label"].fillna("no usable TBS")
    keep = {"normal", "degraded"} if binary else {"normal", MIDDLE_CLASS, "degraded"}
    ranges = {"normal": ">= 1.350", MIDDLE_CLASS: "1.200-1.350", "degraded": "<= 1.200", "no usable TBS": "-"}
    group = m["group"] if "group" in m.columns else pd.Series(range(len(m)), index=m.index)
    counts = pd.DataFrame([{"TBS range": ranges[c], "class": c, "images": int((m["label"] == c).sum()),
                            "patients": int(group[m["label"] == c].nunique()), "kept": c in keep}
                           for c in ranges])
    out = m[m["label"].isin(keep)].reset_index(drop=True)
    return out, counts


def _manifest_csv(data_dir: str | Path) -> Path | None:
    """The manifest CSV ``datasets.find_dataset`` would read for ``data_dir`` (None for folders)."""
    p = Path(data_dir).expanduser()
    if p.is_file() and p.suffix.lower() == ".csv":
        return p
    if p.is_dir() and (p / "manifest.csv").is_file():
        return p / "manifest.csv"
    return None


def is_tbs_manifest(data_dir: str | Path) -> bool:
    """True when ``data_dir`` is (or holds) a manifest CSV with a ``tbs`` column and no ``label``."""
    csv = _manifest_csv(data_dir)
    if csv is None:
        return False
    cols = {str(c).strip().lower() for c in pd.read_csv(csv, nrows=0).columns}
    return "tbs" in cols and "label" not in cols


# ----------------------------------------------------------------------------------------------
# setup: data, labels, imbalance
# ----------------------------------------------------------------------------------------------

def subsample_to_fraction(manifest: pd.DataFrame, *, positive: str = POSITIVE, fraction: float,
                          seed: int = 0) -> pd.DataFrame:
    """Drop whole patients of class ``positive`` (seeded) until it is at most ``fraction`` of the
    patients. Nothing is dropped when it already is."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1). Received: fraction={fraction!r}")
    groups = manifest.groupby("group")["label"].first()
    pos = np.array(sorted(groups.index[groups == positive].astype(str)))
    n_neg = int((groups != positive).sum())
    keep_n = int(math.floor(fraction * n_neg / (1.0 - fraction) + 1e-9))
    if len(pos) <= keep_n:
        return manifest.reset_index(drop=True)
    kept = set(np.random.default_rng(seed).choice(pos, keep_n, replace=False))
    drop = set(pos) - kept
    return manifest[~manifest["group"].astype(str).isin(drop)].reset_index(drop=True)


def class_balance(manifest: pd.DataFrame, *, by: str | None = None) -> pd.DataFrame:
    """Images (and patients) per class with the share of each class, optionally per ``by`` column."""
    rows = []
    parts = [("all", manifest)] if by is None else list(manifest.groupby(by, sort=False))
    for key, part in parts:
        for label, n in part["label"].value_counts().sort_index().items():
            rows.append({**({by: key} if by else {}), "class": label, "images": int(n),
                         "patients": int(part.loc[part["label"] == label, "group"].nunique()),
                         "share of images": round(n / len(part), 3)})
    return pd.DataFrame(rows)


def _refresh_data(ctx: Context, provenance: str) -> None:
    from osteo_tf.experiments import _class_order

    ctx.class_names = sorted(ctx.manifest["label"].unique(), key=_class_order)
    ctx.data.update(n_images=int(len(ctx.manifest)), n_groups=int(ctx.manifest["group"].nunique()),
                    classes={c: int((ctx.manifest["label"] == c).sum()) for c in ctx.class_names},
                    label_provenance=provenance)


def setup(settings: Settings, *, data_dir: str | Path | None = None, out_dir: str | Path | None = None,
          seed: int = 0) -> Context:
    """Seed, find or generate the data, derive TBS labels and the paper's class imbalance.

    * no ``data_dir``: synthetic DXA (2 classes), one image per patient, degraded patients
      dropped to ``settings.degraded_fraction``; the TBS-derived label is checked against the
      generator's label (they must agree: the generator draws TBS inside the class range);
    * a manifest CSV with ``tbs`` and no ``label``: labels from the TBS thresholds, partially
      degraded dropped (``experiments.setup``'s ``relabel`` hook, so the quarantine, copy groups
      and split.csv work as for every study);
    * class folders / labelled manifests: a middle class (partially degraded, osteopenia) is
      dropped for the binary task.

    ``ctx.tables["labels"]`` counts images per label source / TBS range.

    Raises:
        ValueError: when fewer or more than two classes remain.
    """
    common = dict(seed=seed, out_dir=out_dir)
    if data_dir is not None and is_tbs_manifest(data_dir):
        derived: dict[str, pd.DataFrame] = {}

        def tbs_labels(manifest: pd.DataFrame) -> pd.DataFrame:
            labelled, derived["table"] = labels_from_tbs(manifest)
            return labelled

        ctx = experiments.setup(STUDY, settings, data_dir=data_dir, relabel=tbs_labels, **common)
        table = derived["table"]
        dropped = int(table.loc[~table["kept"], "images"].sum())
        _refresh_data(ctx, f"manifest {_manifest_csv(data_dir).name}: labels derived from the 'tbs' column "
                           f"(>= {TBS_NORMAL:.3f} normal, <= {TBS_DEGRADED:.3f} degraded); {dropped} image(s) "
                           "partially degraded or without a TBS dropped for the binary task")
    elif data_dir is not None:
        ctx = experiments.setup(STUDY, settings, data_dir=data_dir,
                                label_map={MIDDLE_CLASS: None, "osteopenia": None}, **common)
        table = class_balance(ctx.manifest)
        if "tbs" in ctx.manifest.columns:  # labels given AND a tbs column: show their agreement
            derived = [tbs_class(v) or "no usable TBS" for v in ctx.manifest["tbs"]]
            table = pd.crosstab(ctx.manifest["label"], pd.Series(derived, name="TBS range", index=ctx.manifest.index))
            table = table.reset_index()
    else:
        ctx = experiments.setup(STUDY, settings, synthetic=Synthetic("dxa", 2, settings.patients, settings.synth_size,
                                                                     images_per_patient=1), **common)
        n_before = ctx.manifest["group"].nunique()
        derived, table = labels_from_tbs(ctx.manifest, tbs_col="TBS_true")
        agree = bool(len(derived) == len(ctx.manifest) and (derived["label"].to_numpy() == ctx.manifest["label"].to_numpy()).all())
        table["generator label agrees"] = agree
        ctx.manifest = subsample_to_fraction(ctx.manifest, fraction=settings.degraded_fraction, seed=seed)
        _refresh_data(ctx, ctx.data["label_provenance"] + f"; TBS-derived labels agree with the generator's: {agree}; "
                      f"{n_before - ctx.manifest['group'].nunique()} degraded patients dropped (seeded) so that "
                      f"degraded = {settings.degraded_fraction:.1%} of patients, as in the paper's text")
    if len(ctx.class_names) != 2:
        raise ValueError(f"study 04 is a binary task (normal vs degraded); these classes remain: {ctx.class_names}")
    ctx.tables["labels"] = table
    return ctx


# ----------------------------------------------------------------------------------------------
# offline augmentation (train and validation only)
# ----------------------------------------------------------------------------------------------

def work_size(settings: Settings) -> int:
    """Side of the written images: the largest input any model of the run needs."""
    names = list(settings.transfer_models) + list(settings.small_models)
    return max([settings.image_size] + [model_size(settings, n) for n in names])


def model_size(settings: Settings, name: str) -> int:
    """Input size of ``name`` in this run: the run's size, raised to the model's minimum."""

    return max(settings.image_size, int(models.get_spec(name).min_input_size))


def augment_offline(ctx: Context, split: pd.DataFrame, *, size: int, target_fraction: float = TARGET_FRACTION,
                    folder: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the study's offline sets: train and validation augmented to ``target_fraction``
    degraded (:func:`osteo_tf.augment.augment_to_fraction`), test only resized.

    Every written image keeps its patient as ``group`` and its source image as ``source``; the
    ``aug`` column is "orig" or the transform applied.

    Returns:
        ``(manifest of the written files with a split column, summary table per split)``.
    """

    root = Path(folder) if folder else ctx.out_dir / "data" / "offline"
    index = {c: i for i, c in enumerate(ctx.class_names)}
    parts, rows = [], []
    for k, name in enumerate(("train", "val", "test")):
        src = split[split["split"] == name]
        if len(src) == 0:
            continue
        images = load_images(src, size)
        ids = [f"img{i:05d}" for i in src.index]
        labels = np.array([index[v] for v in src["label"].astype(str)])
        if name == "test" or len(np.unique(labels)) < 2:
            records = [dict(image=im, source_id=sid, aug="orig", label=int(y)) for im, sid, y in zip(images, ids, labels)]
        else:
            records = augment.augment_to_fraction(list(images), labels, ids, target_fraction=target_fraction,
                                                  seed=ctx.seed + k)
        for r in records:
            r["label"] = ctx.class_names[int(r["label"])]
        manifest_path = augment.write_offline_set(records, root / name)
        m = pd.read_csv(manifest_path, dtype=str)
        m["source"] = m["group"]
        m["group"] = m["source"].map(dict(zip(ids, src["group"].astype(str))))
        m["aug"] = [r["aug"] for r in records]
        m = datasets.rooted(m, root / name, sha256=True)
        m["split"] = name
        parts.append(m)
        pos = ctx.class_names[-1]
        rows.append({"split": name, "original images": int(len(src)),
                     f"original {pos}": int((src["label"] == pos).sum()),
                     "augmented copies added": int((m["aug"] != "orig").sum()),
                     "images after": int(len(m)), f"{pos} after": int((m["label"] == pos).sum()),
                     f"{pos} share after": round(float((m["label"] == pos).mean()), 3),
                     "augmented": name != "test"})
    return pd.concat(parts, ignore_index=True), pd.DataFrame(rows)


def augmentation_examples(manifest: pd.DataFrame, n: int = 4) -> tuple[list[np.ndarray], list[str]]:
    """A few (original, augmented copy) pairs of the same source, for a figure; when the training
    split needed no copy (its classes already at the target share), ``n`` originals so titled."""

    aug = manifest[(manifest["aug"] != "orig") & (manifest["split"] == "train")]
    images, titles = [], []
    if aug.empty:
        for _, row in manifest[manifest["split"] == "train"].head(n).iterrows():
            images.append(io.load_xray(row["path"]))
            titles.append(f"{row['source']} original (no copy needed)")
        return images, titles
    for src in aug["source"].drop_duplicates().head(n // 2 if n > 1 else 1):
        orig = manifest[(manifest["source"] == src) & (manifest["aug"] == "orig")].iloc[0]
        copy = aug[aug["source"] == src].iloc[0]
        images += [io.load_xray(orig["path"]), io.load_xray(copy["path"])]
        titles += [f"{src} original", copy["aug"].split("_", 1)[-1]]
    return images, titles


# ----------------------------------------------------------------------------------------------
# recipes, runs, tuner
# ----------------------------------------------------------------------------------------------

def recipe_for(settings: Settings, approach: str, model: str | None = None) -> Recipe:
    """The training recipe of one run with the profile's epochs (and learning rate for the
    transfer models in quick: random init needs a larger step than ImageNet fine-tuning)."""
    if approach == "approach1":
        return replace(RECIPES["approach1"], epochs=settings.approach1_epochs, learning_rate=settings.transfer_lr)
    if approach == "approach2":
        return replace(RECIPES["approach2"], epochs=settings.approach2_epochs, learning_rate=settings.transfer_lr)
    if approach == "approach3":
        k = str(model).removeprefix("study04_model")
        return replace(RECIPES[f"model{k}"], epochs=settings.small_epochs, patience=settings.patience)
    raise ValueError(f"approach must be approach1, approach2 or approach3. Received: {approach!r}")


EXPECTED_WARNINGS = (RAN_OUT_OF_DATA, ".*shuffle=True. was passed.*", ".*has no ImageNet weights.*",
                     ".*ImageNet weights for .* could not be loaded.*")
"""Warnings that are noise in this report (the facts are in its tables): the ImageNet fallback (the
weights column says "random"), tf.data 'ran out of data' at each epoch end of a finite dataset,
and Keras' note that shuffle is ignored for a tf.data input."""


def run_approach(ctx: Context, split: pd.DataFrame, settings: Settings, approach: str, model: str):
    """Train and evaluate one (approach, model) pair through ``experiments.fit_evaluate``.

    Approach 1: new head (dropout 0.4, 2-way softmax), every layer trained. Approach 2: the same
    model built with ``trainable="head"``, trained on cached backbone features
    (``head_only_features=True``). Approach 3: a Table II CNN (one sigmoid unit) with its own
    recipe and early stopping.
    """

    with quiet(*EXPECTED_WARNINGS):
        return _run_approach(ctx, split, settings, approach, model)


def steps(settings: Settings) -> list[tuple[str, dict]]:
    """The deterministic steps every model of the run sees after the resize: the ``intensity``
    setting (``pipeline.intensity_steps``; "none" = the paper's resize only)."""
    return pipeline.intensity_steps(settings.intensity)


def _run_approach(ctx: Context, split: pd.DataFrame, settings: Settings, approach: str, model: str):

    rec = recipe_for(settings, approach, model)
    size = model_size(settings, model)
    common = dict(experiment=approach, rec=rec, image_size=size, steps=steps(settings))
    if approach == "approach1":
        return experiments.fit_evaluate(ctx, split, model=model, model_options={"dropout": TRANSFER_DROPOUT},
                                        **common)
    if approach == "approach2":
        return experiments.fit_evaluate(ctx, split, model=model,
                                        model_options={"dropout": TRANSFER_DROPOUT, "trainable": "head"},
                                        head_only_features=True, **common)
    builder = functools.partial(_small_cnn, ctx, model, size)
    return experiments.fit_evaluate(ctx, split, model=builder, record_as=model, **common)


def _small_cnn(ctx: Context, name: str, size: int):

    return experiments.build_model(ctx, name, image_size=size)  # random init: PyTorch's BN momentum


def _tunable(hp, *, input_shape, run_eagerly: bool = False):

    model = models.study04_tunable(hp, input_shape=input_shape)
    models.set_random_init_batchnorm(model)  # trained from scratch, as build_model's CNNs
    model.run_eagerly = bool(run_eagerly)
    return model


def tuner_search(ctx: Context, split: pd.DataFrame, *, trials: int, epochs: int, image_size: int,
                 batch_size: int = 24, steps: Sequence = ()) -> dict:
    """A KerasTuner random search over ``models.study04_tunable`` (the paper used Ray Tune),
    scored on the (augmented) validation split by ``val_loss``; the test split is not touched.
    TensorBoard logs (per-epoch scalars and the trials' hyperparameters for the HParams
    dashboard) go into ``tuner/study04_tunable/tensorboard/`` of the output folder.

    Returns:
        dict with ``trials`` (DataFrame: hyperparameters, val_loss, val accuracy, seconds),
        ``best_hp`` (dict), ``builder`` (zero-argument function building the best model,
        compiled with its SGD settings) and ``seconds``.
    """
    import keras_tuner as kt

    parts = {s: split[split["split"] == s] for s in ("train", "val")}
    if len(parts["val"]) == 0:
        raise ValueError("tuner_search needs a validation split")
    common = dict(class_names=ctx.class_names, image_size=image_size, label_mode="binary", batch_size=batch_size,
                  steps=steps)
    train_ds = pipeline.make_dataset(parts["train"], training=True, seed=ctx.seed, **common)
    val_ds = pipeline.make_dataset(parts["val"], **common)
    shape = (image_size, image_size, 1)
    hypermodel = functools.partial(_tunable, input_shape=shape, run_eagerly=ctx.profile.run_eagerly)
    tuner = kt.RandomSearch(hypermodel=hypermodel, objective="val_loss", max_trials=int(trials), seed=ctx.seed,
                            directory=str(ctx.out_dir / "tuner"), project_name="study04_tunable", overwrite=True)
    # keras-tuner moves a TensorBoard callback's logs into one folder per trial and adds its
    # HParams summaries; inside the project folder, overwrite=True clears them with the trials.
    logs = tensorboard_callback(Path(tuner.project_dir) / TENSORBOARD_DIR)
    t0 = time.perf_counter()
    with quiet(*EXPECTED_WARNINGS):
        tuner.search(train_ds, validation_data=val_ds, epochs=int(epochs), callbacks=[logs], verbose=0)
    seconds = time.perf_counter() - t0
    done = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    if not done:
        msgs = {str(t.message).strip().splitlines()[-1] for t in tuner.oracle.trials.values() if t.message}
        raise RuntimeError(f"every KerasTuner trial failed: {sorted(msgs)}")
    rows = []
    for trial in tuner.oracle.get_best_trials(num_trials=len(done)):
        hp = dict(trial.hyperparameters.values)
        metrics = trial.metrics
        row = {"trial": trial.trial_id, "score (val_loss)": trial.score}
        if metrics.exists("val_accuracy"):
            row["val accuracy"] = metrics.get_best_value("val_accuracy")
        row.update(hp)
        rows.append(row)
    best = tuner.get_best_hyperparameters(1)[0]
    return {"trials": pd.DataFrame(rows), "best_hp": dict(best.values),
            "builder": functools.partial(_tunable, best, input_shape=shape, run_eagerly=ctx.profile.run_eagerly),
            "seconds": round(seconds, 1)}


def fit_tuned(ctx: Context, split: pd.DataFrame, search: dict, *, epochs: int, patience: int, image_size: int,
              steps: Sequence = ()):
    """Retrain the tuner's best architecture (its own SGD settings) and test it, as
    ``approach3 / study04_tuned`` (no paper row: the paper reports its four chosen models)."""
    hp = search["best_hp"]
    rec = replace(RECIPES["model1"], epochs=int(epochs), patience=int(patience),
                  learning_rate=float(hp["learning_rate"]), momentum=float(hp["momentum"]),
                  source="study 04 approach 3: best KerasTuner trial")
    with quiet(*EXPECTED_WARNINGS):
        return experiments.fit_evaluate(ctx, split, model=search["builder"], experiment="approach3", rec=rec,
                                        image_size=image_size, record_as="study04_tuned", steps=steps)


# ----------------------------------------------------------------------------------------------
# report tables
# ----------------------------------------------------------------------------------------------

def counts_table(records: Sequence[dict]) -> pd.DataFrame:
    """The paper's results layout: TP FP TN FN, Acc, Sn, Sp, F1, AUC and seconds per 10 epochs."""
    rows = []
    for r in records:
        rows.append({"approach": r["experiment"], "model": r["model"], "TP": r.get("tp"), "FP": r.get("fp"),
                     "TN": r.get("tn"), "FN": r.get("fn"),
                     **{k: None if r.get(k) is None else round(float(r[k]), 3)
                        for k in ("accuracy", "sensitivity", "specificity", "f1", "auc")},
                     "s / 10 epochs": r.get("seconds_per_10_epochs"), "epochs run": r.get("epochs_run"),
                     "weights": r.get("weights")})
    return pd.DataFrame(rows)


def paper_table() -> pd.DataFrame:
    """The paper's results (registry rows) in the same layout as :func:`counts_table`."""
    from osteo_tf.studies import get_study

    return counts_table([{**r, "epochs_run": None, "weights": "imagenet" if r["experiment"] != "approach3" else "scratch"}
                         for r in get_study("04-dxa-tbs").paper])


def paper_records() -> list[dict]:
    """The paper's result rows (registry), e.g. for ``plots.bubble_chart``."""
    from osteo_tf.studies import get_study

    return [dict(r) for r in get_study("04-dxa-tbs").paper]


def claims(ctx: Context, settings: Settings) -> list[experiments.Comparison]:
    """The paper's ranking of its approaches in AUC: approach 3 (small CNNs) above approach 1 (all
    layers retrained) above approach 2 (head only), with the paper's differences for its headline
    models (the first transfer model and the first small CNN of this run, when the paper has
    them); and the approach-3 headline against the texture-feature floor on its own split."""
    tm = settings.transfer_models[0] if settings.transfer_models else None
    sm = settings.small_models[0] if settings.small_models else None

    def paper(b, a):
        pb, pa = experiments.paper_value(STUDY, *b[:2], "auc"), experiments.paper_value(STUDY, *a[:2], "auc")
        if pb is None or pa is None:
            return None, "the paper has no AUC for this pair."
        return pb - pa, f"AUC {pb:.3f} ({b[0]} {b[1]}) vs {pa:.3f} ({a[0]} {a[1]})."

    out = []
    a1, a2 = ("approach1", tm, "clean"), ("approach2", tm, "clean")
    a3 = ("approach3", sm, "clean")
    extra = ("balanced_accuracy",)
    if sm is not None and tm is not None:
        p, note = paper(a3, a1)
        out.append(experiments.Comparison(f"approach 3 ({sm}) vs approach 1 ({tm}, all layers)", a1, a3, metric="auc",
                                          paper=p, paper_note=note, extra_metrics=extra))
        p, note = paper(a3, a2)
        out.append(experiments.Comparison(f"approach 3 ({sm}) vs approach 2 ({tm}, head only)", a2, a3, metric="auc",
                                          paper=p, paper_note=note, extra_metrics=extra))
    if tm is not None:
        p, note = paper(a1, a2)
        out.append(experiments.Comparison(f"approach 1 vs approach 2 ({tm}: all layers vs head only)", a2, a1,
                                          metric="auc", paper=p, paper_note=note, extra_metrics=extra))
    if a3 in ctx.predictions:
        floor = experiments.texture_floor(ctx, a3)
        out.append(experiments.Comparison(f"approach 3 ({sm}) vs the texture floor", tuple(floor["key"]), a3,
                                          metric="auc", paper_note="the paper has no such baseline.",
                                          extra_metrics=extra))
    return out
