"""Study 03: knee radiographs, ROI + smudging, the multi-branch DCNN (Table 1), same-domain
self-supervised pretraining (phase 1) and fine-tuning (phase 2), ImageNet baselines.

Datasets: A = 2 classes (normal, osteoporosis), B = 3 classes (normal, osteopenia,
osteoporosis), each split 75% train / 25% test grouped by patient. Phase 1 pretrains ONE pretext
model on a separate unlabeled in-domain set (synthetic knee images of another seed, labels
discarded) with rotation prediction; its weights initialise the 2- and 3-class models.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from osteo_tf import evaluation, experiments, io, models, pipeline, preprocessing, settings as _settings, splits, training
from osteo_tf._warnings import RAN_OUT_OF_DATA, quiet
from osteo_tf.experiments import Context, Synthetic
from osteo_tf.training import Recipe

STUDY = "03-knee-same-domain-transfer"

MODEL = "study03_multibranch"
PRETRAINED = "study03_multibranch+pretrain"
DATASETS = {"A": "A (2 classes)", "B": "B (3 classes)"}
PAPER_PARAMS = 40.7e3
UNLABELED_SEED_OFFSET = 1000
"""The unlabeled pretraining set is generated with ``seed + 1000``: other patients than A and B."""

STEPS: tuple[tuple[str, dict], ...] = (
    ("mean_filter", {"size": 3}), ("equalize_hist", {}), ("roi_crop", {"erosion_radius": 2}))
"""The paper's deterministic preprocessing before smudging: mean filter, histogram equalization, ROI
crop (threshold, erosion, largest component, bounding box)."""

RECIPES: dict[str, Recipe] = {
    "pretrain": Recipe("adam", 1e-3, 0.0, 32, 20, None, "val_loss", "all",
                       source="study 03 phase 1: in-domain self-supervised pretraining (objective chosen here: "
                              "rotation prediction, Gidaris et al. 2018)"),
    "finetune": Recipe("adam", 1e-4, 0.0, 16, 50, 10, "val_loss", "all",
                       source="study 03 phase 2: fine-tuning with lr 1e-4"),
    "baseline": Recipe("adam", 1e-4, 0.0, 16, 50, 10, "val_loss", "all",
                       source="study 03 ImageNet baselines, lr 1e-4"),
}
"""Phase 1 (pretext), phase 2 (fine-tuning and from scratch) and the ImageNet baselines."""


@dataclass(frozen=True, kw_only=True)
class Settings(_settings.StudySettings):
    """Study 03's settings.

    Attributes:
        patients_a, patients_b: synthetic patients of datasets A (2 classes) and B (3 classes).
        unlabeled_patients: patients of the unlabeled synthetic pretraining set.
        synth_size: side of the synthetic source images in px.
        image_size: square input of the DCNN in px.
        epochs: fine-tuning / from-scratch epochs.
        pretrain_epochs: phase-1 pretext epochs.
        batch_size: mini-batch size.
        smudge: apply the paper's smudging (a mean filter over the ROI) after the ROI crop.
        smudge_size: the smudging window in source px (odd).
        block_pooling: 2x2 max-pools after the stem and blocks 1-2 (our CPU option; Table 1 has
            none; the parameter count is the same).
        intensity: after the paper's steps, ``none`` or ``standardize`` (per-image z-score).
        learning_rate: Adam's learning rate of phase 2 and the baselines.
        val: patient-grouped validation share carved from the training 75% (0: none, as in the
            paper; training then keeps the last epoch).
        baselines_a, baselines_b: ImageNet baselines trained on datasets A and B.
        baseline_size: input px of the baselines (raised to a model's minimum).
        roi_check_images: images of the ROI check against the generator's box.

    The paper: dataset A 186 + 186 images, dataset B three classes, 75/25 split, fine-tuning lr
    1e-4, 224 px input, Table 1 without pooling. It gives neither the epochs, the batch size, the
    smudging window nor the size of its unlabeled set: 50 epochs (early stopping 10), batch 16, a
    15 px window on the 256 px source and 2000 unlabeled patients are ours. The CPU profiles train
    from random initialisation at 64 px with Adam 1e-3, a per-image z-score and a validation
    share. The quick profile trains 8 epochs (the validation loss is lowest early: CHANGELOG),
    drops the smudging, which on the synthetic knee averages away the fine trabecular texture that
    carries the label, and runs no ImageNet baseline (from random initialisation they stay at
    chance).
    """

    patients_a: int
    patients_b: int
    unlabeled_patients: int
    synth_size: int
    image_size: int
    epochs: int
    pretrain_epochs: int
    batch_size: int
    smudge: bool
    smudge_size: int
    block_pooling: bool
    intensity: str
    learning_rate: float
    val: float
    baselines_a: tuple[str, ...]
    baselines_b: tuple[str, ...]
    baseline_size: int
    roi_check_images: int

    classes: tuple[str, ...] = ("normal", "osteopenia", "osteoporosis")  # the paper's classes (StudySettings.classes)

    PROFILES = {
        "smoke": {"patients_a": 12, "patients_b": 12, "unlabeled_patients": 12, "synth_size": 128,
                  "image_size": 32, "epochs": 1, "pretrain_epochs": 1, "batch_size": 16, "smudge": True,
                  "smudge_size": 7, "block_pooling": True, "intensity": "standardize", "learning_rate": 1e-3,
                  "val": 0.15, "baselines_a": (), "baselines_b": (), "baseline_size": 64, "roi_check_images": 20},
        "quick": {"patients_a": 300, "patients_b": 300, "unlabeled_patients": 80, "synth_size": 256,
                  "image_size": 64, "epochs": 8, "pretrain_epochs": 6, "batch_size": 16, "smudge": False,
                  "smudge_size": 15, "block_pooling": True, "intensity": "standardize", "learning_rate": 1e-3,
                  "val": 0.15, "baselines_a": (), "baselines_b": (), "baseline_size": 64, "roi_check_images": 150},
        "full": {"patients_a": 150, "patients_b": 152, "unlabeled_patients": 2000, "synth_size": 256,
                 "image_size": 224, "epochs": 50, "pretrain_epochs": 20, "batch_size": 16, "smudge": True,
                 "smudge_size": 15, "block_pooling": False, "intensity": "none", "learning_rate": 1e-4, "val": 0.0,
                 "baselines_a": ("alexnet", "vgg16", "resnet50", "xception"),
                 "baselines_b": ("alexnet", "vgg16", "resnet50", "xception"), "baseline_size": 224,
                 "roi_check_images": 100000},
    }
    FULL_SMOKE = {"patients_a": 8, "patients_b": 9, "unlabeled_patients": 8, "epochs": 1, "pretrain_epochs": 1,
                  "roi_check_images": 8, "baselines_b": ("alexnet",)}
    """Dataset A runs all four ImageNet baselines; dataset B, the same models with a 3-class head,
    runs AlexNet's (a 224 px build, trace and save of VGG16, ResNet50 and Xception again would add
    about three of this study's minutes on a 2-core CPU without exercising anything new)."""

    def check(self) -> None:
        _settings.positive(self, "patients_a", "patients_b", "unlabeled_patients", "synth_size", "image_size",
                           "epochs", "pretrain_epochs", "batch_size", "baseline_size", "roi_check_images")
        _settings.choice(self, "intensity", tuple(pipeline.INTENSITY_STEPS))
        _settings.in_range(self, "learning_rate", 0.0, 1.0)
        _check_val(self.val)
        if self.smudge_size < 1 or self.smudge_size % 2 == 0:
            raise ValueError(f"smudge_size must be an odd window in px. Received: smudge_size={self.smudge_size!r}")
        _settings.model_names(self, "baselines_a", "baselines_b")


def preprocessing_steps(*, smudge_size: int | None = None, intensity: str = "none") -> list[tuple[str, dict]]:
    """Study 03 steps: :data:`STEPS` (mean filter, histogram equalization, ROI crop), then smudging
    with an odd window of ``smudge_size`` px (``None``: no smudging), then the ``intensity`` steps
    (``pipeline.intensity_steps``: "none" or "standardize")."""
    steps = [(name, dict(params)) for name, params in STEPS]
    if smudge_size is not None:
        steps.append(("smudge", {"size": int(smudge_size)}))
    return steps + pipeline.intensity_steps(intensity)


def steps(settings: Settings) -> list[tuple[str, dict]]:
    """This run's preprocessing steps (:func:`preprocessing_steps` of its settings)."""
    return preprocessing_steps(smudge_size=settings.smudge_size if settings.smudge else None,
                               intensity=settings.intensity)


def setup(settings: Settings, *, data_dir: str | Path | None = None, out_dir: str | Path | None = None,
          seed: int = 0) -> Context:
    """Seed, find or generate datasets A and B, record provenance.

    Returns dataset A's context; ``ctx.subsets`` holds both datasets' contexts (``{"A": ..., "B":
    ... or None}``, each with its own results) and ``ctx.extra["data_note"]`` a sentence saying
    where each comes from. Synthetic (no ``data_dir``): A = knee generator with 2 classes, B = with
    3 classes (same seed, separate generations). With ``data_dir``: 3 classes -> B is the folder
    and A is the folder without its middle class (osteopenia); 2 classes -> A is the folder and B
    is skipped.

    Raises:
        ValueError: a ``data_dir`` with neither 2 nor 3 classes.
    """
    contexts, note = _datasets(settings, data_dir=data_dir, out_dir=out_dir, seed=seed)
    main = contexts["A"]
    main.subsets = contexts
    main.extra["data_note"] = note
    return main


def _datasets(settings: Settings, *, data_dir, out_dir, seed) -> tuple[dict[str, Context | None], str]:
    """The contexts of datasets A and B, and a sentence saying where each comes from."""
    common = dict(seed=seed, out_dir=out_dir)
    if data_dir is None:
        a = experiments.setup(STUDY, settings, synthetic=Synthetic("knee", 2, settings.patients_a, settings.synth_size),
                              **common)
        b = experiments.setup(STUDY, settings, synthetic=Synthetic("knee", 3, settings.patients_b, settings.synth_size),
                              **common)
        note = ("Datasets A and B are two separate generations of the synthetic knee generator (2 and 3 classes, "
                f"{settings.patients_a} and {settings.patients_b} patients).")
        return {"A": a, "B": b}, note
    full = experiments.setup(STUDY, settings, data_dir=data_dir, **common)
    n = len(full.class_names)
    if n == 3:
        middle = full.class_names[1]
        a = experiments.setup(STUDY, settings, data_dir=data_dir, label_map={middle: None}, **common)
        note = (f"Your folder has 3 classes: it is dataset B, and dataset A is the same folder without the "
                f"{middle!r} class ({a.class_names[0]} vs {a.class_names[1]}).")
        return {"A": a, "B": full}, note
    if n == 2:
        note = ("Your folder has 2 classes: it is dataset A; dataset B (3 classes) is skipped "
                "(give a folder with normal, osteopenia and osteoporosis to run it).")
        return {"A": full, "B": None}, note
    raise ValueError(f"study 03 needs a dataset with 2 or 3 classes. Received: {n} classes {full.class_names}")


def _check_val(val) -> None:
    if not 0.0 <= float(val) < 0.75:
        raise ValueError(f"val must be in [0, 0.75) (a share of all patients). Received: val={val!r}")


def paper_split(ctx: Context, *, val: float = 0.0) -> pd.DataFrame:
    """The paper's 75% train / 25% test split, grouped by patient.

    ``val`` > 0 carves a patient-grouped validation share out of the training 75% (the test 25%
    is unchanged): training then keeps the epoch with the lowest validation loss and stops early
    (the recipe's patience) instead of keeping the last epoch. The paper had no validation split
    (``val=0``, the full profile).
    """
    _check_val(val)
    split = experiments.split(ctx, val=float(val), test=0.25)
    splits.assert_no_leakage(split)
    return split


def unlabeled_manifest(*, patients: int, seed: int, preset: str, synth_size: int | None,
                       data_dir: str | Path | None = None) -> tuple[pd.DataFrame, str]:
    """The unlabeled in-domain pretraining set: synthetic knee images of seed ``seed + 1000``.

    The generator's labels are DROPPED (the returned manifest has no ``label`` column); the pretext
    task uses only the pixels. Returns the manifest and a provenance sentence.
    """
    from osteo_tf import datasets

    folder = experiments.synthetic_dataset("knee", classes=2, patients=patients, preset=preset, size=synth_size,
                                           seed=seed + UNLABELED_SEED_OFFSET)
    m = datasets.find_dataset(folder).manifest[["path", "group"]].copy()
    note = (f"{len(m)} synthetic knee images of {m['group'].nunique()} patients generated with seed "
            f"{seed + UNLABELED_SEED_OFFSET} (other patients than datasets A and B); the generator's labels are "
            "discarded, only the pixels are used")
    if data_dir is not None:
        note += ". With your data_dir the pretraining set is still this synthetic set (no unlabeled folder is read)"
    return m.reset_index(drop=True), note


# ----------------------------------------------------------------------------------------------
# ROI check against the generator's box


def _generator_box(value: str) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (int(v) for v in str(value).split(","))
    return y0, x0, y1, x1


def _area(box) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def _intersection(a, b) -> int:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def roi_check(manifest: pd.DataFrame, *, max_images: int = 300, erosion_radius: int = 2, seed: int = 0) -> pd.DataFrame:
    """Our ROI box (mean filter, equalization, Otsu mask, erosion, largest component, regionprops)
    against the generator's ``roi_bbox`` (the tibial subchondral ROI), one row per image.

    Columns: ``containment`` (share of the generator box inside ours: 1 = the crop keeps all of
    it), ``iou``, ``our_area`` and ``generator_area`` (shares of the image).
    Returns an empty frame when the manifest has no ``roi_bbox`` (a user's dataset).
    """
    if "roi_bbox" not in manifest.columns or manifest["roi_bbox"].isna().all():
        return pd.DataFrame(columns=["image_id", "label", "containment", "iou", "our_area", "generator_area"])
    rows = manifest.dropna(subset=["roi_bbox"])
    if len(rows) > max_images:
        rows = rows.iloc[np.random.default_rng(seed).permutation(len(rows))[:max_images]]
    out = []
    for _, r in rows.iterrows():
        img = preprocessing.equalize_hist(preprocessing.mean_filter(io.load_xray(r["path"]), size=3))
        _, ours = preprocessing.roi_crop(img, erosion_radius=erosion_radius)
        gen = _generator_box(r["roi_bbox"])
        inter = _intersection(ours, gen)
        total = img.shape[0] * img.shape[1]
        out.append({"image_id": r.get("image_id", Path(r["path"]).stem), "label": r["label"],
                    "containment": inter / max(_area(gen), 1),
                    "iou": inter / max(_area(ours) + _area(gen) - inter, 1),
                    "our_area": _area(ours) / total, "generator_area": _area(gen) / total})
    return pd.DataFrame(out)


def roi_summary(check: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and share-of-images summaries of :func:`roi_check`."""
    if check.empty:
        return pd.DataFrame([{"images": 0, "note": "no generator roi_bbox (not synthetic data): check skipped"}])
    return pd.DataFrame([{
        "images": len(check),
        "containment mean": round(float(check["containment"].mean()), 3),
        "containment min": round(float(check["containment"].min()), 3),
        "images with the generator box fully inside ours": f"{100 * float((check['containment'] >= 0.999).mean()):.1f}%",
        "IoU mean": round(float(check["iou"].mean()), 3),
        "our box / image area": round(float(check["our_area"].mean()), 3),
        "generator box / image area": round(float(check["generator_area"].mean()), 3),
    }])


def roi_check_figure(check: pd.DataFrame):
    """Histograms of containment and IoU of our ROI box vs the generator's box."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
    if check.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no generator box", ha="center")
        return fig
    for ax, key, title in zip(axes, ("containment", "iou"),
                              ("share of the generator ROI inside our box", "IoU of the two boxes")):
        ax.hist(check[key], bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
        ax.set_xlim(0, 1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(key)
        ax.set_ylabel("images")
    fig.tight_layout()
    return fig


def preprocessing_figure(row: pd.Series, *, smudge_size: int = 15, erosion_radius: int = 2):
    """Every preprocessing step of one image, ROI steps included, with both boxes drawn."""
    import matplotlib.pyplot as plt
    from skimage.filters import threshold_otsu

    img = io.load_xray(row["path"])
    filt = preprocessing.mean_filter(img, size=3)
    eq = preprocessing.equalize_hist(filt)
    thr = float(threshold_otsu(eq))
    binary = eq > thr
    eroded = preprocessing.bone_mask(eq, threshold=thr, erosion_radius=erosion_radius)
    largest = preprocessing.largest_component(eroded)
    crop, box = preprocessing.roi_crop(eq, erosion_radius=erosion_radius)
    smudged = preprocessing.smudge(crop, size=smudge_size) if smudge_size else crop
    smudge_title = f"smudging (mean {smudge_size}x{smudge_size})" if smudge_size else "no smudging (smudge_size 0)"
    panels = [(img, "grayscale input"), (filt, "mean filter 3x3"), (eq, "histogram equalization"),
              (binary, f"threshold (Otsu {thr:.2f})"), (eroded, f"erosion (disk r={erosion_radius})"),
              (largest, "largest component"), (eq, "regionprops bounding box"), (crop, "ROI crop"),
              (smudged, smudge_title)]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.0 * len(panels), 2.6))
    for ax, (im, title) in zip(axes, panels):
        ax.imshow(im, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    ax = axes[6]
    ax.add_patch(plt.Rectangle((box[1], box[0]), box[3] - box[1], box[2] - box[0], fill=False, color="yellow", lw=1.5))
    if isinstance(row.get("roi_bbox"), str):
        g = _generator_box(row["roi_bbox"])
        ax.add_patch(plt.Rectangle((g[1], g[0]), g[3] - g[1], g[2] - g[0], fill=False, color="red", lw=1.2))
        ax.set_title("box: ours (yellow),\ngenerator ROI (red)", fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# model


def param_table(image_size: int, *, block_pooling: bool, classes: Sequence[int] = (2, 3)) -> pd.DataFrame:
    """Real parameter counts of Table 1 (paper size 224 px and this run's input) beside "40.7k"."""
    rows = []
    configs = [(224, False, c) for c in classes] + [(image_size, block_pooling, c) for c in classes]
    for size, pooling, c in dict.fromkeys(configs):
        m = models.build(MODEL, input_shape=(size, size, 1), num_classes=c, block_pooling=pooling)
        info = models.build_info(m)
        rows.append({"input": f"{size}x{size}x1 (grey, repeated to 3 channels in the graph)", "classes": c, "block_pooling": pooling,
                     "layers (Keras)": len(m.layers), "trainable params": info["trainable_params"],
                     "total params": info["total_params"], "paper": "40.7k",
                     "ours / paper": round(info["trainable_params"] / PAPER_PARAMS, 1)})
        del m
    return pd.DataFrame(rows)


def branch_param_table() -> pd.DataFrame:
    """Where the parameters of Table 1 sit: weights of each block's convolutions (input channels
    grow with each concatenation, so the 5x5 and 7x7 branches of blocks 2 and 3 dominate)."""
    from osteo_tf.models.studies import STUDY03_BLOCKS, STUDY03_STEM

    rows, cin = [], 3
    for i, f in enumerate(STUDY03_STEM, start=1):
        rows.append({"part": f"stem conv {i} (3x3x{f})", "input channels": cin,
                     "conv weights + bias": 9 * cin * f + f})
        cin = f
    for b, (f, kernels) in enumerate(STUDY03_BLOCKS, start=1):
        for k in kernels:
            rows.append({"part": f"block {b} branch {k}x{k}x{f}", "input channels": cin,
                         "conv weights + bias": k * k * cin * f + f})
        cin = f * len(kernels)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# phase 1: self-supervised pretraining


def pretrain(ctx: Context, unlabeled: pd.DataFrame, *, settings: Settings, steps: Sequence, val_share: float = 0.1):
    """Phase 1: train a 4-way rotation classifier (``training.SSL_OBJECTIVE``) on the unlabeled set.

    The images go through the same preprocessing as the labelled sets; the pretext model is
    ``study03_multibranch`` with ``num_classes=4``. A share of the unlabeled PATIENTS is held out
    to measure pretext accuracy (chance = 0.25).

    Returns:
        ``(pretext_model, info)`` with info: images, rotated samples, pretext accuracy, seconds.
    """
    import tensorflow as tf

    size = settings.image_size
    groups = unlabeled["group"].astype(str).to_numpy()
    uniq = np.unique(groups)
    held = set(np.random.default_rng(ctx.seed).permutation(uniq)[:max(1, int(round(val_share * len(uniq))))])
    is_val = np.array([g in held for g in groups])
    x_all = experiments.load_images(unlabeled, size, steps=steps)
    x_tr, y_tr = training.rotation_pretext(x_all[~is_val], seed=ctx.seed)
    x_va, y_va = training.rotation_pretext(x_all[is_val], seed=ctx.seed + 1)
    rec = training.scale_recipe(replace(RECIPES["pretrain"], epochs=settings.pretrain_epochs,
                                        batch_size=settings.batch_size), training.replicas(ctx.strategy))
    bs = rec.batch_size
    # grey (N, s, s, 1): the model repeats the channel in its graph
    tr = tf.data.Dataset.from_tensor_slices((x_tr[..., None].astype(np.float32), y_tr)) \
        .shuffle(len(x_tr), seed=ctx.seed).batch(bs).prefetch(2)
    va = tf.data.Dataset.from_tensor_slices((x_va[..., None].astype(np.float32), y_va)).batch(bs)
    with training.strategy_scope(ctx.strategy):
        model = models.build(MODEL, input_shape=(size, size, 1), num_classes=4, block_pooling=settings.block_pooling)
    models.set_random_init_batchnorm(model)
    x_bn = x_tr[np.random.default_rng(ctx.seed).permutation(len(x_tr))[:training.PRECISE_BN_IMAGES], ..., None]
    with quiet(RAN_OUT_OF_DATA):
        # monitor the TRAINING loss: the held-out rotations only measure the pretext task, and
        # checkpointing on them restored the first epoch's weights in short runs
        model, res = training.train(model, tr, va, rec=rec, run_dir=ctx.runs_dir / "phase1-rotation-pretext",
                                    monitor="loss", strategy=ctx.strategy,
                                    run_eagerly=ctx.profile.run_eagerly, jit_compile=ctx.profile.xla,
                                    bn_images=x_bn,
                                    config={"study": ctx.study, "objective": training.SSL_OBJECTIVE,
                                            "seed": ctx.seed, "image_size": size})
        p = training.predict_proba(model, va)
    info = {"objective": training.SSL_OBJECTIVE, "unlabeled_images": int(len(unlabeled)),
            "unlabeled_patients": int(len(uniq)), "pretext_train_samples": int(len(x_tr)),
            "pretext_val_samples": int(len(x_va)),
            "pretext_val_accuracy": round(float((p.argmax(1) == y_va.argmax(1)).mean()), 4),
            "epochs_run": res.epochs_run, "train_seconds": round(res.train_seconds, 2)}
    return model, info


def pretrained_builder(pretext_model, *, image_size: int, num_classes: int, block_pooling: bool):
    """A zero-argument builder for ``fit_evaluate``: the 2- or 3-class model initialised from the
    pretext model (every layer but the classifier copied by ``training.transfer_weights``)."""

    def study03_multibranch_pretrained():
        m = models.build(MODEL, input_shape=(image_size, image_size, 1), num_classes=num_classes,
                         block_pooling=block_pooling)
        copied = training.transfer_weights(pretext_model, m)
        models.set_random_init_batchnorm(m)  # pretrained in-domain from random init, not ImageNet
        study03_multibranch_pretrained.copied = copied
        return m

    return study03_multibranch_pretrained


# ----------------------------------------------------------------------------------------------
# phase 2 and baselines


def run_dataset(ctx: Context, split: pd.DataFrame, *, key: str, settings: Settings, steps: Sequence,
                pretext_model=None) -> dict:
    """Dataset ``key`` ("A"/"B"): the DCNN from scratch, the DCNN fine-tuned from the pretext model
    (lr 1e-4), and the ImageNet baselines of the profile. Returns {record model name: FitResult}."""
    exp = DATASETS[key]
    bs = settings.batch_size
    pooling = settings.block_pooling
    fits = {}
    lr = settings.learning_rate
    scratch = replace(RECIPES["finetune"], epochs=ctx.epochs, batch_size=bs, learning_rate=lr)
    with quiet(RAN_OUT_OF_DATA):
        fits[MODEL] = experiments.fit_evaluate(ctx, split, model=MODEL, experiment=exp, rec=scratch, steps=steps,
                                               model_options={"block_pooling": pooling}, record_as=MODEL)
        if pretext_model is not None:
            builder = pretrained_builder(pretext_model, image_size=ctx.image_size, num_classes=len(ctx.class_names),
                                         block_pooling=pooling)
            fit = experiments.fit_evaluate(ctx, split, model=builder, experiment=exp, rec=scratch, steps=steps,
                                           record_as=PRETRAINED)
            fit.record["weights"] = f"rotation-pretext ({len(getattr(builder, 'copied', []))} layers copied)"
            fits[PRETRAINED] = fit
        base = replace(RECIPES["baseline"], epochs=ctx.epochs, batch_size=bs, learning_rate=lr)
        for name in getattr(settings, f"baselines_{key.lower()}"):
            size = max(settings.baseline_size, models.get_spec(name).min_input_size)
            fits[name] = experiments.fit_evaluate(ctx, split, model=name, experiment=exp, rec=base, steps=steps,
                                                  image_size=size, record_as=name)
    return fits


def scratch_vs_pretrained(records: Sequence[dict]) -> pd.DataFrame:
    """Per dataset: accuracy (95% CI) from scratch vs with same-domain pretraining, and the gain."""
    rows = []
    by = {(r["experiment"], r["model"]): r for r in records}
    for exp in DATASETS.values():
        s, p = by.get((exp, MODEL)), by.get((exp, PRETRAINED))
        if s is None:
            continue
        rows.append({"dataset": exp, "from scratch": _accuracy(s), "with pretraining": _accuracy(p),
                     "gain (points)": None if p is None else round(100 * (p["accuracy"] - s["accuracy"]), 1),
                     "paper gain (points)": {"A (2 classes)": 4.4, "B (3 classes)": 5.1}[exp]})
    return pd.DataFrame(rows)


def _accuracy(record: dict | None) -> str:
    if record is None:
        return evaluation.format_estimate(None)
    return evaluation.format_estimate(record["accuracy"], (record.get("ci95") or {}).get("accuracy"))


def merge(contexts: dict[str, Context | None], *, extra: dict | None = None) -> Context:
    """One context holding the results and test predictions of both datasets (for paper_comparison,
    :func:`claims` and metrics.json);
    ``data`` is dataset A's, both datasets are described under ``extra["datasets"]``."""
    present = {k: c for k, c in contexts.items() if c is not None}
    main = present["A"]
    results = [r for c in present.values() for r in c.results]
    datasets_info = {DATASETS[k]: {**c.data, "class_names": list(c.class_names)} for k, c in present.items()}
    predictions = {k: v for c in present.values() for k, v in c.predictions.items()}
    return replace(main, results=results, predictions=predictions,
                   extra={**main.extra, "datasets": datasets_info, **(extra or {})})


def claims(ctx: Context, settings: Settings) -> list[experiments.Comparison]:
    """Per dataset: the multi-branch CNN with same-domain pretraining against the same CNN from
    scratch (same split and test patients), beside the paper's difference; and the pretrained
    CNN against the texture-feature floor on its own split. ``ctx`` is the merged context
    (:func:`merge`)."""
    out = []
    for key, exp in DATASETS.items():
        a, b = (exp, MODEL, "clean"), (exp, PRETRAINED, "clean")
        pa = experiments.paper_value(STUDY, exp, MODEL, "accuracy")
        pb = experiments.paper_value(STUDY, exp, PRETRAINED, "accuracy")
        out.append(experiments.Comparison(
            f"dataset {key}: same-domain pretraining vs from scratch", a, b, paper=pb - pa,
            paper_note=f"proposed CNN {pb:.4f} with pretraining, {pa:.4f} without ({exp})."))
        if b in ctx.predictions:
            floor = experiments.texture_floor(ctx, b)
            out.append(experiments.Comparison(f"dataset {key}: pretrained CNN vs the texture floor", tuple(floor["key"]),
                                              b, paper_note="the paper has no such baseline."))
    return out
