"""Head-only training (study 04, approach 2): fitting the frozen model vs training the head on
cached backbone features (``osteo-tf bench --only head-only-training``).

Both contenders start from the SAME initial weights (one model built with ``trainable="head"``,
its weights copied), see the SAME data (a few hundred small synthetic DXA images, offline data:
no on-the-fly augmentation) through the same ``osteo_tf.pipeline`` datasets and the same recipe
(study 04 approach 2: SGD lr 1e-4 momentum 0.9, batch 24, 20 epochs):

* baseline: ``model.fit`` of the frozen model for 20 epochs: the backbone's forward pass runs
  on every image at every epoch;
* ours: ``training.train_head_on_features``: the backbone runs once over train and validation,
  then the head (GAP -> dropout 0.4 -> softmax) is fitted on the cached features.

They are equivalent because a frozen backbone (BatchNorm in inference mode) is a fixed function
and the inputs are the same each epoch; only the batch order and dropout masks differ, so the
validation metrics agree within noise (``details`` shows both). Environment:
``OSTEO_TF_BENCH_HEAD_PATIENTS`` (default 300) and ``OSTEO_TF_BENCH_HEAD_SIZE`` (default 96).
"""

from __future__ import annotations

import os
import time

MODEL = "resnet18"
EPOCHS = 20


def _data(patients: int, size: int):
    from osteo_tf import experiments, splits
    from osteo_tf.config import cache_dir

    folder = experiments.synthetic_dataset("dxa", classes=2, patients=patients, size=128, seed=0,
                                           images_per_patient=1, root=cache_dir() / "bench" / "synthetic")
    from osteo_tf import datasets

    manifest = datasets.find_dataset(folder).manifest
    return splits.grouped_split(manifest, val=0.25, test=0.0, seed=0)


def bench_head_only_training() -> dict:
    import keras
    import numpy as np

    from dataclasses import replace

    from osteo_tf import models, pipeline, training
    from osteo_tf._warnings import RAN_OUT_OF_DATA, quiet
    from osteo_tf.workflows import study04

    patients = int(os.environ.get("OSTEO_TF_BENCH_HEAD_PATIENTS", "300"))
    size = int(os.environ.get("OSTEO_TF_BENCH_HEAD_SIZE", "96"))
    split = _data(patients, size)
    class_names = ["normal", "degraded"]
    rec = replace(study04.RECIPES["approach2"], epochs=EPOCHS)
    common = dict(class_names=class_names, image_size=size, batch_size=rec.batch_size)
    train_ds = pipeline.make_dataset(split[split["split"] == "train"], training=True, seed=0, **common)
    val_ds = pipeline.make_dataset(split[split["split"] == "val"], **common)
    for _ in train_ds:  # fill the tf.data caches so neither contender pays for decoding
        pass
    for _ in val_ds:
        pass

    keras.utils.set_random_seed(0)
    base = models.build(MODEL, input_shape=(size, size, 1), num_classes=2, dropout=0.4, trainable="head")
    ours = models.build(MODEL, input_shape=(size, size, 1), num_classes=2, dropout=0.4, trainable="head")
    ours.set_weights(base.get_weights())
    n_trainable = int(sum(np.prod(w.shape) for w in base.trainable_weights))

    training.compile_model(base, rec)
    t0 = time.perf_counter()
    with quiet(RAN_OUT_OF_DATA):
        hist = base.fit(train_ds, validation_data=val_ds, epochs=EPOCHS, verbose=0)
    baseline = time.perf_counter() - t0

    t0 = time.perf_counter()
    with quiet(RAN_OUT_OF_DATA):
        out = training.train_head_on_features(ours, train_ds, val_ds, rec=rec, epochs=EPOCHS, seed=0)
    ours_s = time.perf_counter() - t0

    frozen_same = all(np.array_equal(a, b) for a, b in zip(
        [w.numpy() for w in base.non_trainable_weights], [w.numpy() for w in ours.non_trainable_weights]))
    n_train = int((split["split"] == "train").sum())
    n_val = int((split["split"] == "val").sum())
    return {
        "baseline": baseline, "ours": ours_s, "unit": "s", "ratio": baseline / ours_s, "target": 10.0,
        "details": {
            "model": MODEL, "image_size": size, "epochs": EPOCHS, "batch_size": rec.batch_size,
            "train_images": n_train, "val_images": n_val, "trainable_params": n_trainable,
            "baseline_is": "model.fit of the frozen model (trainable='head') for 20 epochs over the images",
            "ours_is": "training.train_head_on_features: backbone once, then 20 epochs of the head on cached features",
            "ours_feature_seconds": round(out["feature_seconds"], 2), "ours_head_seconds": round(out["head_seconds"], 2),
            "baseline_val_accuracy": round(float(hist.history["val_accuracy"][-1]), 4),
            "ours_val_accuracy": round(float(out["history"]["val_accuracy"].iloc[-1]), 4),
            "baseline_val_loss": round(float(hist.history["val_loss"][-1]), 4),
            "ours_val_loss": round(float(out["history"]["val_loss"].iloc[-1]), 4),
            "baseline_val_auc": round(float(hist.history["val_auc"][-1]), 4),
            "ours_val_auc": round(float(out["history"]["val_auc"].iloc[-1]), 4),
            "frozen_backbone_weights_unchanged_and_equal": frozen_same,
            "note": "same initial weights and data; batch order and dropout masks differ, so metrics agree within noise",
        },
    }


BENCHMARKS = {"head-only-training": bench_head_only_training}

if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(bench_head_only_training(), indent=2, default=str))
