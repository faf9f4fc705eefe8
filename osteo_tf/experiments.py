"""Glue the study notebooks call: set up a run, fit and evaluate one model, write metrics.json.

Each study workflow wraps :func:`setup` in its own ``setup(settings, ...)``; a notebook reads like
the paper's methods section::

    S = study01.Settings.for_profile(profile, epochs=epochs)
    ctx = study01.setup(S, data_dir=data_dir, out_dir=out_dir, seed=seed)
    split = splits.grouped_split(ctx.manifest, val=0.15, test=0.2, seed=ctx.seed)
    run = experiments.fit_evaluate(ctx, split, model="resnet18", experiment="E1",
                                   rec=study01.recipe(S, "resnet18"))

Everything that decides a number lives here or in the modules it calls, never in a notebook.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from osteo_tf import __version__
from osteo_tf.config import Profile, data_dir as default_data_dir, get_profile, seed_everything
from osteo_tf.settings import StudySettings


@dataclass
class Context:
    """Everything a study run shares: settings, profile, data, provenance, output folder."""

    study: str
    profile: Profile
    seed: int
    manifest: pd.DataFrame
    class_names: list[str]
    data: dict
    out_dir: Path
    image_size: int | None
    epochs: int | None
    settings: StudySettings
    results: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    quarantine: pd.DataFrame | None = None
    duplicates: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    """Deterministic preprocessing steps a study applies to every image (``preprocessing.STEPS``);
    studies that set it pass it to training, explanations and inference alike."""
    subsets: dict[str, "Context | None"] = field(default_factory=dict)
    """Contexts of the datasets a study runs separately (study 03: datasets A and B), by key."""
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    """Tables a study's setup computed for its report (study 04: how the labels were derived)."""
    strategy: Any = None
    """The ``tf.distribute`` strategy models are built and trained in (None: one device)."""
    runtime: dict = field(default_factory=dict)
    """How this run executes (metrics.json ``runtime``): strategy, replicas, precision, xla and why."""
    predictions: dict[tuple, "Predictions"] = field(default_factory=dict)
    """Test predictions of every kept result, by ``(experiment, model, protocol)``: what the
    claim's paired effects (:func:`claim`) and the texture floor (:func:`texture_floor`) use."""
    dataset: Any = None
    """The scanned :class:`osteo_tf.datasets.Dataset` (copy groups, conflicts, the uploader's split)."""
    split: pd.DataFrame | None = None
    """The split this run records in ``split.csv`` (:func:`record_split`; the first one made by
    :func:`split` or trained on by :func:`fit_evaluate` with the clean protocol)."""

    @property
    def weights(self) -> str:
        """The pretrained weights the run asks for (``settings.weights``)."""
        return self.settings.weights

    @property
    def allow_random_init(self) -> bool:
        """Whether a missing weights file falls back to random initialisation (``settings``)."""
        return self.settings.allow_random_init

    @property
    def runs_dir(self) -> Path:
        """Where the training run folders of this study go."""
        return self.out_dir / "runs"


@dataclass(frozen=True)
class Synthetic:
    """The built-in synthetic dataset a study generates when it is given no ``data_dir``.

    Attributes:
        mode: ``calcaneus``, ``knee`` or ``dxa`` (``osteo_tf.synthetic``).
        classes: 2 or 3.
        patients: patients to generate.
        size: image side in px (``None``: the mode's native size).
        images_per_patient: a fixed count, or ``None`` for the generator's 1 + Poisson(1.5).
    """

    mode: str
    classes: int
    patients: int
    size: int | None = None
    images_per_patient: int | None = None


def versions() -> dict[str, str]:
    """Versions of the libraries a result depends on."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "osteo_tf": __version__}
    for pkg in ("tensorflow", "keras", "numpy", "scikit-learn", "scikit-image", "opencv-python", "bm3d",
                "lime", "tf-keras-vis", "papermill", "pydicom"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def synthetic_dataset(mode: str, *, classes: int = 2, patients: int = 100, preset: str = "default",
                      size: int | None = None, seed: int = 0, images_per_patient: int | None = None,
                      root: str | Path | None = None) -> Path:
    """Generate (once) and return the folder of a synthetic dataset; reruns reuse it.

    The files are written into a temporary sibling folder renamed into place when complete, so
    studies running at once (``osteo-tf run --jobs``) never read a half-written dataset; when two
    generate the same one, the second rename loses and its identical copy is removed.
    """
    import os
    import shutil

    from osteo_tf import synthetic

    root = Path(root) if root else default_data_dir() / "synthetic"
    ipp = "r" if images_per_patient is None else str(images_per_patient)
    folder = root / (f"{mode}-{classes}c-{preset}-p{patients}-s{size or 'default'}-i{ipp}-seed{seed}"
                     f"-v{synthetic.GENERATOR_VERSION}")
    if (folder / "metadata.csv").exists():
        return folder
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    synthetic.write_dataset(tmp, mode=mode, classes=classes, patients=patients, preset=preset,
                            size=size, seed=seed, images_per_patient=images_per_patient)
    if folder.exists() and not (folder / "metadata.csv").exists():
        shutil.rmtree(folder, ignore_errors=True)  # left by an interrupted run of an older version
    try:
        os.rename(tmp, folder)
    except OSError:  # another process completed the same dataset first
        if not (folder / "metadata.csv").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_images(manifest: pd.DataFrame, size: int, *, steps: Sequence = ()) -> np.ndarray:
    """Grey images (N, size, size) float32 in [0, 1] of a manifest, through the inference pipeline.

    Raises:
        ValueError: when a file cannot be read (the manifest should come from ``find_dataset``,
            which quarantines unreadable files first).
    """
    from osteo_tf import pipeline

    x, ok = pipeline.load_for_inference(manifest["path"].astype(str).tolist(), image_size=size, steps=steps)
    if not ok.all():
        bad = manifest["path"].astype(str)[~ok].tolist()
        raise ValueError(f"{len(bad)} image(s) could not be read: {bad[:3]}")
    return x[..., 0]


def check_location(name: str, value: str | Path | None) -> Path | None:
    """``data_dir`` / ``out_dir`` as a Path, or ``None``.

    Raises:
        ValueError: for an empty string (``None`` is how a caller asks for the default).
    """
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise ValueError(f"{name} must be a path, or None for the default. Received: {name}={value!r}")
    return Path(value)


def setup(
    study: str,
    settings: StudySettings,
    *,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    synthetic: Synthetic | None = None,
    label_map: dict | None = None,
    relabel: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    image_size: int | None = None,
    epochs: int | None = None,
) -> Context:
    """Seed everything, apply the profile's runtime, find or generate the data, record provenance.

    What the data folder holds but the run cannot use is named, never fatal: unreadable files and
    label conflicts (``datasets.find_dataset``'s quarantine), classes outside
    ``settings.classes`` (dropped and counted; ``source=target`` entries merge), classes left
    empty. Copies of one image share one ``group`` (``find_dataset``), so every split keeps them
    together. Fewer than two usable classes is the one error.

    The study workflows call this from their own ``setup(settings, ...)``.

    Args:
        study: the study name (``osteo_tf.studies``).
        settings: the study's ``Settings`` (its ``profile``, ``preset``, ``weights`` and
            ``allow_random_init`` are used here).
        data_dir: a dataset folder or manifest CSV of the user's; ``None`` = ``synthetic``.
        out_dir: the report folder (metrics.json, run folders); ``None`` = ``reports/<study>``.
        seed: global seed.
        synthetic: the dataset to generate without ``data_dir`` (default: the study's mode and
            classes, 100 patients).
        label_map: optional renaming of labels (e.g. {"partially_degraded": None} drops a class).
        relabel: optional function deriving the labels from the manifest (study 04: from a TBS
            column); it runs before ``label_map`` and ``settings.classes``.
        image_size, epochs: the context's model input size and epochs (default: the settings'
            ``image_size`` and ``epochs`` fields, when it has them).

    Returns:
        A :class:`Context`.

    Raises:
        TypeError: ``settings`` is not a study's ``Settings``.
        ValueError: an empty ``data_dir`` / ``out_dir`` string, an unknown study or profile.
        osteo_tf.datasets.DatasetError: fewer than two classes with usable images remain (a
            one-line reason naming what was dropped).
    """
    from osteo_tf import datasets
    from osteo_tf.config import reports_dir
    from osteo_tf.studies import get_study

    if not isinstance(settings, StudySettings):
        raise TypeError(f"settings must be a study's Settings. Received: settings={settings!r}")
    st = get_study(study)
    prof = get_profile(settings.profile)
    data_path = check_location("data_dir", data_dir)
    out_path = check_location("out_dir", out_dir)
    from osteo_tf import training
    from osteo_tf.config import XLA_DECISION

    strategy, strategy_kind = training.make_strategy(settings.strategy)  # before any other TF work
    seed_everything(seed)
    # full profiles: mixed_float16 on a GPU, mixed_bfloat16 on bf16 CPUs; float32 otherwise
    precision = training.configure_precision("auto" if prof.mixed_precision else None)
    runtime = {"strategy": strategy_kind, "replicas": training.replicas(strategy), "precision": precision,
               "xla": False, "jit_compile": prof.xla, "deterministic_ops": True,
               "xla_decision": XLA_DECISION if prof.xla == "auto" else "XLA off in this profile",
               "batch_rule": training.BATCH_RULE}
    out = out_path or reports_dir() / st.name
    out.mkdir(parents=True, exist_ok=True)
    if data_path is not None:
        ds = datasets.find_dataset(data_path)
        source = str(data_path.resolve())
        provenance = ds.source + (f": labels from the {ds.label_provenance}" if ds.source == "folders"
                                  else ": labels from the manifest")
    else:
        syn = synthetic or Synthetic(st.synthetic_mode, st.classes, 100)
        folder = synthetic_dataset(syn.mode, classes=syn.classes, patients=syn.patients, preset=settings.preset,
                                   size=syn.size, seed=seed, images_per_patient=syn.images_per_patient)
        ds = datasets.find_dataset(folder)
        source = f"synthetic:{syn.mode}/{settings.preset}"
        provenance = ("synthetic generator (osteo_tf.synthetic): labels are the generator's latent class; "
                      "accuracy on it says nothing clinical")
    manifest = ds.manifest.copy()
    quarantine = ds.quarantine
    if relabel is not None:
        manifest = relabel(manifest)
    dropped: dict[str, int] = {}
    if label_map:
        mapped = manifest["label"].map(lambda v: label_map.get(v, v))
        for label, n in manifest.loc[mapped.isna(), "label"].value_counts().items():
            dropped[str(label)] = dropped.get(str(label), 0) + int(n)
        manifest = manifest.assign(label=mapped)
        manifest = manifest[manifest["label"].notna()].reset_index(drop=True)
    manifest, merged, unused = datasets.select_classes(manifest, settings.classes)
    for label, n in unused.items():
        dropped[label] = dropped.get(label, 0) + n
    manifest, late = datasets.quarantine_mixed_copies(manifest)
    if len(late):
        quarantine = pd.concat([quarantine, late], ignore_index=True)
    class_names = sorted(manifest["label"].unique(), key=_class_order)
    emptied = sorted({str(c) for c in quarantine["label"].dropna().unique()} - set(class_names) - set(dropped)
                     - set(merged))
    if len(class_names) < 2:
        raise datasets.DatasetError(
            f"{source}: need at least two classes with usable images, found {len(class_names)} {class_names}"
            + (f" (classes {list(settings.classes)} kept; dropped: {dropped})" if settings.classes else "")
            + (f"; emptied by quarantine: {emptied}" if emptied else ""))
    data = {
        "source": source,
        "n_images": int(len(manifest)),
        "n_groups": int(manifest["group"].nunique()),
        "classes": {c: int((manifest["label"] == c).sum()) for c in class_names},
        "label_provenance": provenance,
        "n_unreadable": int((quarantine["kind"] != "conflict").sum()),
        "quarantined": int(len(quarantine)),
        "conflicts": int(len(ds.conflicts)),
        "copy_groups": int(manifest.loc[manifest["copy_group"].astype(str) != "", "copy_group"].nunique()),
        "dropped_classes": dropped,
        "merged_classes": merged,
        "empty_classes": emptied,
        "source_splits": ds.source_splits(),
        "source_split_leaks": len(ds.split_leaks()),
        "quarantine": [{"path": str(r.relpath), "reason": str(r.reason)} for r in quarantine.itertuples()],
    }
    size = image_size if image_size is not None else getattr(settings, "image_size", None)
    n_epochs = epochs if epochs is not None else getattr(settings, "epochs", None)
    return Context(
        study=st.name, profile=prof, seed=seed, manifest=manifest, class_names=class_names, data=data,
        out_dir=out, image_size=None if size is None else int(size), epochs=None if n_epochs is None else int(n_epochs),
        settings=settings, quarantine=quarantine, duplicates=ds.duplicates, dataset=ds, strategy=strategy,
        runtime=runtime,
    )


_ORDER = {"normal": 0, "osteopenia": 1, "partially_degraded": 1, "osteoporosis": 2, "degraded": 2}


def _class_order(name: str):
    """Healthy first, disease last (the positive class is the last one)."""
    return (_ORDER.get(name, 1), name)


def describe(ctx: Context) -> pd.DataFrame:
    """Parameters, seed, versions and provenance as a two-column table for the report."""
    rows = [("study", ctx.study), ("profile", f"{ctx.profile.name}: {ctx.profile.description}"),
            ("seed", ctx.seed)]
    if ctx.image_size is not None:
        rows.append(("image size", ctx.image_size))
    if ctx.epochs is not None:
        rows.append(("epochs", ctx.epochs))
    if ctx.runtime:
        rt = ctx.runtime
        rows += [("strategy", f"{rt['strategy']} ({rt['replicas']} replica(s)); {rt['batch_rule']}"),
                 ("precision policy", rt["precision"]),
                 ("compilation", f"graph, jit_compile={rt['jit_compile']!r} (XLA used: {rt['xla']}); "
                                 f"{rt['xla_decision']}")]
    rows += [("weights", ctx.weights + (" (random init allowed when the file is missing)" if ctx.allow_random_init else "")),
             ("data source", ctx.data["source"]), ("label provenance", ctx.data["label_provenance"]),
             ("images / groups", f"{ctx.data['n_images']} / {ctx.data['n_groups']}"),
             ("classes", ", ".join(f"{k}: {v}" for k, v in ctx.data["classes"].items())),
             ("unreadable files skipped", ctx.data["n_unreadable"])]
    rows += data_rows(ctx)
    rows += [(f"version {k}", v) for k, v in versions().items()]
    return pd.DataFrame(rows, columns=["item", "value"]).astype(str)


MAX_LISTED = 25
"""Quarantined files named one by one in a report's description (the rest are counted; metrics.json
and the dataset card list them all)."""


def data_rows(ctx: Context) -> list[tuple[str, str]]:
    """What the run could not use and how copies were handled, as (item, value) rows for a report."""
    d = ctx.data
    rows: list[tuple[str, str]] = []
    if "quarantined" not in d:
        return rows
    rows.append(("label conflicts (quarantined, never trained or tested on)", str(d["conflicts"])))
    rows.append(("copy groups kept on one side of every split", str(d["copy_groups"])))
    if d.get("dropped_classes"):
        kept = ", ".join(ctx.settings.classes) if ctx.settings.classes else "the study's classes"
        rows.append(("classes not used (parameter classes)", ", ".join(f"{k}: {v} image(s) dropped" for k, v in
                                                                         d["dropped_classes"].items()) + f" (kept: {kept})"))
    if d.get("merged_classes"):
        rows.append(("classes merged", ", ".join(f"{k} -> {v}" for k, v in d["merged_classes"].items())))
    if d.get("empty_classes"):
        rows.append(("classes left empty by the quarantine", ", ".join(d["empty_classes"])))
    if d.get("source_splits"):
        used = "used as this run's split" if ctx.settings.respect_source_split else "not used (respect_source_split=False)"
        rows.append(("uploader's split folders", ", ".join(f"{k}: {v}" for k, v in d["source_splits"].items())
                     + f"; {d['source_split_leaks']} copy group(s) straddle them; {used}"))
    listed = d["quarantine"][:MAX_LISTED]
    more = len(d["quarantine"]) - len(listed)
    value = "; ".join(f"{q['path']}: {q['reason']}" for q in listed) or "none"
    if more:
        value += f"; and {more} more (metrics.json data.quarantine and the dataset card list all)"
    rows.append((f"quarantined files ({d['quarantined']})", value))
    return rows


def split(ctx: Context, *, val: float, test: float) -> pd.DataFrame:
    """This run's split of ``ctx.manifest``, recorded for ``split.csv`` (:func:`record_split`).

    A grouped, stratified split (``splits.grouped_split`` with ``ctx.seed``), or, with
    ``settings.respect_source_split``, the uploader's split folders (``splits.source_split``; its
    validation side joins training when ``val`` is 0).
    """
    from osteo_tf import splits

    if ctx.settings.respect_source_split:
        out = splits.source_split(ctx.manifest, keep_val=val > 0)
    else:
        out = splits.grouped_split(ctx.manifest, val=val, test=test, seed=ctx.seed)
    record_split(ctx, out)
    return out


def record_split(ctx: Context, split: pd.DataFrame) -> bool:
    """Keep ``split`` as the run's ``split.csv`` unless one is kept already; only a split of the
    context's own images (``relpath`` values of ``ctx.manifest``) is kept. Its hash goes to
    ``ctx.data["split_hash"]`` at once, so the model bundles saved afterwards carry it. Returns
    whether it was kept."""
    from osteo_tf import splits

    if ctx.split is not None or "split" not in split.columns or "relpath" not in split.columns:
        return False
    if not set(split["relpath"]).issubset(set(ctx.manifest["relpath"])):
        return False
    ctx.split = split.copy()
    ctx.data["split_hash"] = splits.split_hash(ctx.split)
    return True


@dataclass
class FitResult:
    """One trained and evaluated model."""

    record: dict
    y_true: np.ndarray
    y_prob: np.ndarray
    groups: np.ndarray
    model: Any
    train: Any
    weights_used: str


def build_model(ctx: Context, name: str, *, num_classes: int | None = None, image_size: int | None = None, **options):
    """Build a registry model for this context (ImageNet weights, or random init when allowed):
    grey (size, size, 1) input, channel repeat and input scaling inside its graph."""
    from osteo_tf import models

    size = int(image_size or ctx.image_size)
    weights = options.pop("weights", None) or ctx.weights
    if models.get_spec(name).family == "study":  # the studies' own CNNs are trained from scratch
        weights = None
    model = models.build(name, input_shape=(size, size, 1), num_classes=num_classes or len(ctx.class_names),
                         weights=weights, allow_random_init=ctx.allow_random_init, **options)
    if str(models.build_info(model)["weights"]).startswith("random"):
        models.set_random_init_batchnorm(model)
    return model


BN_CALIBRATION_IMAGES = 512
"""Training images (a seeded sample, without augmentation) :func:`recalibrate_on_train` uses."""


def calibration_images(ctx: Context, train: pd.DataFrame, common: dict) -> np.ndarray:
    """Up to :data:`BN_CALIBRATION_IMAGES` training images (a sample seeded by ``ctx.seed``)
    through the evaluation pipeline (the same steps, no augmentation), as model inputs."""
    from osteo_tf import pipeline

    sample = train.sample(n=min(len(train), BN_CALIBRATION_IMAGES), random_state=ctx.seed) if len(train) else train
    if not len(sample):
        return np.zeros((0,), np.float32)
    return np.concatenate([xb.numpy() for xb, _ in pipeline.make_dataset(sample, **common)])


def recalibrate_on_train(ctx: Context, keras_model, train: pd.DataFrame, common: dict, val_ds=None,
                         val_rows: pd.DataFrame | None = None, *,
                         images: np.ndarray | None = None) -> tuple[dict, np.ndarray | None]:
    """``training.recalibrate_batchnorm`` of a just-trained model on up to
    :data:`BN_CALIBRATION_IMAGES` of its training images (a sample seeded by ``ctx.seed``, through
    the evaluation pipeline: the same steps, no augmentation), kept only when it lowers the
    validation split's cross-entropy (``images``: those training images when the caller already
    has them, from :func:`calibration_images`); without a validation split the running averages stay
    (nothing to confirm it on: study 01's paper protocol has none). Decided before the test split is
    read. Returns the summary the record keeps (``batchnorm``: layers, images, the validation
    losses before and after, ``kept``, or why it was skipped) and the validation probabilities of
    the model as left (``None`` when the validation split was not predicted), which
    :func:`operating_point_on_val` can reuse instead of predicting the split again."""
    from osteo_tf import pipeline, training

    bns = training.trainable_batchnorm(keras_model)
    if not bns:
        return {"recalibrated_layers": 0, "images": 0, "skipped": "no trainable BatchNormalization layer"}, None
    if val_ds is None or val_rows is None or len(val_rows) == 0:
        return {"recalibrated_layers": 0, "images": 0,
                "skipped": "no validation split to confirm it on: the running averages are kept"}, None
    x = calibration_images(ctx, train, common) if images is None else images
    y_val = pipeline.encode_labels(val_rows["label"].astype(str).tolist(), ctx.class_names, label_mode="int")

    def predicted() -> tuple[float, np.ndarray]:
        p = training.predict_proba(keras_model, val_ds)
        q = np.clip(p, 1e-7, 1.0)
        return float(-np.mean(np.log(q[np.arange(len(y_val)), y_val]))), p

    saved = [(bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()) for bn in bns]
    before, p_before = predicted()
    out = training.recalibrate_batchnorm(keras_model, x)
    if not out["recalibrated_layers"]:
        return out, p_before
    after, p_after = predicted()
    out.update(val_loss_before=round(before, 4), val_loss_after=round(after, 4), kept=bool(after < before))
    if not out["kept"]:  # the running averages did better on validation: restore them
        for bn, (mean, var) in zip(bns, saved):
            bn.moving_mean.assign(mean)
            bn.moving_variance.assign(var)
    return out, (p_after if out["kept"] else p_before)


def fit_evaluate(
    ctx: Context,
    split: pd.DataFrame,
    *,
    model: str | Callable,
    experiment: str,
    rec,
    protocol: str = "clean",
    image_size: int | None = None,
    steps: Sequence = (),
    augmenter=None,
    class_weight: dict | None = None,
    model_options: dict | None = None,
    head_only_features: bool = False,
    record_as: str | None = None,
    keep: bool = True,
) -> FitResult:
    """Train one model on ``split`` (train/val), fix its operating point on val, evaluate it on
    the untouched test split and save it as a bundle.

    The decision threshold is chosen on the validation predictions
    (``evaluation.operating_point``: Youden's J for two classes, argmax for more, 0.5 without a
    validation split) before the test split is read; the record's headline metrics are at it,
    ``record["at_0.5"]`` repeats them at 0.5. The trained model is saved as
    ``OUT/models/<experiment>-<model>.keras`` (``-<protocol>`` appended for protocols other than
    "clean") with its sidecar (:func:`save_bundle`); ``record["bundle"]`` names the file.

    Args:
        ctx: the study context.
        split: manifest with a ``split`` column ("train", optional "val", "test").
        model: a registry name or a zero-argument builder.
        experiment: experiment label for metrics.json (e.g. "E4").
        rec: a :class:`osteo_tf.training.Recipe` (batch size, optimizer, epochs).
        protocol: "clean" or "paper" (study 01's augment-then-split), recorded.
        image_size: overrides the context's.
        steps: deterministic preprocessing steps (``osteo_tf.preprocessing.STEPS``).
        augmenter: on-the-fly training augmentation (training split only).
        class_weight: class weights from the training split.
        model_options: extra keyword arguments of ``models.build``.
        head_only_features: train the head on cached backbone features (frozen backbone, no
            on-the-fly augmentation allowed).
        record_as: model name in the record (default: ``model``).
        keep: append the record to ``ctx.results``.

    Returns:
        :class:`FitResult` with the metrics.json record and the test predictions.
    """
    from osteo_tf import evaluation, models, pipeline, training

    size = int(image_size or ctx.image_size)
    name = model if isinstance(model, str) else getattr(model, "__name__", "custom")
    options = dict(model_options or {})
    if isinstance(model, str) and "trainable" not in options and rec.trainable != "all":
        options["trainable"] = rec.trainable  # the recipe's freeze (e.g. study 04 approach 2: head only)
    rec = training.scale_recipe(rec, training.replicas(ctx.strategy))  # global batch (training.BATCH_RULE)
    with training.strategy_scope(ctx.strategy):  # variables are created in the strategy's scope
        keras_model = build_model(ctx, model, image_size=size, **options) if isinstance(model, str) else model()
    info = models.build_info(keras_model) if isinstance(model, str) else {"weights": "custom"}
    spec = models.get_spec(model) if isinstance(model, str) else None  # recorded in the bundle
    sigmoid = keras_model.output_shape[-1] == 1
    label_mode = "binary" if sigmoid else "categorical"
    if sigmoid and rec.loss != "binary_crossentropy":
        from dataclasses import replace

        rec = replace(rec, loss="binary_crossentropy")
    parts = {s: split[split["split"] == s] for s in ("train", "val", "test")}
    if len(parts["train"]) == 0 or len(parts["test"]) == 0:
        raise ValueError(f"split needs train and test rows; got {split['split'].value_counts().to_dict()}")
    if protocol == "clean":
        record_split(ctx, split)
    common = dict(class_names=ctx.class_names, image_size=size, steps=steps, label_mode=label_mode,
                  batch_size=rec.batch_size)
    train_ds = pipeline.make_dataset(parts["train"], training=True, augmenter=augmenter, seed=ctx.seed, **common)
    val_ds = pipeline.make_dataset(parts["val"], **common) if len(parts["val"]) else None
    test_ds = pipeline.make_dataset(parts["test"], **common)
    run_dir = ctx.runs_dir / f"{experiment}-{record_as or name}-{protocol}".replace(" ", "_").replace("/", "_")
    # the BatchNorm statistics are recomputed on these before every validation pass and after
    # training; both need a validation split and a trainable BatchNorm layer
    x_cal = calibration_images(ctx, parts["train"], common) if (
        not head_only_features and len(parts["val"]) and training.trainable_batchnorm(keras_model)) else None
    t0 = time.perf_counter()
    if head_only_features:
        if augmenter is not None:
            raise ValueError("head_only_features cannot use an on-the-fly augmenter (features are cached once)")
        out = training.train_head_on_features(keras_model, train_ds, val_ds, rec=rec, epochs=ctx.epochs if rec.epochs is None else rec.epochs, seed=ctx.seed,
                                             run_dir=run_dir)
        train_info = out
        epoch_seconds = out["epoch_seconds"]
        train_seconds = out["train_seconds"]
    else:
        keras_model, train_info = training.train(
            keras_model, train_ds, val_ds, rec=rec, run_dir=run_dir, run_eagerly=ctx.profile.run_eagerly,
            class_weight=class_weight, strategy=ctx.strategy,
            jit_compile=ctx.profile.xla, bn_images=None if x_cal is None else x_cal[:training.PRECISE_BN_IMAGES],
            config={"study": ctx.study, "experiment": experiment, "model": name, "protocol": protocol,
                    "seed": ctx.seed, "weights": info.get("weights"), "image_size": size})
        epoch_seconds = train_info.epoch_seconds
        train_seconds = train_info.train_seconds
        ctx.runtime["xla"] = bool(ctx.runtime.get("xla") or keras_model.jit_compile)
    wall = time.perf_counter() - t0
    bn, p_val = ({"skipped": "head trained on cached features"}, None) if head_only_features else \
        recalibrate_on_train(ctx, keras_model, parts["train"], common, val_ds, parts["val"], images=x_cal)
    op = operating_point_on_val(ctx, keras_model, val_ds, parts["val"], p_val=p_val)  # frozen before test is read
    step_seconds = train_info["step_seconds"] if head_only_features else train_info.step_seconds
    y_prob = training.predict_proba(keras_model, test_ds)
    y_true = pipeline.encode_labels(parts["test"]["label"].astype(str).tolist(), ctx.class_names, label_mode="int")
    groups = parts["test"]["group"].astype(str).to_numpy()
    record = evaluation.result_record(
        experiment=experiment, model=record_as or name, protocol=protocol, y_true=y_true, y_prob=y_prob,
        groups=groups, class_names=ctx.class_names, train_seconds=round(float(train_seconds), 2), seed=ctx.seed,
        threshold=0.5 if op["threshold"] is None else op["threshold"], threshold_rule=op["rule"],
        extra={"weights": info.get("weights"), "image_size": size, "epochs_run": len(epoch_seconds),
               "seconds_per_10_epochs": round(10 * float(np.mean(epoch_seconds)), 2) if epoch_seconds else None,
               "wall_seconds": round(wall, 2), "n_train_images": int(len(parts["train"])),
               "batch_size": rec.batch_size, "steps": len(step_seconds),
               "seconds_per_step": round(float(np.median(step_seconds[1:])), 4)
               if len(step_seconds) > 1 and not head_only_features else None,  # head-only: steps on cached features
               "n_train_groups": int(parts["train"]["group"].nunique()), "batchnorm": bn},
    )
    bundle = save_bundle(ctx, keras_model, record, steps=steps, image_size=size, spec=spec, weights=info.get("weights"))
    record["bundle"] = str(bundle.relative_to(ctx.out_dir))
    if keep:
        ctx.results.append(record)
        keep_predictions(ctx, record, y_true, y_prob, groups, split=split, steps=steps, image_size=size)
    return FitResult(record, y_true, y_prob, groups, keras_model, train_info, str(info.get("weights")))


def operating_point_on_val(ctx: Context, model, val_ds, val_rows: pd.DataFrame,
                           p_val: np.ndarray | None = None) -> dict:
    """The model's decision rule from its validation predictions (``evaluation.operating_point``);
    ``p_val``: those predictions when the caller already has them (else the split is predicted)."""
    from osteo_tf import evaluation, pipeline, training

    if val_ds is None or len(val_rows) == 0:
        return evaluation.operating_point(None, None, class_names=ctx.class_names)
    if p_val is None:
        p_val = training.predict_proba(model, val_ds)
    y_val = pipeline.encode_labels(val_rows["label"].astype(str).tolist(), ctx.class_names, label_mode="int")
    return evaluation.operating_point(y_val, p_val, class_names=ctx.class_names)


def bundle_path(ctx: Context, record: dict) -> Path:
    """``OUT/models/<experiment>-<model>[-<protocol>].keras`` of one result record."""
    stem = f"{record['experiment']}-{record['model']}"
    if record.get("protocol", "clean") != "clean":
        stem += f"-{record['protocol']}"
    return ctx.out_dir / "models" / (stem.replace(" ", "_").replace("/", "_") + ".keras")


def save_bundle(ctx: Context, model, record: dict, *, steps: Sequence, image_size: int, spec=None,
                weights: str | None = None) -> Path:
    """Save a trained model of this run as ``.keras`` + sidecar (``osteo_tf.inference.save_model``).

    The sidecar gets the run's class names, the record's threshold and rule, the input size and
    preprocessing steps, the split hash (``ctx.data["split_hash"]`` when the run has one), the
    test metrics of ``record`` and the library versions.
    """
    from osteo_tf import inference

    metrics_keys = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "auc", "pr_auc",
                    "brier", "ece", "ci95", "n_test_images", "n_test_groups", "at_0.5")
    info = {
        "study": ctx.study, "experiment": record["experiment"], "model": record["model"],
        "protocol": record.get("protocol"), "profile": ctx.profile.name, "seed": ctx.seed,
        "architecture": spec.name if spec is not None else getattr(model, "name", "custom"),
        "weights": weights, "data_source": ctx.data.get("source"), "split_hash": ctx.data.get("split_hash"),
        "test_metrics": {k: record[k] for k in metrics_keys if k in record},
        "versions": versions(),
    }
    return inference.save_model(model, bundle_path(ctx, record), class_names=ctx.class_names, image_size=image_size,
                                steps=steps, threshold=record.get("threshold"),
                                threshold_rule=record.get("threshold_rule"), info=info)


def results_table(records: Sequence[dict],
                  keys: Sequence[str] = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "auc"),
                  ) -> pd.DataFrame:
    """A compact table of result records with 95% CIs as "0.812 [0.70, 0.90]".

    The metrics are at each model's operating point (column ``threshold``: the value and how it
    was chosen, e.g. ``0.31 (Youden's J on val)``, or ``argmax``); binary records also show
    ``accuracy @0.5`` and ``sens/spec @0.5``, the same model at the fixed 0.5.
    """
    from osteo_tf import evaluation

    rows = []
    for r in records:
        row = {"experiment": r["experiment"], "model": r["model"], "protocol": r.get("protocol", "")}
        for k in keys:
            row[k] = evaluation.format_estimate(r.get(k), (r.get("ci95") or {}).get(k))
        row["threshold"] = _threshold_text(r)
        at = r.get("at_0.5")
        if isinstance(at, dict):
            row["accuracy @0.5"] = evaluation.format_estimate(at.get("accuracy"))
            row["sens/spec @0.5"] = (f"{evaluation.format_estimate(at.get('sensitivity'))} / "
                                     f"{evaluation.format_estimate(at.get('specificity'))}")
        row["train s"] = r.get("train_seconds")
        rows.append(row)
    return pd.DataFrame(rows)


def _threshold_text(record: dict) -> str:
    """A record's decision rule in a few words: ``0.31 (Youden's J on val)``, ``0.50 (fixed: no
    validation split)``, ``argmax``..."""
    rule = record.get("threshold_rule")
    t = record.get("threshold")
    if t is None:
        return "argmax" if rule in (None, "argmax") else str(rule)
    if rule is None:
        return f"{float(t):.2f}"
    if rule == "Youden's J on the validation split":
        return f"{float(t):.2f} (Youden's J on val)"
    if rule.startswith("fixed 0.5"):
        why = rule[len("fixed 0.5"):].strip().strip("()")
        return f"{float(t):.2f} (fixed" + (f": {why})" if why else ")")
    return f"{float(t):.2f} ({rule})"


def paper_comparison(ctx: Context, *, keys: Sequence[str] = ("accuracy", "sensitivity", "specificity", "f1", "auc"),
                     paper: list[dict] | None = None) -> pd.DataFrame:
    """Our results beside the paper's, one row per (experiment, model, protocol, metric).

    Adds a ``why it differs`` column: synthetic data, the profile, random initialisation, and the
    protocol (a clean protocol has no leakage).
    """
    from osteo_tf import evaluation
    from osteo_tf.studies import get_study

    table = evaluation.compare_to_paper(ctx.results, paper if paper is not None else get_study(ctx.study).paper,
                                        keys=keys)
    reasons = []
    synthetic = ctx.data["source"].startswith("synthetic")
    weights_of = {(r["experiment"], r["model"], r.get("protocol")): r.get("weights") for r in ctx.results}
    for _, row in table.iterrows():
        why = []
        if synthetic:
            why.append("synthetic data")
        if ctx.profile.name == "full-smoke":
            why.append("full-smoke profile (the paper's models and sizes on a handful of patients, one epoch)")
        elif ctx.profile.name != "full":
            why.append(f"{ctx.profile.name} profile (smaller images, fewer patients and epochs)")
        w = weights_of.get((row.get("experiment"), row.get("model"), row.get("protocol")))
        if w and str(w).startswith("random") and row.get("model") not in ("majority_vote",):
            why.append("random init instead of ImageNet weights")
        if row.get("protocol") == "clean":
            why.append("clean split (no leakage)")
        reasons.append("; ".join(why) or "same protocol")
    table["why it differs"] = reasons
    return table[table["ours"].notna()].reset_index(drop=True)


def finish(ctx: Context, *, paper: list[dict] | None = None, extra: dict | None = None) -> Path:
    """Write ``metrics.json`` for this run (design.md format) and return its path.

    The run's settings (``ctx.settings``) are recorded under ``"settings"``; the recorded split
    (:func:`record_split`) is written to ``split.csv`` beside it and its hash to
    ``data["split_hash"]``.
    """
    from osteo_tf import evaluation, splits
    from osteo_tf.studies import get_study

    if ctx.split is not None:
        ctx.data["split_hash"] = splits.write_split(ctx.split, ctx.out_dir / "split.csv")

    doc = evaluation.metrics_document(
        study=ctx.study, profile=ctx.profile.name, seed=ctx.seed, data=ctx.data, versions=versions(),
        results=ctx.results, paper=paper if paper is not None else get_study(ctx.study).paper,
        extra={"settings": ctx.settings.as_dict(), "runtime": dict(ctx.runtime), **ctx.extra, **(extra or {})},
    )
    path = ctx.out_dir / "metrics.json"
    evaluation.write_metrics_json(path, doc)
    return path


def leakage_summary(split: pd.DataFrame) -> pd.DataFrame:
    """The leakage check of a split as a one-row table for reports."""
    from osteo_tf import splits

    rep = splits.leakage_report(split)
    return pd.DataFrame([{
        "groups on several sides": rep["n_shared_groups"],
        "pixel-identical images on several sides": rep["n_shared_images"],
        "test images whose group is in training": rep["test_images_with_train_group"],
        "clean": rep["clean"],
    }])


# --------------------------------------------------------------------------------------------
# The claim: the paper's comparison as a paired effect, and the texture-feature floor
# --------------------------------------------------------------------------------------------
@dataclass
class Predictions:
    """The test predictions behind one result record (kept in ``Context.predictions``)."""

    y_true: np.ndarray
    y_prob: np.ndarray
    groups: np.ndarray
    threshold: float
    class_names: list[str]
    split: pd.DataFrame | None = None
    steps: tuple = ()
    image_size: int | None = None

    def arm(self) -> dict:
        """The arm :func:`osteo_tf.evaluation.paired_effect` takes."""
        return {"y_true": self.y_true, "y_prob": self.y_prob, "groups": self.groups, "threshold": self.threshold}


def keep_predictions(ctx: Context, record: dict, y_true, y_prob, groups, *, split: pd.DataFrame | None = None,
                     steps: Sequence = (), image_size: int | None = None) -> tuple:
    """Store a record's test predictions under ``(experiment, model, protocol)`` and return that key.

    The decision threshold is the record's (its operating point; 0.5 when it has none).
    """
    key = (record["experiment"], record["model"], record.get("protocol", "clean"))
    threshold = record.get("threshold")
    ctx.predictions[key] = Predictions(np.asarray(y_true), np.asarray(y_prob), np.asarray(groups).astype(str),
                                       0.5 if threshold is None else float(threshold), list(ctx.class_names),
                                       split, tuple(steps), image_size)
    return key


@dataclass(frozen=True)
class Comparison:
    """One claim of a paper: arm ``b`` (what the paper says helps) against arm ``a``.

    Attributes:
        claim: the comparison in words, e.g. "augmented set C vs originals N (study01_cnn)".
        a, b: ``(experiment, model, protocol)`` keys of ``Context.predictions``.
        metric: the metric of the paper's comparison (``accuracy``, ``auc``, ...).
        paper: the paper's own difference ``b - a`` in that metric, or ``None`` when it reports none.
        paper_note: where the paper's figure comes from (or why there is none).
        pairing: ``"same"`` (the arms were tested on the same patients) or ``"shared"`` (pair them on
            the patients both were tested on: study 01's paper protocol tests augmented copies).
        extra_metrics: further metrics whose effect is shown (default AUC), without a paper figure.
    """

    claim: str
    a: tuple
    b: tuple
    metric: str = "accuracy"
    paper: float | None = None
    paper_note: str = ""
    pairing: str = "same"
    extra_metrics: tuple[str, ...] = ("auc",)


def paper_value(study: str, experiment: str, model: str, metric: str) -> float | None:
    """One figure of a paper (``osteo_tf.studies``), or ``None`` when the paper has no such row."""
    from osteo_tf.studies import get_study

    for row in get_study(study).paper:
        if row.get("experiment") == experiment and row.get("model") == model and row.get(metric) is not None:
            return float(row[metric])
    return None


MIN_CLAIM_PATIENTS = 10
"""Below this many paired test patients :func:`verdict` does not judge a claim (smoke runs)."""


def verdict(effect: float | None, ci: Sequence[float | None] | None, *, b: str, a: str, metric: str,
            n_groups: int, paper: float | None = None) -> str:
    """One plain sentence: does this run's paired effect support ``b`` beating ``a``?"""
    lo, hi = (None, None) if not ci else ci
    if effect is None or lo is None or hi is None:
        return f"Undefined: {metric} cannot be computed on these {n_groups} test patients."
    if n_groups < MIN_CLAIM_PATIENTS:
        return (f"Not testable: {n_groups} test patients are too few for an interval "
                f"(at least {MIN_CLAIM_PATIENTS}); effect {effect:+.3f}.")
    span = f"{effect:+.3f}, 95% CI {lo:+.3f} to {hi:+.3f}, {n_groups} test patients"
    if lo > 0:
        out = f"Supported: {b} beats {a} in {metric} ({span})."
    elif hi < 0:
        out = f"Contradicted: {b} is worse than {a} in {metric} ({span})."
    else:
        out = f"Not shown: the interval includes no difference in {metric} ({span})."
    if paper is not None:
        out += f" The paper's difference ({paper:+.3f}) is {'inside' if lo <= paper <= hi else 'outside'} our interval."
    return out


def claim(ctx: Context, comparisons: Sequence[Comparison], *, n_boot: int = 2000) -> pd.DataFrame:
    """Each comparison as a paired, patient-level bootstrap effect beside the paper's difference.

    Effects come from the test predictions kept in ``ctx.predictions``
    (:func:`osteo_tf.evaluation.paired_effect`, ``n_boot`` resamples, the run's seed); a comparison
    whose arms this run did not train says so. The rows are also stored, JSON-ready, under
    ``ctx.extra["claims"]`` (metrics.json ``claims``).

    Returns:
        One row per (comparison, metric): comparison, metric, b, a (each with its value), ours
        (b - a) with its 95% CI, paper (b - a), patients (paired test patients). The sentences
        saying whether the run supports each claim: :func:`claim_summary`.
    """
    from osteo_tf import evaluation

    rows, records = [], []
    for comp in comparisons:
        missing = [k for k in (comp.a, comp.b) if k not in ctx.predictions]
        for metric in (comp.metric, *[m for m in comp.extra_metrics if m != comp.metric]):
            paper = comp.paper if metric == comp.metric else None
            rec = {"claim": comp.claim, "metric": metric, "primary": metric == comp.metric, "a": list(comp.a),
                   "b": list(comp.b), "paper": paper,
                   "paper_note": comp.paper_note if metric == comp.metric else ""}
            if missing:
                rec.update(effect=None, ci95=None, n_groups=0,
                           verdict=f"Not run in this profile (no {', '.join(' / '.join(k) for k in missing)}).")
            else:
                eff = evaluation.paired_effect(ctx.predictions[comp.a].arm(), ctx.predictions[comp.b].arm(),
                                               metric=metric, n_boot=n_boot, seed=ctx.seed, pairing=comp.pairing)
                rec.update(effect=eff["effect"], ci95=eff["ci95"], n_groups=eff["n_groups"], a_value=eff["a"],
                           b_value=eff["b"], pairing=eff["pairing"], n_only_a=eff["n_only_a"],
                           n_only_b=eff["n_only_b"], n_boot=eff["n_boot"], n_skipped=eff["n_skipped"],
                           p_not_positive=eff["p_not_positive"])
                rec["verdict"] = verdict(eff["effect"], eff["ci95"], b=_arm_name(comp.b), a=_arm_name(comp.a),
                                         metric=metric, n_groups=eff["n_groups"], paper=paper)
            records.append(rec)
            rows.append({
                "comparison": comp.claim, "metric": metric,
                "b": f"{_arm_name(comp.b)}: {_num(rec.get('b_value'))}", "a": f"{_arm_name(comp.a)}: {_num(rec.get('a_value'))}",
                "ours (b - a) [95% CI]": "-" if rec["effect"] is None and not rec.get("ci95")
                else evaluation.format_estimate(rec["effect"], rec["ci95"], digits=3),
                "paper (b - a)": "-" if paper is None else f"{paper:+.3f}",
                "patients": rec["n_groups"],
            })
    ctx.extra["claims"] = records
    return pd.DataFrame(rows)


def claim_summary(ctx: Context) -> str:
    """The claim in sentences (Markdown): per comparison, in the paper's metric, whether this run
    supports it (:func:`verdict`) and where the paper's figure comes from."""
    lines = []
    for rec in ctx.extra.get("claims", []):
        if rec.get("primary"):
            note = f" *Paper:* {rec['paper_note']}" if rec.get("paper_note") else ""
            lines.append(f"- **{rec['claim']}**: {rec['verdict']}{note}")
    return "\n".join(lines) or "No comparison ran."


def _arm_name(key: tuple) -> str:
    experiment, model, protocol = key
    name = "the texture floor" if model == FLOOR_MODEL else f"{experiment} {model}"
    return name + (f" ({protocol} protocol)" if protocol != "clean" else "")


def _num(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.3f}"


FLOOR_MODEL = "logistic regression (texture + intensity)"
"""The model name of the texture-feature floor in metrics.json (``floor``)."""


def intensity_features(image: np.ndarray) -> np.ndarray:
    """Mean, SD and the 5 / 25 / 50 / 75 / 95th percentiles of the grey values."""
    img = np.asarray(image, np.float64)
    return np.r_[img.mean(), img.std(), np.percentile(img, [5, 25, 50, 75, 95])]


def texture_features(image: np.ndarray) -> np.ndarray:
    """The generator's variogram texture features (``synthetic.texture_features``), NaN where
    undefined (a constant image)."""
    from osteo_tf import synthetic

    try:
        return synthetic.texture_features(np.asarray(image, np.float64))
    except ValueError:
        return np.full(len(synthetic.TEXTURE_FEATURES), np.nan)


def floor_features(images: Sequence[np.ndarray]) -> np.ndarray:
    """(N, 12) texture + intensity features of grey images (the dataset card's baseline features)."""
    return np.stack([np.r_[texture_features(x), intensity_features(x)] for x in images])


def texture_floor(ctx: Context, key: tuple, *, min_size: int = 32) -> dict:
    """The dataset card's baseline on one result's own data and split: logistic regression on
    texture + intensity features, fitted on that result's training images and tested on its test
    images, so a CNN that learns less than a linear model on 12 hand-made features shows as such.

    Images are read with the result's preprocessing steps at its input size (at least
    ``min_size`` px: the variogram's lags reach 16 px). The record (experiment ``floor``, model
    :data:`FLOOR_MODEL`, the result's protocol, ``floor_of``: the result it is the floor of, ``key``)
    is appended to ``ctx.extra["floor"]`` (metrics.json ``floor``) and its predictions are kept
    under ``("floor of <experiment>", FLOOR_MODEL, protocol)`` for :func:`claim`.

    Raises:
        KeyError: ``key`` has no kept predictions, or they carry no split.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from osteo_tf import evaluation, pipeline

    pred = ctx.predictions.get(key)
    if pred is None or pred.split is None:
        raise KeyError(f"no kept predictions with a split for {key}. Kept: {sorted(map(str, ctx.predictions))}")
    size = max(int(pred.image_size or ctx.image_size or min_size), int(min_size))
    train = pred.split[pred.split["split"] == "train"]
    test = pred.split[pred.split["split"] == "test"]
    t0 = time.perf_counter()
    x_train = floor_features(load_images(train, size, steps=pred.steps))
    x_test = floor_features(load_images(test, size, steps=pred.steps))
    encode = dict(class_names=pred.class_names, label_mode="int")
    y_train = pipeline.encode_labels(train["label"].astype(str).tolist(), **encode)
    y_test = pipeline.encode_labels(test["label"].astype(str).tolist(), **encode)
    clf = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(x_train, y_train)
    prob = np.zeros((len(test), len(pred.class_names)))
    prob[:, clf.classes_] = clf.predict_proba(x_test)
    groups = test["group"].astype(str).to_numpy()
    record = evaluation.result_record(
        experiment="floor", model=FLOOR_MODEL, protocol=key[2], y_true=y_test, y_prob=prob, groups=groups,
        class_names=pred.class_names, seed=ctx.seed, train_seconds=round(time.perf_counter() - t0, 2),
        extra={"floor_of": list(key), "image_size": size, "features": "texture + intensity (12)",
               "n_train_images": int(len(train))})
    ctx.extra.setdefault("floor", []).append(record)
    floor_key = (f"floor of {key[0]}", FLOOR_MODEL, key[2])
    ctx.predictions[floor_key] = Predictions(y_test, prob, groups, 0.5, list(pred.class_names), pred.split,
                                             pred.steps, size)
    record["key"] = list(floor_key)
    return record


def floor_table(ctx: Context) -> pd.DataFrame:
    """Each texture floor beside the result it is the floor of (accuracy, balanced accuracy, AUC, CIs)."""
    from osteo_tf import evaluation

    by_key = {(r["experiment"], r["model"], r.get("protocol", "clean")): r for r in ctx.results}
    rows = []
    for floor in ctx.extra.get("floor", []):
        of = tuple(floor["floor_of"])
        for label, r in ((f"{of[0]} {of[1]}", by_key.get(of)), ("texture floor (logistic regression)", floor)):
            if r is None:
                continue
            rows.append({"data and split": f"{of[0]} ({of[2]} protocol)", "model": label,
                         **{k: evaluation.format_estimate(r.get(k), (r.get("ci95") or {}).get(k))
                            for k in ("accuracy", "balanced_accuracy", "auc")},
                         "test patients": r.get("n_test_groups")})
    return pd.DataFrame(rows)
