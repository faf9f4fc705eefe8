"""LIME throughput: lime's defaults vs ``osteo_tf.explain.lime_explain`` (``osteo-tf bench``).

Both explain the same 224 x 224 grey image with the same model (MobileNetV3-Small, study 05's model, ``weights=None``,
2 classes), the same segmentation (``explain.DEFAULT_SEGMENTATION``), the same seed and the SAME
number of samples:

* baseline: stock ``lime.lime_image.LimeImageExplainer(random_state=0).explain_instance`` with
  its default ``batch_size=10`` and the usual ``classifier_fn = model.predict`` (after the
  model's input scaling); its tqdm bar is discarded;
* ours: ``explain.lime_explain`` (batches of 256 through one compiled ``tf.function``, vectorized
  perturbations, no progress bar).

``details`` also times stock lime at batch 10 with our compiled predictor, which separates the
gain of batching from the gain of skipping ``model.predict``'s per-call overhead.

Run: ``osteo-tf bench --only lime-batched`` or ``python benchmarks/bench_lime.py``.
Environment: ``OSTEO_TF_BENCH_LIME_SAMPLES`` (default 1000) to shorten a run.
"""

from __future__ import annotations

import contextlib
import io
import os
import time

import numpy as np

IMAGE_SIZE = 224
MODEL = "mobilenetv3small"  # study 05 explains MobileNetV3 and EfficientNetB0
BATCH_OURS = 256
BATCH_LIME_DEFAULT = 10


def _image(size: int = IMAGE_SIZE) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size
    img = 0.5 + 0.25 * np.sin(9 * xx) * np.cos(7 * yy) + 0.05 * rng.standard_normal((size, size))
    return np.clip(img, 0.0, 1.0)


def bench_lime_batched() -> dict:
    import keras
    from lime.lime_image import LimeImageExplainer

    from osteo_tf import explain, models

    samples = int(os.environ.get("OSTEO_TF_BENCH_LIME_SAMPLES", "1000"))
    keras.utils.set_random_seed(0)
    model = models.build(MODEL, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 1), num_classes=2)
    image = _image()
    rgb = np.repeat(image[..., None], 3, axis=-1)
    seg = explain.make_segmentation_fn(explain.DEFAULT_SEGMENTATION)
    predictor = explain.ModelPredictor(model, batch_size=BATCH_OURS)

    def keras_predict(batch: np.ndarray) -> np.ndarray:  # what a lime tutorial passes (grey model: 1 channel)
        return model.predict(batch[..., :1].astype(np.float32), verbose=0)

    def stock(classifier_fn) -> float:
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # lime's unconditional tqdm bar
            LimeImageExplainer(random_state=0).explain_instance(
                rgb, classifier_fn, top_labels=1, num_samples=samples,
                batch_size=BATCH_LIME_DEFAULT, segmentation_fn=seg)
        return time.perf_counter() - t0

    def ours() -> float:
        t0 = time.perf_counter()
        explain.lime_explain(predictor, image, num_samples=samples, batch_size=BATCH_OURS, seed=0)
        return time.perf_counter() - t0

    # warm-up: trace the compiled functions of both paths once (not timed)
    keras_predict(rgb[None].repeat(BATCH_LIME_DEFAULT, axis=0))
    predictor(rgb[None].repeat(BATCH_OURS, axis=0))
    predictor(rgb[None].repeat(BATCH_LIME_DEFAULT, axis=0))
    baseline = stock(keras_predict)
    ours_s = ours()
    stock_compiled = stock(predictor)
    return {
        "baseline": baseline,
        "ours": ours_s,
        "unit": "s/image",
        "ratio": baseline / ours_s,
        "target": 3.0,
        "details": {
            "model": MODEL,
            "image_size": IMAGE_SIZE,
            "num_samples": samples,
            "baseline": f"stock lime, batch_size={BATCH_LIME_DEFAULT}, classifier_fn=model.predict",
            "ours": f"explain.lime_explain, batch_size={BATCH_OURS}, compiled tf.function",
            "stock_lime_batch10_compiled_predictor_s": stock_compiled,
            "ratio_vs_stock_with_compiled_predictor": stock_compiled / ours_s,
            "lime_seconds_per_image_224px": ours_s,
            "cpu_count": os.cpu_count(),
        },
    }


BENCHMARKS = {"lime-batched": bench_lime_batched}


if __name__ == "__main__":
    import json

    print(json.dumps(bench_lime_batched(), indent=2))
