"""Training recipes, run folders, resume, head-only training, self-supervised pretraining.

A notebook asks for a recipe by name (``recipe("study04", "approach2")``) instead of re-typing
hyperparameters, then calls :func:`train`, which

* compiles the model with the recipe's optimizer (inside the caller's ``tf.distribute`` strategy
  scope when one is given; a strategy is taken, never assumed),
* writes a run folder: ``config.json``, ``history.csv`` (appended across resumes),
  ``best.keras`` (the best epoch by the monitored quantity), ``backup/`` (weights, optimizer and
  epoch for :class:`keras.callbacks.BackupAndRestore`) and ``result.json``,
* resumes an interrupted run from ``backup/``,
* stops with :class:`TrainingDivergedError` on a NaN/Inf loss and KEEPS the backup (Keras'
  graceful NaN stop would delete it),
* checks the monitor name before the first epoch (Keras only warns about a misspelled monitor),
* records seconds per epoch (study 04 reports the time for 10 epochs),
* writes TensorBoard logs (per-epoch scalars) into ``tensorboard/`` of the run folder
  (:func:`tensorboard_callback`); open them with ``tensorboard --logdir <runs folder>``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from osteo_tf._warnings import RAN_OUT_OF_DATA, quiet

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or Inf; the run folder's backup is kept for inspection or resume."""


@dataclass(frozen=True)
class Recipe:
    """How a study trains a model (the paper's values; profiles may shorten ``epochs``).

    Each study keeps its paper's recipes beside its settings (``osteo_tf.workflows.studyNN.RECIPES``);
    ``dataclasses.replace(recipe, epochs=3)`` gives a run's variant.

    Attributes:
        optimizer: "sgd", "adam" or "rmsprop".
        learning_rate: initial learning rate.
        momentum: SGD momentum (ignored by other optimizers).
        batch_size: mini-batch size.
        epochs: maximum epochs.
        patience: early-stopping patience in epochs (None = no early stopping).
        monitor: quantity for checkpointing / early stopping.
        trainable: "all", "head" or an int (freeze the first N backbone layers).
        loss: "categorical_crossentropy" (softmax heads) or "binary_crossentropy" (sigmoid).
        source: where the values come from (paper section), printed in reports.
    """

    optimizer: str = "sgd"
    learning_rate: float = 1e-4
    momentum: float = 0.9
    batch_size: int = 32
    epochs: int = 20
    patience: int | None = None
    monitor: str = "val_loss"
    trainable: str | int = "all"
    loss: str = "categorical_crossentropy"
    source: str = ""


def make_optimizer(rec: Recipe):
    """The Keras optimizer a recipe names."""
    import keras

    if rec.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=rec.learning_rate, momentum=rec.momentum)
    if rec.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=rec.learning_rate)
    if rec.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=rec.learning_rate)
    raise ValueError(f"optimizer must be 'sgd', 'adam' or 'rmsprop'. Received: optimizer={rec.optimizer!r}")


def compile_model(model, rec: Recipe, *, jit_compile: bool | str = False, run_eagerly: bool = False,
                  extra_metrics: Sequence = ()):
    """Compile ``model`` with the recipe's optimizer and loss, tracking accuracy and AUC."""
    import keras

    binary = rec.loss == "binary_crossentropy"
    metrics = [
        keras.metrics.BinaryAccuracy(name="accuracy") if binary else keras.metrics.CategoricalAccuracy(name="accuracy"),
        keras.metrics.AUC(name="auc", multi_label=False),
        *extra_metrics,
    ]
    model.compile(optimizer=make_optimizer(rec), loss=rec.loss, metrics=metrics, jit_compile=jit_compile,
                  run_eagerly=run_eagerly)
    return model


def metric_names(model, *, validation: bool) -> list[str]:
    """Names ``fit`` will log for a compiled model (loss + compiled metrics, with ``val_`` twins)."""
    names = ["loss"]
    for m in getattr(model, "_compile_config", None) and model._compile_config.config.get("metrics") or []:
        name = m if isinstance(m, str) else getattr(m, "name", None) or m.get("config", {}).get("name")
        if name:
            names.append(name)
    if len(names) == 1:  # fall back on the metric objects
        names += [m.name for m in getattr(model, "metrics", []) if m.name not in ("loss", "compile_metrics")]
    return names + ([f"val_{n}" for n in names] if validation else [])


def check_monitor(monitor: str, model, *, validation: bool) -> None:
    """Fail fast on a monitor ``fit`` will never log (Keras itself only warns).

    Raises:
        ValueError: naming the monitor and the available names.
    """
    available = metric_names(model, validation=validation)
    if monitor not in available:
        raise ValueError(f"monitor {monitor!r} will never be logged. Available: {available}")


def _reduce_build_batch_per_element(model, strategy) -> None:
    """Work around Keras 3.15 under MultiWorkerMirroredStrategy: before its first fit/evaluate
    step, Keras builds the model symbolically from one batch reduced with
    ``strategy.reduce("MEAN", (x, y), axis=None)``; the collective strategy cannot reduce a tuple
    of per-replica values ("Attempt to convert a value (PerReplica ...) to a Tensor"). Reducing
    each element separately gives the batch Keras wants; other strategies keep Keras' method."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.reduce("MEAN", v, axis=None)
                    if isinstance(v, tf.distribute.DistributedValues) else v, batch)
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = maybe_symbolic_build


class EpochTimer:
    """Keras callback recording wall seconds per epoch into ``self.seconds`` and per training step
    (batch) into ``self.step_seconds`` (the first step includes graph tracing)."""

    def __new__(cls, *args, **kwargs):  # build a real keras Callback subclass lazily
        import keras

        class _EpochTimer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds: list[float] = []
                self.step_seconds: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self._t0 = time.perf_counter()

            def on_train_batch_begin(self, batch, logs=None):
                self._s0 = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                self.step_seconds.append(time.perf_counter() - self._s0)

            def on_epoch_end(self, epoch, logs=None):
                dt = time.perf_counter() - self._t0
                self.seconds.append(dt)
                if logs is not None:
                    logs["epoch_seconds"] = dt

        return _EpochTimer()


class PreciseBatchNorm:
    """Keras callback: before each validation pass of ``fit``, set every trainable BatchNorm
    layer's moving statistics with :func:`precise_batchnorm` on ``images`` (training images
    through the evaluation pipeline, no augmentation).

    Keras validates with the running averages: in a network trained from scratch for a few
    hundred steps they lag weights that still move, and validation then measures stale
    statistics rather than the weights (README, Known limits: a rotation pretext at chance on
    held-out rotations with the running averages, at 0.99-1.00 with them recomputed). Recomputing
    them before validation makes the validation loss that early stopping and the best-epoch
    checkpoint watch a measure of the weights, and the saved best epoch carries the statistics
    it was judged with. Training steps are unchanged (they normalize with batch statistics).
    ``self.runs`` counts the recomputations.
    """

    def __new__(cls, images, *, batch_size: int | None = None):
        import keras

        class _PreciseBatchNorm(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.images = np.asarray(images, np.float32)
                self.runs = 0

            def on_test_begin(self, logs=None):
                if precise_batchnorm(self.model, self.images, batch_size=batch_size):
                    self.runs += 1

        return _PreciseBatchNorm()


TENSORBOARD_DIR = "tensorboard"


def tensorboard_callback(log_dir: str | Path):
    """A cheap ``keras.callbacks.TensorBoard`` writing per-epoch scalars into ``log_dir``.

    Losses, metrics, the learning rate and ``epoch_seconds`` (from :class:`EpochTimer`, when it
    runs before this callback) are logged once per epoch; no weight histograms, images, graph or
    profiler trace, so the logs cost a few milliseconds per epoch and do not touch the numerics.

    Args:
        log_dir: folder for the event files (``train/`` and ``validation/`` are made inside).

    Returns:
        The callback.
    """
    import keras

    return keras.callbacks.TensorBoard(log_dir=str(log_dir), histogram_freq=0, write_graph=False,
                                       write_images=False, write_steps_per_second=False,
                                       update_freq="epoch", profile_batch=0)


@dataclass
class TrainResult:
    """What :func:`train` returns (and writes as ``result.json``)."""

    run_dir: Path
    history: pd.DataFrame
    epoch_seconds: list[float]
    best_model_path: Path | None
    epochs_run: int
    stopped_early: bool
    recipe: dict = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)

    @property
    def seconds_per_step(self) -> float | None:
        """Median wall seconds of a training step after the first (which traces the graph);
        ``None`` with a single step."""
        return float(np.median(self.step_seconds[1:])) if len(self.step_seconds) > 1 else None

    @property
    def train_seconds(self) -> float:
        """Total wall seconds of the epochs run in this call."""
        return float(sum(self.epoch_seconds))

    @property
    def seconds_per_10_epochs(self) -> float:
        """Mean epoch time x 10 (study 04's timing unit)."""
        return float(10 * np.mean(self.epoch_seconds)) if self.epoch_seconds else float("nan")


def train(
    model_or_fn,
    train_ds,
    val_ds=None,
    *,
    rec: Recipe,
    run_dir: str | Path,
    epochs: int | None = None,
    monitor: str | None = None,
    class_weight: dict | None = None,
    strategy=None,
    jit_compile: bool | str = False,
    run_eagerly: bool = False,
    config: dict | None = None,
    verbose: int = 0,
    bn_images: np.ndarray | None = None,
) -> tuple[Any, TrainResult]:
    """Fit a model with the recipe, in a resumable run folder.

    Args:
        model_or_fn: an (uncompiled or compiled) Keras model, or a zero-argument function that
            builds one (required with a ``strategy``: variables must be created in its scope).
        train_ds: training ``tf.data.Dataset`` (already batched).
        val_ds: validation dataset or None (then monitor defaults to ``loss``).
        rec: the training recipe.
        run_dir: the run folder (created; an existing backup resumes the run; TensorBoard logs go
            into its ``tensorboard/``, appended on a resume, replaced on a fresh run).
        epochs: overrides ``rec.epochs`` (profiles).
        monitor: overrides ``rec.monitor``.
        class_weight: Keras class weights from the TRAINING split.
        strategy: a ``tf.distribute.Strategy`` or None (default strategy).
        jit_compile: XLA switch passed to ``compile``.
        run_eagerly: skip graph tracing (only worth it for a few tiny steps, e.g. the smoke profile).
        config: extra facts recorded in ``config.json`` (model name, data, seed...).
        verbose: Keras verbosity (0 in notebooks keeps reports clean).
        bn_images: training images (model inputs, no augmentation); with a ``val_ds``, one
            replica and 1 to ``MAX_RECALIBRATED_BN`` trainable BatchNorm layers,
            :class:`PreciseBatchNorm` recomputes the BatchNorm statistics on them before each
            validation pass (``config.json`` records ``precise_bn_images``: their number, or 0).

    Returns:
        ``(model, TrainResult)``; the model holds the best weights when a validation set is given.

    Raises:
        TrainingDivergedError: the loss became NaN/Inf (the backup is kept).
        ValueError: a monitor that will never be logged.
    """
    import keras

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    epochs = int(epochs if epochs is not None else rec.epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1. Received: epochs={epochs}")
    monitor = monitor or (rec.monitor if val_ds is not None else rec.monitor.removeprefix("val_"))

    if strategy is not None:
        if isinstance(model_or_fn, keras.Model):
            if getattr(model_or_fn, "_distribute_strategy", None) is not strategy:
                raise TypeError("with a strategy, pass a function that builds the model, or a model built in "
                                "strategy.scope() (variables must be created in the strategy's scope)")
            model = model_or_fn
        elif not callable(model_or_fn):
            raise TypeError("with a strategy, pass a function that builds the model (variables must be created in strategy.scope())")
        with strategy.scope():
            if not isinstance(model_or_fn, keras.Model):
                model = model_or_fn()
            compile_model(model, rec, jit_compile=jit_compile, run_eagerly=run_eagerly)
        _reduce_build_batch_per_element(model, strategy)
    else:
        model = model_or_fn() if (callable(model_or_fn) and not isinstance(model_or_fn, keras.Model)) else model_or_fn
        if not getattr(model, "compiled", False) or model.optimizer is None:
            compile_model(model, rec, jit_compile=jit_compile, run_eagerly=run_eagerly)
    check_monitor(monitor, model, validation=val_ds is not None)

    # eager forward passes outside the replica context: one replica only
    precise = (bn_images is not None and len(bn_images) > 0 and val_ds is not None and replicas(strategy) == 1
               and 0 < len(trainable_batchnorm(model)) <= MAX_RECALIBRATED_BN)
    cfg = {"recipe": asdict(rec), "epochs": epochs, "monitor": monitor, "class_weight": class_weight,
           "strategy": type(strategy).__name__ if strategy is not None else "default",
           "replicas": getattr(strategy, "num_replicas_in_sync", 1),
           "precise_bn_images": int(len(bn_images)) if precise else 0, **(config or {})}
    (run_dir / "config.json").write_text(json.dumps(cfg, indent=2, default=str) + "\n")

    if not (run_dir / "backup").exists():  # a fresh run (not a resume) starts a fresh history
        for stale in ("history.csv", "best.keras", "result.json"):
            (run_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)
    timer = EpochTimer()
    best_path = run_dir / "best.keras"
    mode = "max" if any(k in monitor for k in ("acc", "auc")) else "min"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), delete_checkpoint=True),
        timer,
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.TerminateOnNaN(raise_error=True),
        keras.callbacks.ModelCheckpoint(str(best_path), monitor=monitor, mode=mode, save_best_only=True),
        tensorboard_callback(run_dir / TENSORBOARD_DIR),
    ]
    if precise:
        callbacks.insert(0, PreciseBatchNorm(bn_images))
    early = None
    if rec.patience is not None:
        early = keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=rec.patience,
                                              restore_best_weights=True)
        callbacks.append(early)
    try:
        # tf.data pipelines that skip unreadable files have unknown cardinality: Keras then
        # warns at every epoch end that the input "ran out of data", which is expected here.
        with quiet(RAN_OUT_OF_DATA):
            hist = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks,
                             class_weight=class_weight, verbose=verbose, shuffle=False)
    except RuntimeError as exc:
        if "NaN or Inf loss" in str(exc):
            raise TrainingDivergedError(
                f"training diverged (NaN/Inf loss) in {run_dir}; the backup in {run_dir / 'backup'} is kept: {exc}"
            ) from exc
        raise
    if val_ds is not None and best_path.exists() and early is None:
        best = keras.models.load_model(best_path, safe_mode=True, compile=False)
        model.set_weights(best.get_weights())
    history = pd.read_csv(run_dir / "history.csv") if (run_dir / "history.csv").exists() else pd.DataFrame(hist.history)
    result = TrainResult(
        run_dir=run_dir,
        history=history,
        epoch_seconds=list(timer.seconds),
        best_model_path=best_path if best_path.exists() else None,
        epochs_run=len(timer.seconds),
        stopped_early=bool(early is not None and early.stopped_epoch > 0),
        recipe=asdict(rec),
        step_seconds=list(timer.step_seconds),
    )
    (run_dir / "result.json").write_text(json.dumps({
        "epochs_run": result.epochs_run, "epoch_seconds": result.epoch_seconds,
        "train_seconds": result.train_seconds, "stopped_early": result.stopped_early,
        "steps": len(result.step_seconds), "seconds_per_step": result.seconds_per_step,
        "best_model": str(result.best_model_path) if result.best_model_path else None,
    }, indent=2) + "\n")
    return model, result


# ----------------------------------------------------------------------------------------------
# Head-only training on cached backbone features (study 04, approach 2)
# ----------------------------------------------------------------------------------------------

MAX_RECALIBRATED_BN = 24
"""Models with more trainable BatchNormalization layers than this are not recalibrated
(:func:`recalibrate_batchnorm` runs one forward pass per layer): the keras.applications backbones
(34-121 layers, ImageNet statistics) are left as trained; every osteo_tf-built CNN with
BatchNorm (ResNet-18 20 layers, the multi-branch CNN 15, the small CNNs 3-5) is recalibrated."""


def recalibrate_batchnorm(model, images: np.ndarray, *, max_layers: int = MAX_RECALIBRATED_BN,
                          batch_size: int = 64) -> dict:
    """Set each trainable BatchNormalization layer's moving mean and variance to the statistics
    its input has at inference on ``images`` (training images, without augmentation).

    During training a BN layer normalizes with the batch's statistics and keeps a running
    average for inference; in a network trained from scratch for a few hundred steps that
    average lags weights that still move, and the layers after it see inputs shifted from what
    they learned on: measured on the quick profile's knee data, ``compact_cnn`` predicted one
    class on every validation image in inference mode (accuracy 0.43) where the same weights
    with batch statistics reached 0.75. Layer by layer in graph order, each layer gets the mean
    and (biased) variance of its input computed with the layers before it already recalibrated
    and in inference mode, i.e. what inference will feed it (the population statistics of
    "precise BN", Wu & Johnson 2021, computed layer-wise). Frozen BN layers are left alone.

    Args:
        model: a built functional Keras model.
        images: (N, H, W, C) model inputs, e.g. up to 512 training images.
        max_layers: skip models with more trainable BN layers (one forward pass per layer).
        batch_size: images per forward batch.

    Returns:
        ``{"recalibrated_layers": n, "images": N, "skipped": None or the reason}``.
    """
    import keras

    bns = trainable_batchnorm(model)
    out = {"recalibrated_layers": 0, "images": int(len(images)), "skipped": None}
    if not bns:
        out["skipped"] = "no trainable BatchNormalization layer"
        return out
    if len(bns) > max_layers:
        out["skipped"] = (f"{len(bns)} trainable BatchNormalization layers (> {max_layers}): "
                          "the running averages from training are kept")
        return out
    if len(images) == 0:
        out["skipped"] = "no training images"
        return out
    for bn in bns:
        try:
            probe = keras.Model(model.inputs, bn.input)
        except (AttributeError, ValueError) as exc:  # a layer used twice has no single input
            out["skipped"] = f"{bn.name}: {exc}"
            return out
        total = total_sq = None
        count = 0
        for start in range(0, len(images), batch_size):  # eager calls: no tf.function traced per layer
            x = np.asarray(probe(images[start:start + batch_size], training=False), np.float64)
            channel = bn.axis if bn.axis >= 0 else x.ndim + bn.axis
            x = np.moveaxis(x, channel, -1).reshape(-1, x.shape[channel])
            total = x.sum(axis=0) if total is None else total + x.sum(axis=0)
            total_sq = (x * x).sum(axis=0) if total_sq is None else total_sq + (x * x).sum(axis=0)
            count += x.shape[0]
        mean = total / count
        bn.moving_mean.assign(mean.astype(np.float32))
        bn.moving_variance.assign(np.maximum(total_sq / count - mean * mean, 0.0).astype(np.float32))
        out["recalibrated_layers"] += 1
    return out


def trainable_batchnorm(model) -> list:
    """The model's top-level trainable BatchNormalization layers."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


PRECISE_BN_IMAGES = 128
"""Training images per :class:`PreciseBatchNorm` recomputation (eager forward passes in training
mode before each validation, in :func:`precise_batchnorm`'s chunks)."""


PRECISE_BN_CHUNK_PIXELS = 2**20
"""Input pixels per forward chunk of :func:`precise_batchnorm` by default: 64 images up to
128 px, 20 at 224 px (a chunk's activations stay within what a training batch of 16 holds)."""


def precise_batchnorm(model, images: np.ndarray, *, batch_size: int | None = None,
                      max_layers: int = MAX_RECALIBRATED_BN) -> int:
    """Set each trainable BatchNormalization layer's moving mean and variance to the statistics
    of its input on ``images``, in one forward pass in training mode per chunk of ``batch_size``
    images (``None``: at most 64, and at most :data:`PRECISE_BN_CHUNK_PIXELS` input pixels).

    With momentum set to 0 for the pass, a layer's moving statistics after a chunk are that
    chunk's statistics; the chunks' statistics are averaged, weighted by their images ("precise
    BN", Wu & Johnson 2021, as in pycls). When ``images`` fit in one chunk this equals
    :func:`recalibrate_batchnorm` (each layer gets the statistics inference will feed it on those
    images) at the cost of one forward pass instead of one per layer. Dropout is
    switched off for the pass; momentum and dropout rates are restored. Frozen layers are left
    alone; models with more than ``max_layers`` trainable BatchNorm layers (the ImageNet
    backbones) are skipped, as by :func:`recalibrate_batchnorm`.

    Returns:
        The number of layers set (0: skipped or no images).
    """
    import keras

    bns = trainable_batchnorm(model)
    images = np.asarray(images, np.float32)
    if not bns or len(bns) > max_layers or len(images) == 0:
        return 0
    if batch_size is None:
        batch_size = max(1, min(64, PRECISE_BN_CHUNK_PIXELS // int(np.prod(images.shape[1:3]))))
    drops = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    momenta, rates = [bn.momentum for bn in bns], [d.rate for d in drops]
    means = [np.zeros(bn.moving_mean.shape, np.float64) for bn in bns]
    variances = [np.zeros(bn.moving_variance.shape, np.float64) for bn in bns]
    chunks = range(0, len(images), batch_size)
    try:
        for bn in bns:
            bn.momentum = 0.0
        for d in drops:
            d.rate = 0.0
        for start in chunks:
            chunk = images[start:start + batch_size]
            model(chunk, training=True)
            for i, bn in enumerate(bns):  # weighted by the chunk's images
                means[i] += len(chunk) * bn.moving_mean.numpy()
                variances[i] += len(chunk) * bn.moving_variance.numpy()
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        for d, r in zip(drops, rates):
            d.rate = r
    for bn, mean, var in zip(bns, means, variances):
        bn.moving_mean.assign((mean / len(images)).astype(np.float32))
        bn.moving_variance.assign((var / len(images)).astype(np.float32))
    return len(bns)


HEAD_INPUT_LAYER = "head_gap"


def split_head(model, *, head_input: str = HEAD_INPUT_LAYER):
    """Split a flat classifier at ``head_input`` into (feature extractor, head).

    The head model REUSES the classifier's own head layers, so training it trains ``model``.

    Raises:
        ValueError: if the model has no such layer or has layers after it that are not a
            simple chain.
    """
    import keras

    names = [layer.name for layer in model.layers]
    if head_input not in names and head_input == HEAD_INPUT_LAYER:
        # a head without pooling (AlexNet's and VGG16's paper heads keep fc6/fc7 or fc1/fc2): split
        # after the last backbone layer, before the new head's first layer
        first = next((n for n in names if n in ("head_dense", "head_dropout", "predictions")), None)
        if first is not None and names.index(first) > 0:
            head_input = names[names.index(first) - 1]
    if head_input not in names:
        raise ValueError(f"model has no layer {head_input!r} to split at. Layers end with: {names[-6:]}")
    cut = model.get_layer(head_input)
    features = keras.Model(model.inputs, cut.output, name=f"{model.name}_features")
    tail = model.layers[names.index(head_input) + 1 :]
    inp = keras.Input(shape=tuple(cut.output.shape[1:]), name="features")
    x = inp
    for layer in tail:
        x = layer(x)
    head = keras.Model(inp, x, name=f"{model.name}_head")
    return features, head


def extract_features(feature_model, ds) -> tuple[np.ndarray, np.ndarray]:
    """Run the frozen feature extractor once over a dataset (one traced graph): (features, labels)."""
    import tensorflow as tf

    forward = tf.function(feature_model.call, reduce_retracing=True)
    feats, labels = [], []
    for x, y in ds:
        feats.append(np.asarray(forward(x, training=False)))
        labels.append(np.asarray(y))
    return np.concatenate(feats), np.concatenate(labels)


def train_head_on_features(
    model,
    train_ds,
    val_ds=None,
    *,
    rec: Recipe,
    epochs: int | None = None,
    augmented_on_the_fly: bool = False,
    seed: int = 0,
    run_dir: str | Path | None = None,
    verbose: int = 0,
) -> dict:
    """Head-only training: backbone features computed ONCE, then the head trained on them.

    Equivalent to fitting the frozen model (the backbone is in inference mode either way) but
    the backbone's forward pass runs once instead of once per epoch.

    Args:
        model: a flat classifier from ``osteo_tf.models.build`` (its head layers are trained).
        train_ds, val_ds: batched datasets WITHOUT on-the-fly augmentation.
        rec: the recipe (optimizer, batch size, epochs).
        augmented_on_the_fly: must be False. Cached features cannot carry random augmentation:
            when the study augments on the fly, train the frozen model with :func:`train`.
        seed: shuffling seed for the feature batches.
        run_dir: the run folder (created) whose ``tensorboard/`` receives the head's TensorBoard
            logs (replacing earlier ones), as :func:`train` writes them; None writes no logs.
        verbose: Keras verbosity.

    Returns:
        dict with ``history`` (DataFrame), ``feature_seconds``, ``head_seconds``, ``epoch_seconds``.

    Raises:
        ValueError: if ``augmented_on_the_fly`` is True.
    """
    import tensorflow as tf

    if augmented_on_the_fly:
        raise ValueError(
            "head-only training on cached features cannot apply on-the-fly augmentation; "
            "augment offline (as study 04 did) or call train() with trainable='head'"
        )
    features, head = split_head(model)
    t0 = time.perf_counter()
    xtr, ytr = extract_features(features, train_ds)
    xva, yva = extract_features(features, val_ds) if val_ds is not None else (None, None)
    t_feat = time.perf_counter() - t0
    compile_model(head, rec)
    tr = tf.data.Dataset.from_tensor_slices((xtr, ytr)).shuffle(len(xtr), seed=seed).batch(rec.batch_size)
    va = tf.data.Dataset.from_tensor_slices((xva, yva)).batch(rec.batch_size) if xva is not None else None
    timer = EpochTimer()
    callbacks = [timer]
    if run_dir is not None:  # always a fresh fit: earlier logs of the folder are replaced
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        shutil.rmtree(Path(run_dir) / TENSORBOARD_DIR, ignore_errors=True)
        callbacks.append(tensorboard_callback(Path(run_dir) / TENSORBOARD_DIR))
    t1 = time.perf_counter()
    hist = head.fit(tr, validation_data=va, epochs=int(epochs or rec.epochs), callbacks=callbacks, verbose=verbose)
    t_head = time.perf_counter() - t1
    return {"history": pd.DataFrame(hist.history), "feature_seconds": t_feat, "head_seconds": t_head,
            "epoch_seconds": list(timer.seconds), "train_seconds": t_feat + t_head,
            "step_seconds": list(timer.step_seconds)}


# ----------------------------------------------------------------------------------------------
# Self-supervised in-domain pretraining (study 03, phase 1): rotation prediction
# ----------------------------------------------------------------------------------------------

SSL_OBJECTIVE = "rotation prediction (RotNet; Gidaris, Singh & Komodakis, ICLR 2018): predict 0/90/180/270 degrees"


def rotation_pretext(images: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Make the rotation pretext task from UNLABELED square images.

    Args:
        images: (N, H, H) or (N, H, H, C) array.

    Returns:
        ``(x, y)``: 4N rotated images (shuffled with ``seed``) and one-hot (4N, 4) targets.
    """
    images = np.asarray(images)
    if images.ndim < 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be (N, H, H[, C]) squares. Received: shape={images.shape}")
    xs = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    x = np.concatenate(xs)
    y = np.repeat(np.arange(4), len(images))
    order = np.random.default_rng(seed).permutation(len(x))
    return np.ascontiguousarray(x[order]), np.eye(4, dtype=np.float32)[y[order]]


def transfer_weights(source, target, *, skip: Sequence[str] = ("predictions",)) -> list[str]:
    """Copy weights layer by layer (matching names and shapes), skipping the classifier layer.

    Returns:
        The names of the layers whose weights were copied.

    Raises:
        ValueError: if nothing could be copied (the models do not share an architecture).
    """
    copied = []
    src = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        if layer.name in skip or layer.name not in src or not layer.weights:
            continue
        w = src[layer.name].get_weights()
        if [a.shape for a in w] == [b.shape for b in layer.get_weights()]:
            layer.set_weights(w)
            copied.append(layer.name)
    if not copied:
        raise ValueError("no layer weights matched by name and shape: are these the same architecture?")
    return copied


# ----------------------------------------------------------------------------------------------
# Precision, XLA, strategies
# ----------------------------------------------------------------------------------------------

def configure_precision(policy: str | None) -> str:
    """Set the global Keras dtype policy.

    Args:
        policy: None/"float32", "mixed_float16" (GPU), "mixed_bfloat16" (CPUs with bf16/AMX), or
            "auto" = mixed_float16 on a GPU, mixed_bfloat16 when the CPU advertises AMX/AVX512-BF16,
            float32 otherwise.

    Returns:
        The policy name in effect.
    """
    import keras
    import tensorflow as tf

    if policy in (None, "float32"):
        name = "float32"
    elif policy == "auto":
        if tf.config.list_physical_devices("GPU"):
            name = "mixed_float16"
        else:
            flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
            name = "mixed_bfloat16" if ("amx_bf16" in flags or "avx512_bf16" in flags) else "float32"
    elif policy in ("mixed_float16", "mixed_bfloat16"):
        name = policy
    else:
        raise ValueError(f"policy must be None, 'float32', 'mixed_float16', 'mixed_bfloat16' or 'auto'. Received: policy={policy!r}")
    keras.mixed_precision.set_global_policy(name)
    return name


def cpu_strategy(n_devices: int = 2):
    """A MirroredStrategy over ``n_devices`` logical CPUs (for tests and CPU-only machines).

    Must run before TensorFlow initialises its devices.
    """
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n_devices)
    except RuntimeError:
        pass  # already initialised: use whatever logical devices exist
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:n_devices]
    return tf.distribute.MirroredStrategy(devices)


def default_strategy():
    """MirroredStrategy over all GPUs when there are several, else the default strategy."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


STRATEGIES = ("auto", "none", "mirrored", "multiworker")
"""Names :func:`make_strategy` accepts (the ``strategy`` setting, ``osteo-tf run --strategy``)."""

BATCH_RULE = ("global batch = the recipe's (paper's) batch size per replica x replicas; learning rate x "
              "replicas (linear scaling rule, Goyal et al. 2017), so one replica trains exactly the paper's recipe")
"""How :func:`scale_recipe` adapts a recipe to several replicas (recorded in metrics.json ``runtime``)."""


def make_strategy(name: str = "auto"):
    """The ``tf.distribute`` strategy called ``name``, created once per process.

    Args:
        name: ``"auto"`` (MirroredStrategy when more than one GPU is visible, else none),
            ``"none"`` (the default strategy: one device), ``"mirrored"`` (MirroredStrategy over
            the visible GPUs, or the CPU without one) or ``"multiworker"``
            (MultiWorkerMirroredStrategy; the cluster and this worker's index come from the
            ``TF_CONFIG`` environment variable, which every worker sets before it starts).

    Returns:
        ``(strategy, kind)``: ``strategy`` is None for one device, ``kind`` the resolved name
        (``none``, ``mirrored`` or ``multiworker``). Create it before other TensorFlow work: a
        MultiWorkerMirroredStrategy must exist before the runtime starts.

    Raises:
        ValueError: an unknown name, or ``multiworker`` without a usable ``TF_CONFIG``.
    """
    import os

    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}. Received: strategy={name!r}")
    if name in _STRATEGIES:
        return _STRATEGIES[name]
    import tensorflow as tf

    if name == "multiworker":
        raw = os.environ.get("TF_CONFIG", "")
        try:
            cfg = json.loads(raw)
            workers = cfg["cluster"]["worker"]
            cfg["task"]["index"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                "strategy='multiworker' needs TF_CONFIG, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}. '
                f"Received: TF_CONFIG={raw!r}") from exc
        if not workers:
            raise ValueError(f"TF_CONFIG names no worker. Received: TF_CONFIG={raw!r}")
        made = (tf.distribute.MultiWorkerMirroredStrategy(), "multiworker")
        _patch_keras_multiworker_mean()
    elif name == "mirrored" or (name == "auto" and len(tf.config.list_physical_devices("GPU")) > 1):
        made = (tf.distribute.MirroredStrategy(), "mirrored")
    else:
        made = (None, "none")
    _STRATEGIES[name] = made
    return made


_STRATEGIES: dict[str, tuple] = {}


def _patch_keras_multiworker_mean() -> None:
    """Work around Keras 3.15 under MultiWorkerMirroredStrategy: each train/test step reduces its
    scalar logs (loss, metrics) with ``strategy.reduce("MEAN", v, axis=0)``, which fails on a
    0-d value ("Invalid reduction dimension 0 for input with 0 dimensions"). Scalars are reduced
    with ``axis=None`` (the mean over replicas, what Keras does for other strategies); everything
    else goes to Keras' own function. Applied once, when the strategy is made."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "_osteo_tf_patched", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and reduction in ("auto", "mean"):
            def one(v):
                local = v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v
                if tf.is_tensor(local) and local.shape.rank == 0:
                    return strategy.reduce("MEAN", v, axis=None)
                return original(v, strategy, reduction)
            return tf.nest.map_structure(one, values)
        return original(values, strategy, reduction)

    reduce_per_replica._osteo_tf_patched = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def replicas(strategy) -> int:
    """The replicas a strategy trains on in sync (1 for None)."""
    return int(getattr(strategy, "num_replicas_in_sync", 1)) if strategy is not None else 1


def scale_recipe(rec: Recipe, n_replicas: int) -> Recipe:
    """The recipe for ``n_replicas`` replicas (:data:`BATCH_RULE`): the batch size becomes the
    GLOBAL batch (per-replica batch x replicas) and the learning rate grows linearly with it;
    ``n_replicas=1`` returns ``rec`` unchanged."""
    from dataclasses import replace

    if n_replicas < 1:
        raise ValueError(f"n_replicas must be >= 1. Received: n_replicas={n_replicas!r}")
    if n_replicas == 1:
        return rec
    return replace(rec, batch_size=rec.batch_size * n_replicas, learning_rate=rec.learning_rate * n_replicas)


def strategy_scope(strategy):
    """``strategy.scope()``, or a no-op context for None."""
    import contextlib

    return strategy.scope() if strategy is not None else contextlib.nullcontext()


_FORWARD: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _forward(model_ref, channels: int, scale, x):
    import tensorflow as tf

    if channels != x.shape[-1]:
        x = tf.repeat(x, channels, axis=-1)
    if scale is not None:
        x = scale(x)
    return model_ref()(x, training=False)


def compiled_forward(model, *, grey_input: bool = False, scale=None):
    """The model's inference forward pass as ONE compiled ``tf.function`` that traces once.

    Its input signature is relaxed to any batch size (``(None, H, W, C)``, float32), so every
    batch, the last smaller one included, reuses the first trace: no retracing.  ``grey_input``:
    the function takes one grey channel and repeats it to the model's channel count inside the
    graph; ``scale`` (a tensor function, e.g. ``spec.preprocess``) is applied inside the graph.
    One function per (model, grey_input, scale), cached weakly on the model (it does not keep the
    model alive). It is built on a ``functools.partial`` bound to the model, so TensorFlow keeps
    its tracing statistics per model: its frequent-retracing detector keys on the Python
    function's code object, which one nested ``def`` would share between every model of a study
    (one first trace per model then counts as retracing).
    """
    import functools

    import tensorflow as tf

    per_model = _FORWARD.setdefault(model, {})
    key = (bool(grey_input), scale)
    fn = per_model.get(key)
    if fn is None:
        shape = tuple(model.inputs[0].shape)
        channels = int(shape[-1])
        spec = tf.TensorSpec((None, *shape[1:-1], 1 if grey_input else channels), tf.float32)
        fn = tf.function(functools.partial(_forward, weakref.ref(model), channels, scale), input_signature=[spec],
                         autograph=False)
        per_model[key] = fn
    return fn


def predict_proba(model, ds, *, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, C) for a dataset (``(x, y)`` or ``x`` batches) or an array of
    model-ready images; a single-sigmoid model becomes (N, 2).

    Runs the model's :func:`compiled_forward` (one trace per model, whatever the batch sizes),
    not Keras' ``predict``, whose predict step traces again for the last, smaller batch.
    Arrays are cut into batches of ``batch_size``.
    """
    import tensorflow as tf

    fn = compiled_forward(model)
    if isinstance(ds, np.ndarray):
        batches = (ds[i:i + batch_size] for i in range(0, len(ds), batch_size))
    else:
        batches = (b[0] if isinstance(b, (tuple, list)) else b for b in ds)
    out = [np.asarray(fn(tf.cast(x, tf.float32)), dtype=np.float64) for x in batches]
    p = np.concatenate(out, axis=0) if out else np.zeros((0, int(model.outputs[0].shape[-1])))
    if p.ndim == 2 and p.shape[1] == 1:
        p = np.concatenate([1 - p, p], axis=1)
    return p


def is_finite_history(history: pd.DataFrame) -> bool:
    """True when every logged value is finite."""
    vals = history.select_dtypes("number").to_numpy()
    return bool(np.all(np.isfinite(vals))) if vals.size else True


__all__ = [
    "Recipe", "make_optimizer", "compile_model", "check_monitor", "train", "TENSORBOARD_DIR", "tensorboard_callback",
    "TrainResult", "TrainingDivergedError", "split_head", "extract_features", "train_head_on_features",
    "SSL_OBJECTIVE", "rotation_pretext", "transfer_weights", "configure_precision", "cpu_strategy",
    "default_strategy", "STRATEGIES", "BATCH_RULE", "make_strategy", "replicas", "scale_recipe", "strategy_scope",
    "compiled_forward", "predict_proba", "is_finite_history",
]
