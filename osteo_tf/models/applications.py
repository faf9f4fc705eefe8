"""keras.applications backbones (ImageNet weights available through Keras).

Each backbone is called with ``include_top=False`` on the tensor ``osteo_tf.models.build`` gives
it (``input_tensor=``: the model's grey input after its in-graph channel repeat and scaling) and
its output feeds our head directly, so the classifier is one flat graph. ``weights="imagenet"`` is
the real path: a file already in ``~/.keras/models`` (``$KERAS_HOME/models``) is loaded from there
(:func:`local_weights_file`), otherwise Keras downloads it when it can; :func:`osteo_tf.models.build` turns
the offline failure into ``WeightsUnavailableError`` naming the file to place
(:func:`weights_file_name`, :func:`missing_weights_message`). ``SPECS`` lists the backbones, in
registry order.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from osteo_tf.models.spec import Built, ModelSpec, PaperCount, softmax_head

KERAS_WEIGHTS_DIR = "~/.keras/models"
"""Where Keras looks for (and caches) downloaded weight files."""

_STUDY01 = "study 01 Table 1 (ImageNet model with its 1000-class top)"
_MOBILENET_V2_ROWS = (96, 128, 160, 192, 224)


def weights_file_name(name: str, input_shape: tuple[int, ...], head: str) -> str:
    """The file Keras expects in ``~/.keras/models`` for ``weights="imagenet"``.

    Args:
        name: a keras.applications registry name.
        input_shape: (H, W, C) (MobileNetV2's file depends on the input size).
        head: ``"paper"`` for VGG16 needs the file WITH the top (fc1, fc2).
    """
    if name == "mobilenetv2":
        rows = input_shape[0] if input_shape[0] in _MOBILENET_V2_ROWS else 224
        return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
    if name in ("mobilenetv3small", "mobilenetv3large"):
        kind = name.removeprefix("mobilenetv3")
        return f"weights_mobilenet_v3_{kind}_224_1.0_float_no_top_v2.h5"
    if name == "vgg16" and head == "paper":
        return "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    return {
        "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "inceptionv3": "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "efficientnetb0": "efficientnetb0_notop.h5",
        "densenet121": "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "xception": "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
    }[name]


def keras_models_dir() -> Path:
    """The folder Keras keeps downloaded weight files in: ``$KERAS_HOME/models`` when the
    ``KERAS_HOME`` environment variable is set, else ``~/.keras/models``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def local_weights_file(name: str, input_shape: tuple[int, ...], head: str) -> Path | None:
    """The ImageNet weights file of backbone ``name`` when it is already in :func:`keras_models_dir`.

    :func:`osteo_tf.models.build` passes this path to ``keras.applications`` instead of
    ``"imagenet"``: ``keras.utils.get_file`` would check the file against the hash of Keras' own
    download and fetch it again when they differ (impossible offline).
    """
    path = keras_models_dir() / weights_file_name(name, input_shape, head)
    return path if path.is_file() else None


def is_download_failure(err: BaseException) -> bool:
    """Whether ``err`` is Keras failing to fetch a weights file (offline, or a corrupted file).

    ``keras.utils.get_file`` raises a bare ``Exception("URL fetch failure on ...")`` offline.
    """
    text = str(err)
    return type(err) is Exception or isinstance(err, OSError) or "fetch failure" in text or "corrupted" in text


def missing_weights_message(name: str, input_shape: tuple[int, ...], head: str, err: Any) -> str:
    """What to do when the ImageNet weights of backbone ``name`` could not be loaded."""
    fname = weights_file_name(name, input_shape, head)
    return (
        f"ImageNet weights for {name} could not be loaded ({err}). On a machine with network "
        "access Keras downloads and caches them; offline, copy the file "
        f"{fname!r} into {KERAS_WEIGHTS_DIR} (i.e. {keras_models_dir()}; $KERAS_HOME/models when KERAS_HOME is set) and "
        "build again, or pass allow_random_init=True to train from random weights (the run "
        "then records weights='random (imagenet unavailable)')."
    )


def _build_backbone(
    constructor: str,
    extra: dict[str, Any] | None = None,
    rename_last: str | None = None,
    paper_dense_units: int | None = None,
    /,
    *,
    inputs: Any,
    input_shape: tuple[int, int, int],
    num_classes: int,
    weights: str | None = None,
    head: str = "softmax",
    dropout: float | None = None,
    dense_units: int | None = None,
) -> Built:
    """One keras.applications backbone (``keras.applications.<constructor>``) + the softmax head.

    The positional arguments configure the variant (bound by ``functools.partial`` in ``SPECS``):
    constructor keyword arguments ``extra``, a new name for the last layer (``rename_last``) and
    the hidden Dense units of ``head="paper"`` (``paper_dense_units``; ``None`` = the plain head).
    """
    import keras

    base = getattr(keras.applications, constructor)(
        include_top=False, weights=weights, input_shape=input_shape, input_tensor=inputs, **(extra or {})
    )
    if rename_last is not None:
        base.layers[-1].name = rename_last
    units = dense_units
    if head == "paper" and units is None:
        units = paper_dense_units
    outputs, head_names = softmax_head(base.output, num_classes=num_classes, dropout=dropout, dense_units=units)
    return Built(inputs, outputs, head_names)


def build_vgg16(
    *,
    inputs: Any,
    input_shape: tuple[int, int, int],
    num_classes: int,
    weights: str | None = None,
    head: str = "paper",
    dropout: float | None = None,
    dense_units: int | None = None,
) -> Built:
    """VGG16; ``head="paper"`` keeps fc1/fc2 (4096 each) and replaces only the 1000-way layer."""
    import keras

    if head != "paper":
        return _build_backbone(
            "VGG16", inputs=inputs, input_shape=input_shape, num_classes=num_classes, weights=weights, head=head,
            dropout=dropout, dense_units=dense_units,
        )
    if weights is not None and tuple(input_shape) != (224, 224, 3):  # "imagenet" or its file
        raise ValueError(
            "vgg16 with head='paper' and ImageNet weights keeps the pretrained fc1/fc2 layers, "
            "which only fit input_shape=(224, 224, 3); use head='softmax' for other sizes. "
            f"Received: input_shape={tuple(input_shape)!r}"
        )
    if dense_units is not None:
        raise ValueError(
            "vgg16 head='paper' already has its fc1/fc2 layers; dense_units applies to "
            f"head='softmax'. Received: dense_units={dense_units!r}"
        )
    base = keras.applications.VGG16(include_top=True, weights=weights, input_shape=input_shape, input_tensor=inputs)
    outputs, head_names = softmax_head(
        base.get_layer("fc2").output, num_classes=num_classes, dropout=dropout, pool=False
    )
    return Built(inputs, outputs, head_names)


_COMMON = dict(family="keras.applications", heads=("softmax", "paper"), imagenet=True)

SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="resnet50",
        description="ResNet50 (keras.applications); studies 01, 02, 03",
        paper_input_size=224,
        min_input_size=32,
        default_head="softmax",
        last_conv="conv5_block3_out",
        input_scaling="caffe",
        builder=functools.partial(_build_backbone, "ResNet50"),
        paper_params=(PaperCount(25_636_712, _STUDY01, num_classes=1000, counts="total"),),
        **_COMMON,
    ),
    ModelSpec(
        name="inceptionv3",
        description="InceptionV3 (keras.applications); study 01",
        paper_input_size=299,
        min_input_size=75,
        default_head="softmax",
        last_conv="mixed10",
        input_scaling="tf",
        builder=functools.partial(_build_backbone, "InceptionV3"),
        paper_params=(PaperCount(23_851_784, _STUDY01, num_classes=1000, counts="total"),),
        **_COMMON,
    ),
    ModelSpec(
        name="mobilenetv2",
        description="MobileNetV2 alpha 1.0 (keras.applications); study 01",
        paper_input_size=224,
        min_input_size=32,
        default_head="softmax",
        last_conv="out_relu",
        input_scaling="tf",
        builder=functools.partial(_build_backbone, "MobileNetV2"),
        paper_params=(PaperCount(3_538_984, _STUDY01, num_classes=1000, counts="total"),),
        **_COMMON,
    ),
    *(
        ModelSpec(
            name=f"mobilenetv3{kind}",
            description=(
                f"MobileNetV3-{kind.capitalize()} (keras.applications, built-in rescaling off); "
                "study 05 (head='paper': GAP -> Dense 1024 relu -> softmax)"
            ),
            paper_input_size=224,
            min_input_size=32,
            default_head="softmax",
            last_conv="conv_1_hard_swish",
            input_scaling="tf",
            builder=functools.partial(
                _build_backbone, constructor, {"include_preprocessing": False}, "conv_1_hard_swish", 1024
            ),
            notes="Study 05 does not say Small or Large; both are registered.",
            **_COMMON,
        )
        for kind, constructor in (("small", "MobileNetV3Small"), ("large", "MobileNetV3Large"))
    ),
    ModelSpec(
        name="efficientnetb0",
        description="EfficientNetB0 (keras.applications, normalises inside: feed [0, 255]); study 05",
        paper_input_size=224,
        min_input_size=32,
        default_head="softmax",
        last_conv="top_activation",
        input_scaling="[0,255]",
        builder=functools.partial(_build_backbone, "EfficientNetB0", None, None, 1024),
        **_COMMON,
    ),
    ModelSpec(
        name="densenet121",
        description="DenseNet-121 (keras.applications); study 04",
        paper_input_size=224,
        min_input_size=32,
        default_head="softmax",
        last_conv="relu",
        input_scaling="torch",
        builder=functools.partial(_build_backbone, "DenseNet121"),
        **_COMMON,
    ),
    ModelSpec(
        name="vgg16",
        description="VGG16 (keras.applications); studies 03, 04 (head='paper' keeps fc1/fc2)",
        paper_input_size=224,
        min_input_size=32,
        default_head="paper",
        last_conv="block5_conv3",
        input_scaling="caffe",
        builder=build_vgg16,
        paper_params=(
            PaperCount(1.343e8, "study 04 text, approach 1 (all layers retrained)", head="paper"),
            PaperCount(8.194e3, "study 04 text, approach 2 (new layer only)", trainable="head", head="paper"),
        ),
        **_COMMON,
    ),
    ModelSpec(
        name="xception",
        description="Xception (keras.applications); study 03",
        paper_input_size=299,
        min_input_size=71,
        default_head="softmax",
        last_conv="block14_sepconv2_act",
        input_scaling="tf",
        builder=functools.partial(_build_backbone, "Xception"),
        **_COMMON,
    ),
)
"""The keras.applications backbones, in registry order."""
