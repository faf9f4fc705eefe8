"""Explanations of trained classifiers: Grad-CAM, LIME, their sanity checks, LIME-masked datasets.

    >>> from osteo_tf import explain
    >>> maps = explain.gradcam(model, x)  # doctest: +SKIP
    >>> res = explain.lime_explain(model, grey, num_samples=1000, seed=0)  # doctest: +SKIP

Modules, one concept each:

* :mod:`~osteo_tf.explain.gradcam`: Grad-CAM / Grad-CAM++ through tf-keras-vis (on a clone of
  the model), with a pure-TensorFlow fallback;
* :mod:`~osteo_tf.explain.lime`: LIME on grey radiographs, batched, seeded and silent;
* :mod:`~osteo_tf.explain.checks`: the pointing game and the model-parameter randomization test;
* :mod:`~osteo_tf.explain.masking`: LIME-masked datasets and the out-of-fold assignment of the
  models that mask them (study 05, the leakage audit).

Overlays of maps and masks on the radiograph are figures: see ``osteo_tf.plots``. Saving,
loading and predicting with trained models: ``osteo_tf.inference``.
"""

from osteo_tf.explain.checks import kernel_layers, parse_bbox, pointing_game, randomization_check
from osteo_tf.explain.gradcam import (
    CAM_BACKENDS,
    CAM_METHODS,
    CamExplainer,
    CamResult,
    gradcam,
    gradcam_result,
    last_conv_layer,
    normalize_maps,
)
from osteo_tf.explain.lime import (
    DEFAULT_SEGMENTATION,
    QUICKSHIFT_DEFAULTS,
    SEGMENTATIONS,
    LimeResult,
    ModelPredictor,
    lime_explain,
    make_segmentation_fn,
)
from osteo_tf.explain.masking import (
    FOLD_MODEL,
    SPLIT_MODEL,
    MaskAssignment,
    kfold_model_for,
    lime_masked_dataset,
    mask_assignment,
    pool_folds,
    source_split,
)

__all__ = [
    "CAM_BACKENDS",
    "CAM_METHODS",
    "DEFAULT_SEGMENTATION",
    "FOLD_MODEL",
    "QUICKSHIFT_DEFAULTS",
    "SEGMENTATIONS",
    "SPLIT_MODEL",
    "CamExplainer",
    "CamResult",
    "LimeResult",
    "MaskAssignment",
    "ModelPredictor",
    "gradcam",
    "gradcam_result",
    "kernel_layers",
    "kfold_model_for",
    "last_conv_layer",
    "lime_explain",
    "lime_masked_dataset",
    "make_segmentation_fn",
    "mask_assignment",
    "normalize_maps",
    "parse_bbox",
    "pointing_game",
    "pool_folds",
    "randomization_check",
    "source_split",
]
