"""Study 05: knee radiographs, EfficientNetB0 / MobileNetV3, LIME and Grad-CAM, LIME-masked retraining.

The paper (study 05) trains EfficientNetB0 and MobileNetV3 (ImageNet weights, GAP -> Dense 1024
ReLU -> softmax, Adam, categorical cross-entropy, 30 epochs) on a 7:2:1 split, explains them with
LIME and Grad-CAM, then multiplies every image by its LIME mask ("feature dataset", one per model)
and retrains both models on it.

What this module adds to the paper's protocol:

* the split is grouped by patient (no patient on two sides);
* every LIME mask comes from a model that NEVER saw the image (:func:`lime_masked_split`): the
  training+validation pool is cut into k patient-grouped folds, fold k is masked by a model
  trained on the other folds, and the test images are masked by the model trained on the
  training split only (it never saw a test patient): ``explain.mask_assignment``, the rule the
  leakage audit uses too. The masks explain
  the PREDICTED class (explaining the true label would write the test label into the test
  input). A leakage guard (``trained_on``) raises if any mask model was trained on the group of
  the image it masks;
* sanity checks of the explanations: the pointing game on the synthetic knee's tibial ROI
  (``roi_bbox`` of metadata.csv, mapped to the model input size) and the model-parameter
  randomization test (Adebayo et al. 2018).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from osteo_tf import augment, experiments, explain, io, models, pipeline, plots, settings as _settings, splits
from osteo_tf._warnings import quiet
from osteo_tf.experiments import Context, FitResult, Synthetic
from osteo_tf.training import Recipe

STUDY = "05-knee-explanations"

_SEG = {"compactness": 0.1, "sigma": 1.0, "start_label": 0}

RECIPES: dict[str, Recipe] = {
    "transfer": Recipe("adam", 1e-3, 0.0, 32, 30, None, "val_loss", "all",
                       source="study 05: Adam (default lr 1e-3), categorical cross-entropy, 30 epochs"),
}
"""The paper's recipe (batch size not stated: 32 assumed)."""

EXPECTED_WARNINGS = (".*random weights.*", "IProgress not found")
"""Warnings a CPU run of this study raises on purpose, hidden inside the study's own steps: the
models fall back to random weights without ImageNet files (the report's weights column says so),
and lime's progress bar finds no Jupyter widgets in a batch kernel."""


@dataclass(frozen=True, kw_only=True)
class Settings(_settings.StudySettings):
    """Study 05's settings.

    Attributes:
        models: the registry models trained on the original images.
        mask_models: the models that get their own LIME-masked dataset and are retrained on it
            (the paper: both); a subset of ``models``.
        image_size: square model input in px.
        epochs: training epochs.
        mask_epochs: epochs of the k-fold mask models.
        patients: synthetic patients.
        images_per_patient: synthetic images per patient.
        batch_size: mini-batch size.
        kfold: folds over train+val for the mask models.
        lime_samples: LIME perturbation samples per image.
        lime_segments: SLIC superpixels per image.
        lime_features: superpixels a LIME explanation keeps.
        explain_per_class: test images per class shown with their explanations.
        sanity_images: test images of the pointing game and the randomization check.
        intensity: ``none`` (the paper: resize only) or ``standardize`` (per-image z-score,
            ``preprocessing.standardize``, before the resize).

    The paper: 774 images (one per patient assumed), 7:2:1, 224 px, 30 epochs, batch size not
    stated (32 assumed), LIME with lime's defaults (1000 samples). The quick profile trains
    ``compact_cnn`` (61k parameters, GAP head, not from the paper) with ``intensity="standardize"``:
    MobileNetV3 and EfficientNetB0 from random initialisation stay at chance on the synthetic knee
    at CPU budgets. ``models="mobilenetv3small"`` restores the paper's family. It generates 400
    patients, so the 7:2:1 split tests 40.
    """

    models: tuple[str, ...]
    mask_models: tuple[str, ...]
    image_size: int
    epochs: int
    mask_epochs: int
    patients: int
    images_per_patient: int
    batch_size: int
    kfold: int
    lime_samples: int
    lime_segments: int
    lime_features: int
    explain_per_class: int
    sanity_images: int
    intensity: str

    classes: tuple[str, ...] = ("normal", "osteoporosis")  # the paper's classes (StudySettings.classes)

    PROFILES = {
        "smoke": {"models": ("mobilenetv3small",), "mask_models": ("mobilenetv3small",), "image_size": 48,
                  "epochs": 1, "mask_epochs": 1, "patients": 16, "images_per_patient": 1, "batch_size": 16,
                  "kfold": 2, "lime_samples": 100, "lime_segments": 25, "lime_features": 5,
                  "explain_per_class": 1, "sanity_images": 2, "preset": "default", "intensity": "standardize"},
        "quick": {"models": ("compact_cnn",), "mask_models": ("compact_cnn",),
                  "image_size": 96, "epochs": 10, "mask_epochs": 6, "patients": 400, "images_per_patient": 1,
                  "batch_size": 16, "kfold": 2, "lime_samples": 150, "lime_segments": 30, "lime_features": 5,
                  "explain_per_class": 2, "sanity_images": 6, "preset": "default", "intensity": "standardize"},
        "full": {"models": ("mobilenetv3large", "efficientnetb0"), "mask_models": ("mobilenetv3large", "efficientnetb0"),
                 "image_size": 224, "epochs": 30, "mask_epochs": 30, "patients": 774, "images_per_patient": 1,
                 "batch_size": 32, "kfold": 5, "lime_samples": 1000, "lime_segments": 50, "lime_features": 5,
                 "explain_per_class": 3, "sanity_images": 74, "preset": "default", "intensity": "none"},
    }
    FULL_SMOKE = {"patients": 12, "epochs": 1, "mask_epochs": 1, "kfold": 2, "lime_samples": 50,
                  "explain_per_class": 1, "sanity_images": 2}
    WITH_WEIGHTS = {"quick": {"models": ("efficientnetb0", "mobilenetv3small"),
                              "mask_models": ("efficientnetb0", "mobilenetv3small"), "intensity": "none"}}
    """With the ImageNet files of EfficientNetB0 and MobileNetV3-Small on disk, the quick profile
    trains the paper's two models (MobileNetV3-Small standing for its MobileNetV3) at 96 px
    instead of the compact_cnn stand-in."""
    STANDIN_NOTE = ("compact_cnn (not a model of the paper) is trained from scratch on per-image standardized "
                    "images; its rows are compared with the paper's headline model, EfficientNetB0.")

    def check(self) -> None:
        _settings.not_empty(self, "models")
        _settings.model_names(self, "models")
        _settings.choice(self, "mask_models", self.models)
        _settings.positive(self, "image_size", "epochs", "mask_epochs", "patients", "images_per_patient",
                           "batch_size", "lime_samples", "lime_segments", "lime_features", "explain_per_class",
                           "sanity_images")
        _settings.at_least(self, "kfold", 2)
        _settings.choice(self, "intensity", tuple(pipeline.INTENSITY_STEPS))


SPLIT = {"val": 0.2, "test": 0.1}
"""The paper's 7:2:1 split (fractions of patients per class)."""


def record_name(model: str) -> str:
    """The model name in metrics.json: MobileNetV3 Small/Large both stand for the paper's "MobileNetV3"."""
    return "mobilenetv3" if model.startswith("mobilenetv3") else model


def segmentation(settings: Settings) -> tuple[str, dict]:
    """The LIME superpixel segmentation of this run (SLIC on the grey image)."""
    return ("slic", {"n_segments": settings.lime_segments, **_SEG})


def setup(settings: Settings, *, data_dir: str | Path | None = None, out_dir: str | Path | None = None,
          seed: int = 0) -> Context:
    """Seed, find or generate the data (the synthetic knee at its native 256 px, resized by the
    pipeline), record provenance; ``ctx.steps`` are the ``intensity`` steps."""
    ctx = experiments.setup(STUDY, settings, data_dir=data_dir, out_dir=out_dir, seed=seed,
                            synthetic=Synthetic("knee", 2, settings.patients,
                                                images_per_patient=settings.images_per_patient))
    ctx.steps = pipeline.intensity_steps(settings.intensity)
    return ctx


def split_721(ctx: Context) -> pd.DataFrame:
    """Patient-grouped, class-stratified 7:2:1 train / val / test split (``experiments.split``: the
    uploader's split instead with ``respect_source_split``)."""
    return experiments.split(ctx, val=SPLIT["val"], test=SPLIT["test"])


def recipe(ctx: Context, settings: Settings, *, epochs: int | None = None) -> Recipe:
    """Study 05's recipe (Adam 1e-3, categorical cross-entropy) with this profile's epochs and batch."""
    return replace(RECIPES["transfer"], epochs=int(epochs or ctx.epochs), batch_size=settings.batch_size)


def train(ctx: Context, split: pd.DataFrame, model: str, *, experiment: str, settings: Settings,
          epochs: int | None = None, keep: bool = True) -> FitResult:
    """Train ``model`` (head="paper": GAP -> Dense 1024 ReLU -> softmax, for the models that have
    it; compact_cnn keeps its GAP -> softmax head) with study 05's on-the-fly augmentation on the
    training split only, evaluate on the test split."""
    options = {"head": "paper"} if "paper" in models.get_spec(model).heads else {}
    with quiet(*EXPECTED_WARNINGS):
        return experiments.fit_evaluate(
            ctx, split, model=model, experiment=experiment, rec=recipe(ctx, settings, epochs=epochs),
            augmenter=augment.augmenter_for("study05", seed=ctx.seed), model_options=options,
            steps=ctx.steps, record_as=record_name(model), keep=keep)


def model_inputs(ctx: Context, manifest: pd.DataFrame, model: str) -> tuple[np.ndarray, np.ndarray]:
    """(grey (N, s, s) in [0, 1], model-ready (N, s, s, 1)) of a manifest at the context's size
    (every registry model takes the grey channel and scales it inside its graph)."""
    grey = experiments.load_images(manifest, ctx.image_size, steps=ctx.steps)
    return grey, np.asarray(grey[..., None], dtype=np.float32)


def pick_test_images(split: pd.DataFrame, per_class: int, *, seed: int = 0) -> pd.DataFrame:
    """``per_class`` test images of each class (one per patient first), reproducibly."""
    test = split[split["split"] == "test"]
    rows = []
    for _, part in test.groupby("label", sort=True):
        part = part.sample(frac=1.0, random_state=seed).drop_duplicates("group")
        rows.append(part.head(per_class))
    return pd.concat(rows).reset_index(drop=True) if rows else test.head(0)


def sanity_images(split: pd.DataFrame, n: int, *, seed: int = 0) -> pd.DataFrame:
    """Up to ``n`` test images, balanced over classes (for the pointing game and randomization test)."""
    test = split[split["split"] == "test"]
    per_class = max(1, int(np.ceil(n / max(test["label"].nunique(), 1))))
    picked = pick_test_images(split, per_class, seed=seed)
    if len(picked) < n:  # patients with several images: fill up
        rest = test[~test["path"].isin(picked["path"])].sample(frac=1.0, random_state=seed)
        picked = pd.concat([picked, rest.head(n - len(picked))]).reset_index(drop=True)
    return picked.head(n).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# explanations


def explanations(ctx: Context, fits: dict[str, FitResult], images: pd.DataFrame, settings: Settings) -> dict:
    """Grad-CAM, Grad-CAM++ and LIME of every model on ``images`` (explaining each model's prediction).

    Returns:
        ``{model: {"grey", "gradcam", "gradcam++", "lime": [LimeResult], "pred", "backend",
        "lime_seconds_per_image"}}``.
    """
    out = {}
    for name, fit in fits.items():
        grey, x = model_inputs(ctx, images, name)
        cam = explain.CamExplainer(fit.model)
        g = cam.explain(x, method="gradcam")
        gpp = cam.explain(x, method="gradcam++")
        t0 = time.perf_counter()
        with quiet(*EXPECTED_WARNINGS):
            limes = [explain.lime_explain(fit.model, img, num_samples=settings.lime_samples,
                                          batch_size=settings.lime_samples, seed=ctx.seed,
                                          segmentation=segmentation(settings),
                                          num_features=settings.lime_features)
                     for img in grey]
        out[name] = {"grey": grey, "gradcam": g.maps, "gradcam++": gpp.maps, "lime": limes, "pred": g.class_index,
                     "backend": g.backend, "lime_seconds_per_image": (time.perf_counter() - t0) / max(len(grey), 1)}
    return out


def explanation_figure(images: pd.DataFrame, expl: dict, class_names: Sequence[str]):
    """Rows = test images; per model: Grad-CAM, Grad-CAM++ and LIME panels over the image."""
    import matplotlib.pyplot as plt

    names = list(expl)
    ncol = 1 + 3 * len(names)
    fig, axes = plt.subplots(len(images), ncol, figsize=(1.9 * ncol, 2.1 * len(images)), squeeze=False,
                             layout="constrained")
    for i, (_, row) in enumerate(images.iterrows()):
        grey = expl[names[0]]["grey"][i]
        axes[i, 0].imshow(grey, cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(f"true: {row['label']}", fontsize=8)
        for j, name in enumerate(names):
            e = expl[name]
            pred = class_names[int(e["pred"][i])]
            panels = [("Grad-CAM", plots.overlay_rgb(grey, e["gradcam"][i])),
                      ("Grad-CAM++", plots.overlay_rgb(grey, e["gradcam++"][i])),
                      ("LIME", plots.overlay_rgb(grey, e["lime"][i].mask, segments=e["lime"][i].segments))]
            for k, (title, rgb) in enumerate(panels):
                ax = axes[i, 1 + 3 * j + k]
                ax.imshow(rgb, interpolation="nearest")
                ax.set_title(f"{name}\n{title} (pred {pred})", fontsize=7)
        if "roi_bbox" in row and isinstance(row.get("roi_bbox"), str):
            x0, y0, x1, y1 = explain.parse_bbox(row["roi_bbox"])
            s = grey.shape[0] / float(row.get("height", grey.shape[0]))
            axes[i, 0].add_patch(plt.Rectangle((x0 * s, y0 * s), (x1 - x0) * s, (y1 - y0) * s, fill=False,
                                               edgecolor="yellow", linewidth=1))
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig


# ---------------------------------------------------------------------------------------------
# sanity checks


def has_roi(manifest: pd.DataFrame) -> bool:
    """Whether the manifest carries a usable ``roi_bbox`` column (the synthetic knee does)."""
    return "roi_bbox" in manifest.columns and manifest["roi_bbox"].astype(str).str.count(",").eq(3).all()


def pointing_game(ctx: Context, fits: dict[str, FitResult], images: pd.DataFrame) -> pd.DataFrame:
    """Share of Grad-CAM / Grad-CAM++ energy inside the tibial ROI vs the ROI's share of the image.

    The box (``roi_bbox``, pixels of the stored image) is rescaled from the stored image's
    (height, width) to the model input (``bbox_shape``). ``ratio`` > 1: the map concentrates on
    the ROI; 1: no better than a uniform map; ``hit``: the map's maximum lies inside the box.
    """
    if not has_roi(images):
        return pd.DataFrame(columns=["model", "method", "images", "energy_in_roi", "area_share", "ratio", "hit_rate"])
    rows = []
    for name, fit in fits.items():
        _, x = model_inputs(ctx, images, name)
        cam = explain.CamExplainer(fit.model)
        for method in explain.CAM_METHODS:
            maps = cam.explain(x, method=method).maps
            per = [explain.pointing_game(m, r["roi_bbox"], bbox_shape=(int(r["height"]), int(r["width"])))
                   for m, (_, r) in zip(maps, images.iterrows())]
            df = pd.DataFrame(per)
            rows.append({"model": name, "method": method, "images": len(df),
                         "constant maps": int(df["ratio"].isna().sum()),
                         "energy_in_roi": float(df["energy_in_roi"].mean()),
                         "area_share": float(df["area_share"].mean()),
                         "ratio": float(df["ratio"].mean()), "hit_rate": float(df["hit"].mean())})
    return pd.DataFrame(rows)


def randomization(ctx: Context, fits: dict[str, FitResult], images: pd.DataFrame) -> pd.DataFrame:
    """Adebayo et al. (2018): Spearman between the trained model's Grad-CAM and the fully
    randomized model's (every kernel re-drawn), per model. Near 1 = the map ignores the weights."""
    rows = []
    for name, fit in fits.items():
        _, x = model_inputs(ctx, images, name)
        res = explain.randomization_check(fit.model, x, layers="all", seed=ctx.seed, method="gradcam")
        rho = np.asarray(res["spearman"], dtype=float)
        # explain returns NaN where a map is constant (no ranking to compare): undefined, not passed.
        defined = bool(res["self_spearman"] > 0.999) and np.isfinite(rho).any()
        rows.append({"model": name, "images": len(rho),
                     "spearman_mean": float(np.nanmean(rho)) if defined else float("nan"),
                     "spearman_min": float(np.nanmin(rho)) if defined else float("nan"),
                     "spearman_max": float(np.nanmax(rho)) if defined else float("nan"),
                     "self_spearman": float(res["self_spearman"]), "defined": defined,
                     "randomized maps constant": int(res["n_undefined"]),
                     "layers_randomized": len(res["layers_randomized"]), "backend": res["backend"]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# the LIME-masked dataset


def lime_masked_split(ctx: Context, split: pd.DataFrame, model: str, original: FitResult, settings: Settings) -> dict:
    """Build ``model``'s LIME-masked dataset with masks from models that never saw the image.

    1. k patient-grouped folds over train+val (``explain.pool_folds``); for each fold a
       ``model`` trained on the other folds (``mask_epochs``), evaluated on its held-out fold
       (out-of-fold accuracy recorded);
    2. ``explain.lime_masked_dataset`` with ``explain.mask_assignment``: fold k's images masked
       by fold k's model, test images by ``original`` (trained on the training split only), each
       mask explaining the model's PREDICTED class, with the ``trained_on`` leakage guard;
    3. the masked images (stored at the original resolution) get the split of their source, so
       the masked dataset is resized / split / augmented exactly as the original.

    Returns:
        dict with ``split`` (the masked manifest with ``split``), ``fold_records``, ``masking``
        (lime_masking.json), ``seconds``, ``seconds_per_image``, ``folder``.
    """
    import json

    folds = explain.pool_folds(split, settings.kfold, seed=ctx.seed)
    fold_models: dict[str, Any] = {explain.SPLIT_MODEL: original.model}
    fold_records = []
    for k, f in enumerate(folds):
        fit = train(ctx, f, model, experiment=f"mask-fold{k}", settings=settings,
                    epochs=settings.mask_epochs, keep=False)
        mask_model = explain.FOLD_MODEL.format(k=k)
        fold_models[mask_model] = fit.model
        fold_records.append({"mask model": mask_model, "model": model,
                             "trained on images": int((f["split"] == "train").sum()),
                             "held-out images": int((f["split"] == "test").sum()),
                             "held-out accuracy": fit.record["accuracy"], "train s": fit.record.get("train_seconds")})
    assignment = explain.mask_assignment(split, folds)
    folder = ctx.out_dir / "data" / f"lime-masked-{model}"
    t0 = time.perf_counter()
    with quiet(*EXPECTED_WARNINGS):
        masked, skipped = explain.lime_masked_dataset(
            split[["path", "label", "group"]], folder,
            model_for=assignment.model_for(fold_models),
            image_size=ctx.image_size, steps=ctx.steps,
            trained_on=assignment.trained_on,
            num_samples=settings.lime_samples, batch_size=settings.lime_samples, seed=ctx.seed,
            segmentation=segmentation(settings), num_features=settings.lime_features,
            explain_label="predicted")
    seconds = time.perf_counter() - t0
    masked = explain.source_split(masked, folder, split)
    masked["sha256"] = [io.pixel_sha256(io.load_xray(p)) for p in masked["path"]]
    return {"split": masked, "fold_records": fold_records, "skipped": skipped,
            "masking": json.loads((folder / "lime_masking.json").read_text()), "seconds": seconds,
            "seconds_per_image": seconds / max(len(masked), 1), "folder": folder}


def mask_summary(masked: dict[str, dict]) -> pd.DataFrame:
    """Per model and mask model: images masked (lime_masking.json ``masked_by``), on which split,
    mean kept fraction, and empty masks (an all-black image)."""
    rows = []
    for model, m in masked.items():
        df = m["split"]
        for mask_model, n in m["masking"]["masked_by"].items():
            part = df[df["mask_model"] == mask_model]
            rows.append({"model": model, "mask model": mask_model, "images masked (lime_masking.json)": n,
                         "splits": ",".join(sorted(part["split"].unique())),
                         "mean kept fraction": round(float(part["mask_fraction"].mean()), 3),
                         "empty masks": int((part["mask_fraction"] == 0).sum())})
    return pd.DataFrame(rows)


def masked_examples_figure(masked: dict[str, dict], *, per_split: int = 2):
    """Sample masked images of each model's dataset (train / val / test)."""
    import matplotlib.pyplot as plt

    names = list(masked)
    cols = [(s, i) for s in ("train", "val", "test") for i in range(per_split)]
    fig, axes = plt.subplots(len(names), len(cols), figsize=(1.8 * len(cols), 2.0 * len(names)), squeeze=False,
                             layout="constrained")
    for r, name in enumerate(names):
        df = masked[name]["split"]
        for c, (s, i) in enumerate(cols):
            ax = axes[r, c]
            ax.set_axis_off()
            part = df[df["split"] == s]
            if i < len(part):
                row = part.iloc[i]
                ax.imshow(io.load_xray(row["path"]), cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"{name}\n{s}: {row['label']}", fontsize=7)
    return fig


def original_vs_masked(records: Sequence[dict], keys: Sequence[str] = ("accuracy", "sensitivity", "specificity", "f1", "auc")) -> pd.DataFrame:
    """Original vs LIME-masked per model: the metrics with CIs side by side, and the difference."""
    table = experiments.results_table([r for r in records if r["experiment"] in ("original", "lime-masked")], keys)
    by = {(r["experiment"], r["model"]): r for r in records}
    diffs = []
    for _, row in table.iterrows():
        o, m = by.get(("original", row["model"])), by.get(("lime-masked", row["model"]))
        diffs.append(None if o is None or m is None else round(m["accuracy"] - o["accuracy"], 3))
    table["accuracy masked - original"] = diffs
    return table.sort_values(["model", "experiment"], ascending=[True, False]).reset_index(drop=True)


def sanity_extra(pointing: pd.DataFrame, rand: pd.DataFrame, masked: dict[str, dict], expl: dict) -> dict:
    """The sanity scores and LIME costs for metrics.json ``extra``."""
    return {
        "pointing_game": pointing.to_dict(orient="records"),
        "randomization_check": rand.to_dict(orient="records"),
        "lime_seconds_per_image_explanations": {k: round(v["lime_seconds_per_image"], 3) for k, v in expl.items()},
        "lime_masking": {k: {"seconds": round(v["seconds"], 2), "seconds_per_image": round(v["seconds_per_image"], 3),
                             "masked_by": v["masking"]["masked_by"], "num_samples": v["masking"]["num_samples"],
                             "segmentation": v["masking"]["segmentation"], "explain_label": v["masking"]["explain_label"],
                             "fold_models": v["fold_records"], "skipped": len(v["skipped"])}
                         for k, v in masked.items()},
    }


def out_path(ctx: Context, name: str) -> Path:
    """A file in the report folder."""
    return ctx.out_dir / name


PAPER_HEADLINE_MODEL = "efficientnetb0"
"""The paper's best model; a stand-in (a model the paper did not train) is compared with it."""


def claims(ctx: Context, settings: Settings) -> list[experiments.Comparison]:
    """Per masked model: retrained on the LIME-masked images against the same model on the
    original images (the same test patients: the masked test images are the originals masked),
    beside the paper's difference for that model, or, for a stand-in, for the paper's headline
    model (EfficientNetB0), labelled as such; and the original headline against the
    texture-feature floor on its own split."""
    out = []
    for m in settings.mask_models:
        name = record_name(m)
        pa = experiments.paper_value(STUDY, "original", name, "accuracy")
        pb = experiments.paper_value(STUDY, "lime-masked", name, "accuracy")
        if pa is not None and pb is not None:
            note = f"{name}: accuracy {pb:.4f} masked vs {pa:.4f} original."
        else:
            pa = experiments.paper_value(STUDY, "original", PAPER_HEADLINE_MODEL, "accuracy")
            pb = experiments.paper_value(STUDY, "lime-masked", PAPER_HEADLINE_MODEL, "accuracy")
            note = (f"{name} is a stand-in (not a model of the paper); the paper's headline model "
                    f"{PAPER_HEADLINE_MODEL}: accuracy {pb:.4f} masked vs {pa:.4f} original.")
        out.append(experiments.Comparison(f"LIME-masked vs original images ({name})", ("original", name, "clean"),
                                          ("lime-masked", name, "clean"), paper=pb - pa, paper_note=note))
    head = ("original", record_name(settings.models[0]), "clean")
    if head in ctx.predictions:
        floor = experiments.texture_floor(ctx, head)
        out.append(experiments.Comparison(f"{head[1]} (original images) vs the texture floor", tuple(floor["key"]), head,
                                          paper_note="the paper has no such baseline."))
    return out


def paper_comparison(ctx: Context, settings: Settings) -> pd.DataFrame:
    """``experiments.paper_comparison`` with a row for every model this run trained: a paper model
    against its own figures, a stand-in (a model the paper did not train, e.g. the quick profile's
    ``compact_cnn``) against the paper's headline model (:data:`PAPER_HEADLINE_MODEL`), labelled
    as a stand-in in the ``paper model`` column, so the table is never empty."""
    from osteo_tf.studies import get_study

    paper_rows = get_study(STUDY).paper
    ours = {record_name(m) for m in settings.models}
    rows = []
    for name in sorted(ours):
        own = [r for r in paper_rows if r["model"] == name]
        source = own or [r for r in paper_rows if r["model"] == PAPER_HEADLINE_MODEL]
        label = name if own else f"{PAPER_HEADLINE_MODEL} ({name} is a stand-in)"
        rows += [{**r, "model": name, "paper_model": label} for r in source]
    table = experiments.paper_comparison(ctx, paper=rows)
    table.insert(2, "paper model", [next(p["paper_model"] for p in rows if p["model"] == m) for m in table["model"]])
    return table.rename(columns={"model": "our model"})
