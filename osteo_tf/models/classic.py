"""Classic ImageNet architectures that keras.applications lacks: AlexNet, GoogLeNet, SqueezeNet,
ResNet-18.

Keras has no ImageNet weights for them, so ``weights="imagenet"`` raises
``WeightsUnavailableError`` (or, with ``allow_random_init=True``, builds randomly initialised);
weights converted elsewhere load from a ``.weights.h5`` path by layer name. Layouts follow the
reference implementations the studies used (torchvision / the original papers), so parameter
counts can be checked against the papers (``osteo_tf.models.param_table``). The trunk is the
"backbone"; the head is the standard new head, or the architecture's own classifier with its last
layer replaced (``head="paper"``). ``SPECS`` lists them, in registry order.
"""

from __future__ import annotations

from typing import Any

from osteo_tf.models.spec import Built, ModelSpec, PaperCount, softmax_head

_STUDY01 = "study 01 Table 1 (ImageNet model with its 1000-class top)"
_STUDY04_A2 = "study 04 text, approach 2 (new layer only)"


# ----------------------------------------------------------------------------------------------
# AlexNet

ALEXNET_FILTERS = (64, 192, 384, 256, 256)
ALEXNET_FC_UNITS = 4096
ALEXNET_DROPOUT = 0.5


def build_alexnet(
    *,
    inputs: Any,
    input_shape: tuple[int, int, int],
    num_classes: int,
    head: str = "paper",
    dropout: float | None = None,
    dense_units: int | None = None,
) -> Built:
    """AlexNet, torchvision's single-tower, BN-free layout (64-192-384-256-256 filters).

    ``head="paper"``: pool5 -> flatten -> dropout -> fc6 -> dropout -> fc7 (the backbone, as
    pretrained) -> [head_dropout] -> predictions (the replaced fc8, as studies 01 and 04 did).
    ``head="softmax"``: pool5 -> the standard GAP head (fc6/fc7 dropped).
    torchvision's adaptive 6x6 average pool is the identity at 224-227 px and is omitted, so
    fc6's size follows the input size. Minimum input 63 px (pool5 must stay >= 1 px).
    """
    from keras import layers

    if head == "paper" and dense_units is not None:
        raise ValueError(
            "alexnet head='paper' already has fc6/fc7; dense_units applies to head='softmax'. "
            f"Received: dense_units={dense_units!r}"
        )
    f1, f2, f3, f4, f5 = ALEXNET_FILTERS
    x = layers.ZeroPadding2D(2, name="conv1_pad")(inputs)
    x = layers.Conv2D(f1, 11, strides=4, activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = layers.Conv2D(f2, 5, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = layers.Conv2D(f3, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(f4, 3, padding="same", activation="relu", name="conv4")(x)
    x = layers.Conv2D(f5, 3, padding="same", activation="relu", name="conv5")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool5")(x)
    if head == "softmax":
        outputs, head_names = softmax_head(x, num_classes=num_classes, dropout=dropout, dense_units=dense_units)
        return Built(inputs, outputs, head_names)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(ALEXNET_DROPOUT, name="fc6_dropout")(x)
    x = layers.Dense(ALEXNET_FC_UNITS, activation="relu", name="fc6")(x)
    x = layers.Dropout(ALEXNET_DROPOUT, name="fc7_dropout")(x)
    x = layers.Dense(ALEXNET_FC_UNITS, activation="relu", name="fc7")(x)
    outputs, head_names = softmax_head(x, num_classes=num_classes, dropout=dropout, pool=False)
    return Built(inputs, outputs, head_names)


# ----------------------------------------------------------------------------------------------
# GoogLeNet (Inception v1)

# (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj), Szegedy et al. 2015, Table 1
GOOGLENET_INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
GOOGLENET_DROPOUT = 0.4


def _conv_relu(x: Any, filters: int, kernel: int, name: str, strides: int = 1) -> Any:
    from keras import layers

    return layers.Conv2D(filters, kernel, strides=strides, padding="same", activation="relu", name=name)(x)


def _inception(x: Any, cfg: tuple[int, ...], name: str) -> Any:
    from keras import layers

    c1, r3, c3, r5, c5, pp = cfg
    b1 = _conv_relu(x, c1, 1, f"{name}_1x1")
    b3 = _conv_relu(_conv_relu(x, r3, 1, f"{name}_3x3_reduce"), c3, 3, f"{name}_3x3")
    b5 = _conv_relu(_conv_relu(x, r5, 1, f"{name}_5x5_reduce"), c5, 5, f"{name}_5x5")
    bp = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    bp = _conv_relu(bp, pp, 1, f"{name}_pool_proj")
    return layers.Concatenate(name=f"{name}_output")([b1, b3, b5, bp])


def build_googlenet(
    *,
    inputs: Any,
    input_shape: tuple[int, int, int],
    num_classes: int,
    head: str = "softmax",
    dropout: float | None = None,
    dense_units: int | None = None,
) -> Built:
    """GoogLeNet / Inception v1 as in the paper (true 5x5 branches, no BatchNorm, no auxiliary
    heads; the LRN layers are omitted: they have no parameters and Keras has no layer for them).

    The paper head is GAP -> dropout 0.4 -> FC, i.e. the softmax head with ``dropout=0.4``
    (used when ``head="paper"`` and ``dropout`` is None).
    """
    from keras import layers

    x = _conv_relu(inputs, 64, 7, "conv1_7x7_s2", strides=2)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_3x3_s2")(x)
    x = _conv_relu(x, 64, 1, "conv2_3x3_reduce")
    x = _conv_relu(x, 192, 3, "conv2_3x3")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool2_3x3_s2")(x)
    for key in ("3a", "3b"):
        x = _inception(x, GOOGLENET_INCEPTION[key], f"inception{key}")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool3_3x3_s2")(x)
    for key in ("4a", "4b", "4c", "4d", "4e"):
        x = _inception(x, GOOGLENET_INCEPTION[key], f"inception{key}")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool4_3x3_s2")(x)
    for key in ("5a", "5b"):
        x = _inception(x, GOOGLENET_INCEPTION[key], f"inception{key}")
    if head == "paper" and dropout is None:
        dropout = GOOGLENET_DROPOUT
    outputs, head_names = softmax_head(x, num_classes=num_classes, dropout=dropout, dense_units=dense_units)
    return Built(inputs, outputs, head_names)


# ----------------------------------------------------------------------------------------------
# SqueezeNet

# fire modules: (squeeze, expand 1x1, expand 3x3); a max-pool follows the modules in POOL_AFTER
SQUEEZENET_FIRE = {
    2: (16, 64, 64), 3: (16, 64, 64), 4: (32, 128, 128), 5: (32, 128, 128),
    6: (48, 192, 192), 7: (48, 192, 192), 8: (64, 256, 256), 9: (64, 256, 256),
}
SQUEEZENET_VERSIONS = {
    # version: (conv1 filters, conv1 kernel, fire modules followed by a max-pool)
    "1.0": (96, 7, (4, 8)),
    "1.1": (64, 3, (3, 5)),
}
SQUEEZENET_DROPOUT = 0.5


def _fire(x: Any, index: int) -> Any:
    from keras import layers

    s, e1, e3 = SQUEEZENET_FIRE[index]
    name = f"fire{index}"
    x = layers.Conv2D(s, 1, activation="relu", name=f"{name}_squeeze")(x)
    a = layers.Conv2D(e1, 1, activation="relu", name=f"{name}_expand1x1")(x)
    b = layers.Conv2D(e3, 3, padding="same", activation="relu", name=f"{name}_expand3x3")(x)
    return layers.Concatenate(name=f"{name}_concat")([a, b])


def build_squeezenet(
    *,
    inputs: Any,
    input_shape: tuple[int, int, int],
    num_classes: int,
    head: str = "softmax",
    dropout: float | None = None,
    dense_units: int | None = None,
    version: str = "1.0",
) -> Built:
    """SqueezeNet (Iandola et al. 2016), torchvision layout; ``version`` "1.0" (default) or "1.1".

    Version 1.0 is the default because study 04's count (7.364e5 trainable parameters with a
    2-class conv10) matches SqueezeNet 1.0 exactly (1.1 gives 7.235e5). Max-pools floor (Keras
    "valid"; torchvision uses ceil mode, which changes map sizes by one pixel, not parameters).

    ``head="paper"``: dropout 0.5 -> conv10 (1x1, num_classes, ReLU) -> GAP -> softmax, the
    original classifier. ``head="softmax"``: the standard GAP head on fire9.
    """
    from keras import layers

    if version not in SQUEEZENET_VERSIONS:
        raise ValueError(f"version must be one of {list(SQUEEZENET_VERSIONS)}. Received: version={version!r}")
    filters, kernel, pool_after = SQUEEZENET_VERSIONS[version]
    x = layers.Conv2D(filters, kernel, strides=2, activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for index in range(2, 10):
        x = _fire(x, index)
        if index in pool_after:
            x = layers.MaxPooling2D(3, strides=2, name=f"pool{index}")(x)
    if head == "softmax":
        outputs, head_names = softmax_head(x, num_classes=num_classes, dropout=dropout, dense_units=dense_units)
        return Built(inputs, outputs, head_names)
    if dense_units is not None:
        raise ValueError(
            "squeezenet head='paper' is convolutional; dense_units applies to head='softmax'. "
            f"Received: dense_units={dense_units!r}"
        )
    rate = SQUEEZENET_DROPOUT if dropout is None else dropout
    y = layers.Dropout(rate, name="head_dropout")(x) if rate else x
    y = layers.Conv2D(num_classes, 1, activation="relu", name="head_conv10")(y)
    y = layers.GlobalAveragePooling2D(name="head_gap")(y)
    outputs = layers.Activation("softmax", name="predictions", dtype="float32")(y)  # float32 under mixed precision
    head_names = (("head_dropout",) if rate else ()) + ("head_conv10", "head_gap", "predictions")
    return Built(inputs, outputs, head_names)


# ----------------------------------------------------------------------------------------------
# ResNet-18

RESNET18_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (filters, first stride); 2 blocks each
RESNET18_BLOCKS = 2
_BN_EPS = 1.001e-5  # as keras.applications.ResNet


def _conv_bn(x: Any, filters: int, kernel: int, strides: int, name: str) -> Any:
    """Conv (no bias, torch-style explicit padding) + BN, named like keras.applications.ResNet."""
    from keras import layers

    pad = kernel // 2
    if strides > 1 and pad:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        x = layers.Conv2D(filters, kernel, strides=strides, use_bias=False, name=f"{name}_conv")(x)
    else:
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    return layers.BatchNormalization(epsilon=_BN_EPS, name=f"{name}_bn")(x)


def _basic_block(x: Any, filters: int, strides: int, name: str) -> Any:
    from keras import layers

    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, strides, f"{name}_0")
    y = _conv_bn(x, filters, 3, strides, f"{name}_1")
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = _conv_bn(y, filters, 3, 1, f"{name}_2")
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def build_resnet18(
    *,
    inputs: Any,
    input_shape: tuple[int, int, int],
    num_classes: int,
    head: str = "softmax",
    dropout: float | None = None,
    dense_units: int | None = None,
) -> Built:
    """ResNet-18 (He et al. 2016, basic blocks, BN), torchvision layout, keras.applications
    names (``conv2_block1_out`` ... ``conv5_block2_out``). The paper head is GAP -> FC, i.e. the
    softmax head."""
    from keras import layers

    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, (filters, first_stride) in enumerate(RESNET18_STAGES, start=2):
        for block in range(1, RESNET18_BLOCKS + 1):
            strides = first_stride if block == 1 else 1
            x = _basic_block(x, filters, strides, f"conv{stage}_block{block}")
    outputs, head_names = softmax_head(x, num_classes=num_classes, dropout=dropout, dense_units=dense_units)
    return Built(inputs, outputs, head_names)


_COMMON = dict(family="classic", heads=("softmax", "paper"), imagenet=False, input_scaling="torch")
_TORCH_NOTE = "input_scaling 'torch' matches torchvision-converted weights; irrelevant for random init."

SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="alexnet",
        description="AlexNet (torchvision single-tower layout, BN-free); studies 01, 03, 04",
        paper_input_size=227,
        min_input_size=63,
        default_head="paper",
        last_conv="conv5",
        builder=build_alexnet,
        paper_params=(
            PaperCount(60e6, _STUDY01 + "; rounded, the two-tower original", num_classes=1000, counts="total"),
            PaperCount(8.194e3, _STUDY04_A2, trainable="head", head="paper"),
        ),
        notes="torchvision layout (61.1M params at 1000 classes) vs the grouped two-tower original "
        "(61.0M) MATLAB ships; adaptive 6x6 avg-pool omitted. " + _TORCH_NOTE,
        **_COMMON,
    ),
    ModelSpec(
        name="googlenet",
        description="GoogLeNet / Inception v1 (no BN, no aux heads); study 01",
        paper_input_size=224,
        min_input_size=32,
        default_head="softmax",
        last_conv="inception5b_output",
        builder=build_googlenet,
        paper_params=(PaperCount(6_797_700, _STUDY01, num_classes=1000, counts="total"),),
        notes="LRN layers omitted (parameter-free). " + _TORCH_NOTE,
        **_COMMON,
    ),
    ModelSpec(
        name="squeezenet",
        description="SqueezeNet 1.0 (option version='1.1'); study 04",
        paper_input_size=224,
        min_input_size=35,
        default_head="softmax",
        last_conv="fire9_concat",
        builder=build_squeezenet,
        paper_params=(
            PaperCount(7.364e5, "study 04 text, approach 1 (all layers retrained)", head="paper"),
        ),
        notes="Default version 1.0 reproduces study 04's 7.364e5 count; 1.1 needs 31 px minimum. "
        + _TORCH_NOTE,
        **_COMMON,
    ),
    ModelSpec(
        name="resnet18",
        description="ResNet-18 (basic blocks, BN); study 04",
        paper_input_size=224,
        min_input_size=32,
        default_head="softmax",
        last_conv="conv5_block2_out",
        builder=build_resnet18,
        paper_params=(PaperCount(1.026e3, _STUDY04_A2, trainable="head", head="paper"),),
        notes=_TORCH_NOTE,
        **_COMMON,
    ),
)
"""The classic architectures, in registry order."""
