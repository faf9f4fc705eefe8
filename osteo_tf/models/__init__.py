"""Model registry and builders: keras.applications backbones, classic nets Keras lacks (AlexNet,
GoogLeNet, SqueezeNet, ResNet-18) and the studies' own CNNs.

    >>> from osteo_tf import models
    >>> models.names()[:3]
    ['resnet50', 'inceptionv3', 'mobilenetv2']
    >>> model = models.build("resnet18", input_shape=(64, 64, 3), num_classes=2)  # doctest: +SKIP
    >>> models.get_spec("resnet18").last_conv
    'conv5_block2_out'

Every classifier is one flat functional graph (no nested backbone), every layer deterministically
named. ``get_spec(name).preprocess`` maps [0, 1] images to what the model expects; it belongs in
the tf.data pipeline, not in the model. ``build_info(model)`` is what a run records (weights
actually used, parameter counts).
"""

# Import order = registry order: keras.applications backbones, classic nets, studies' CNNs.
from osteo_tf.models import applications, classic  # noqa: F401  (register on import)
from osteo_tf.models.registry import (
    HEAD_KINDS,
    KERAS_WEIGHTS_DIR,
    SCALINGS,
    ModelSpec,
    PaperCount,
    WeightsUnavailableError,
    backbone_layers,
    build,
    build_info,
    expected_weights_file,
    get_spec,
    head_layers,
    info_dict,
    names,
    param_table,
    scale_images,
    set_trainable,
)
from osteo_tf.models.studies import STUDY04_HYPERPARAMS, STUDY04_MODELS, study04_tunable

__all__ = [
    "HEAD_KINDS",
    "KERAS_WEIGHTS_DIR",
    "SCALINGS",
    "ModelSpec",
    "PaperCount",
    "STUDY04_HYPERPARAMS",
    "STUDY04_MODELS",
    "WeightsUnavailableError",
    "backbone_layers",
    "build",
    "build_info",
    "expected_weights_file",
    "get_spec",
    "head_layers",
    "info_dict",
    "names",
    "param_table",
    "scale_images",
    "set_trainable",
    "study04_tunable",
]
