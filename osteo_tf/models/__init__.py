"""Model registry and builders: keras.applications backbones, classic nets Keras lacks (AlexNet,
GoogLeNet, SqueezeNet, ResNet-18) and the studies' own CNNs.

    >>> from osteo_tf import models
    >>> models.names()[:3]
    ['resnet50', 'inceptionv3', 'mobilenetv2']
    >>> model = models.build("resnet18", input_shape=(64, 64, 1), num_classes=2)  # doctest: +SKIP
    >>> models.get_spec("resnet18").last_conv
    'conv5_block2_out'

Every classifier is one flat functional graph (no nested backbone), every layer deterministically
named. Every model takes one grey channel in [0, 1], shape (H, W, 1): its first layers repeat the
channel and apply the backbone's own scaling (``spec.input_steps`` says what they do), so the
pipeline feeds grey images and nothing outside the model scales them. ``build_info(model)`` is what a run records (weights
actually used, parameter counts). ``set_random_init_batchnorm(model)`` is the BatchNorm rule for
models trained from random initialisation.

Modules import one way: ``spec`` (``ModelSpec``, heads, input scaling, the BatchNorm rule) is the
leaf; ``applications``, ``classic`` and ``studies`` import only ``spec`` and export their specs as
the data tuple ``SPECS``; ``registry`` assembles them (backbones, classic, studies) and builds.
"""

from osteo_tf.models.applications import KERAS_WEIGHTS_DIR, keras_models_dir
from osteo_tf.models.registry import (
    SPECS,
    backbone_layers,
    build,
    build_info,
    expected_weights_file,
    get_spec,
    head_layers,
    info_dict,
    local_weights_file,
    names,
    param_table,
    set_trainable,
)
from osteo_tf.models.spec import (
    HEAD_KINDS,
    RANDOM_INIT_BN_MOMENTUM,
    SCALINGS,
    ModelSpec,
    PaperCount,
    WeightsUnavailableError,
    grey_to_trunk,
    input_steps,
    scale_images,
    scaling_affine,
    set_random_init_batchnorm,
)
from osteo_tf.models.studies import STUDY04_MODELS, study04_tunable

__all__ = [
    "HEAD_KINDS",
    "KERAS_WEIGHTS_DIR",
    "RANDOM_INIT_BN_MOMENTUM",
    "SCALINGS",
    "SPECS",
    "ModelSpec",
    "PaperCount",
    "STUDY04_MODELS",
    "WeightsUnavailableError",
    "backbone_layers",
    "build",
    "build_info",
    "expected_weights_file",
    "get_spec",
    "head_layers",
    "info_dict",
    "keras_models_dir",
    "local_weights_file",
    "names",
    "param_table",
    "grey_to_trunk",
    "input_steps",
    "scale_images",
    "scaling_affine",
    "set_random_init_batchnorm",
    "set_trainable",
    "study04_tunable",
]
