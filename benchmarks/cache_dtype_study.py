"""Which element type should ``pipeline.make_dataset`` cache grey images in? (issue 17)

Run: ``python benchmarks/cache_dtype_study.py`` (prints a JSON list, one row per dtype). For each
of float32, float16, uint16 and uint8 it measures

* the round-trip error against float32 on 1,000 benchmark PNGs at 224 px (max and mean |err|);
* the cached-epoch throughput of the evaluation pipeline on them (second pass) and the bytes
  of its file cache;
* the test accuracy and AUC of compact_cnn trained from the same seed for 8 epochs on a
  synthetic calcaneus set (64 px, patient-grouped split) with that cache.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

DTYPES = ("float32", "float16", "uint16", "uint8")


def _throughput(manifest, dtype: str, tmp: Path) -> dict:
    from osteo_tf import pipeline

    ds = pipeline.make_dataset(manifest, class_names=["normal", "osteoporosis"], image_size=224, batch_size=32,
                               cache=str(tmp / f"{dtype}.cache"), cache_dtype=dtype)
    x = np.concatenate([b.numpy() for b, _ in ds])  # fills the cache
    t0 = time.perf_counter()
    for _ in ds:
        pass
    dt = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in tmp.glob(f"{dtype}.cache*"))
    return {"x": x, "cached_images_per_s": round(len(manifest) / dt, 1), "cache_file_bytes": size}


def _train(dtype: str, data: Path) -> dict:
    import keras

    from osteo_tf import datasets, evaluation, models, pipeline, splits, training
    from osteo_tf.config import seed_everything

    seed_everything(0)
    manifest = datasets.find_dataset(data).manifest
    split = splits.grouped_split(manifest, val=0.15, test=0.25, seed=0)
    parts = splits.parts(split)
    classes = ["normal", "osteoporosis"]
    common = dict(class_names=classes, image_size=64, batch_size=16, cache_dtype=dtype,
                  steps=[("standardize", {})])
    tr = pipeline.make_dataset(parts["train"], training=True, seed=0, **common)
    te = pipeline.make_dataset(parts["test"], **common)
    model = models.build("compact_cnn", input_shape=(64, 64, 1), num_classes=2)
    models.set_random_init_batchnorm(model)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    model.fit(tr, epochs=8, verbose=0)
    p = training.predict_proba(model, te)
    y = pipeline.encode_labels(parts["test"]["label"].tolist(), classes, label_mode="int")
    m = evaluation.classification_metrics(y, p, class_names=classes)
    return {"test_accuracy": round(m["accuracy"], 4), "test_auc": round(m["auc"], 4), "n_test": int(len(y))}


def main() -> None:
    from osteo_tf import datasets, synthetic
    from osteo_tf.config import cache_dir

    from _data import png_folder, warm_page_cache

    folder = png_folder(2000, 256, cache_dir() / "bench")
    warm_page_cache(folder)
    manifest = datasets.find_dataset(folder).manifest
    manifest = manifest.groupby("label", group_keys=False).head(500)
    tmp = Path(tempfile.mkdtemp(prefix="osteo-tf-dtype-"))
    data = tmp / "calcaneus"
    synthetic.write_dataset(data, mode="calcaneus", classes=2, patients=120, preset="default", size=64, seed=0)
    rows, exact = [], None
    try:
        for dtype in DTYPES:
            t = _throughput(manifest, dtype, tmp)
            x = t.pop("x")
            exact = x if exact is None else exact
            err = np.abs(x - exact)
            rows.append({"dtype": dtype, "max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()),
                         **t, **_train(dtype, data)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
