"""The studies' own CNNs: study 01's small CNN, study 03's multi-branch DCNN (Table 1), study 04's
four ad-hoc CNNs (Table II) and a KerasTuner hypermodel for study 04's search.

Like every registry model they take one grey channel in [0, 1]; their graphs repeat it to the
3 channels the papers' nets were defined on (study 04's Table II counts are for RGB input), with
no further scaling. They have no pretrained weights. Their
BatchNorm layers are built with Keras' default momentum; ``osteo_tf.experiments.build_model``
applies :func:`osteo_tf.models.spec.set_random_init_batchnorm` before a run trains one from
scratch. Parameter counts against the papers:
``osteo_tf.models.param_table(names=[...])`` (numbers are also pinned in tests/test_models.py).
``SPECS`` lists the models, in registry order.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

from osteo_tf.models.spec import Built, ModelSpec, PaperCount, grey_to_trunk, softmax_head

# ----------------------------------------------------------------------------------------------
# study 01: 4 conv layers (max-pool after the first 3) + 1 fully connected softmax layer

STUDY01_FILTERS = (32, 64, 128, 128)
"""Our choice: the paper (its Fig. 9) does not give filter counts."""
STUDY01_KERNEL = 3


def _conv_bn_relu(x: Any, filters: int, kernel: int, name: str, padding: str = "same", *,
                  use_bias: bool = True) -> Any:
    from keras import layers

    x = layers.Conv2D(filters, kernel, padding=padding, use_bias=use_bias, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _four_conv_trunk(name: str, inputs: Any, filters: Sequence[int], *,
                     use_bias: bool = True) -> tuple[Any, Any]:
    """``(inputs, features)``: conv1-conv4 (3x3, BN, ReLU) with a 2x2 max-pool after conv1-conv3,
    the trunk of study01_cnn and compact_cnn on the tensor ``inputs``; ``use_bias`` goes to the
    convolutions."""
    from keras import layers

    filters = tuple(filters)
    if len(filters) != 4 or not all(isinstance(f, int) and f > 0 for f in filters):
        raise ValueError(f"{name}: filters must be 4 positive ints. Received: filters={filters!r}")
    x = inputs
    for i, f in enumerate(filters, start=1):
        x = _conv_bn_relu(x, f, STUDY01_KERNEL, f"conv{i}", use_bias=use_bias)
        if i < 4:
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    return inputs, x


def build_study01_cnn(
    *,
    inputs: Any,
    input_shape: tuple[int, int, int],
    num_classes: int,
    head: str = "paper",
    dropout: float | None = None,
    filters: Sequence[int] = STUDY01_FILTERS,
) -> Built:
    """Study 01's CNN trained from scratch: conv1-conv4 (3x3, same padding, BN, ReLU), a 2x2
    max-pool after conv1-conv3, flatten, one fully connected softmax layer.

    Filter counts (default 32/64/128/128) and the BatchNorm are our choices: the paper gives
    only the layer types. ``filters`` overrides the counts (4 ints).
    """
    from keras import layers

    inputs, x = _four_conv_trunk("study01_cnn", inputs, filters)
    x = layers.Flatten(name="flatten")(x)
    outputs, head_names = softmax_head(x, num_classes=num_classes, dropout=dropout, pool=False)
    return Built(inputs, outputs, ("flatten",) + head_names)


# ----------------------------------------------------------------------------------------------
# compact_cnn: not from a paper, the quick profile's CPU model for the knee

COMPACT_FILTERS = (16, 32, 64, 64)


def build_compact_cnn(
    *,
    inputs: Any,
    input_shape: tuple[int, int, int],
    num_classes: int,
    head: str = "softmax",
    dropout: float | None = None,
    dense_units: int | None = None,
    filters: Sequence[int] = COMPACT_FILTERS,
) -> Built:
    """A compact CNN for CPU runs from scratch: conv1-conv4 (3x3 without bias, BN, ReLU), a 2x2
    max-pool after conv1-conv3, then the standard head (global average pooling, softmax).

    Global average pooling keeps it at 61k parameters whatever the input size, so it can learn
    texture statistics from a few hundred images, where study01_cnn's flatten + dense layer
    overfits. ``filters`` overrides the counts (4 ints).
    """
    inputs, x = _four_conv_trunk("compact_cnn", inputs, filters, use_bias=False)
    outputs, head_names = softmax_head(x, num_classes=num_classes, dropout=dropout, dense_units=dense_units)
    return Built(inputs, outputs, head_names)


# ----------------------------------------------------------------------------------------------
# study 03: multi-branch DCNN, paper Table 1

STUDY03_STEM = (8, 8)  # two conv 3x3 x 8 - BN - ReLU
STUDY03_BLOCKS = (
    (8, (1, 3, 5, 7)),  # block 1: 4 branches, 8 filters each, concatenated ('cont1')
    (32, (1, 3, 3, 5, 7)),  # block 2: 5 branches, 32 filters; Table 1 lists 3x3 twice (branches 2, 3)
    (64, (1, 3, 5, 7)),  # block 3: 4 branches, 64 filters
)
STUDY03_DROPOUT = 0.5


def build_study03_multibranch(
    *,
    inputs: Any,
    input_shape: tuple[int, int, int],
    num_classes: int,
    head: str = "paper",
    dropout: float | None = None,
    block_pooling: bool = False,
) -> Built:
    """Study 03's DCNN exactly as its Table 1 lists it.

    stem (conv 3x3x8 - BN - ReLU, twice) -> block 1 (1x1/3x3/5x5/7x7 x 8, each BN-ReLU,
    concatenated) -> block 2 (1x1/3x3/3x3/5x5/7x7 x 32) -> block 3 (1x1/3x3/5x5/7x7 x 64) ->
    dropout 0.5 -> global average pooling -> dense num_classes softmax. All convs stride 1,
    "same" padding (the branches are concatenated). Every branch reads the previous block's
    concatenation.

    Table 1 has NO pooling between blocks, so every block runs at full input resolution (heavy:
    about 27 GMAC per 224x224 image). ``block_pooling=True`` (our option, not the paper's) adds a
    2x2 max-pool after the stem and after blocks 1 and 2; it does not change the parameter count.

    The paper states 55 layers and "40.7k" learnables; the table builds 55 layers (counting as
    MATLAB does) but 963,466 trainable parameters for 2 classes (see ``param_table``).
    """
    from keras import layers

    x = inputs
    for i, f in enumerate(STUDY03_STEM, start=1):
        x = _conv_bn_relu(x, f, 3, f"stem{i}")
    if block_pooling:
        x = layers.MaxPooling2D(2, name="stem_pool")(x)
    for b, (filters, kernels) in enumerate(STUDY03_BLOCKS, start=1):
        branches = [
            _conv_bn_relu(x, filters, k, f"block{b}_branch{j}") for j, k in enumerate(kernels, start=1)
        ]
        x = layers.Concatenate(name=f"block{b}_concat")(branches)
        if block_pooling and b < len(STUDY03_BLOCKS):
            x = layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
    rate = STUDY03_DROPOUT if dropout is None else dropout
    head_names: tuple[str, ...] = ()
    if rate:
        x = layers.Dropout(rate, name="head_dropout")(x)
        head_names = ("head_dropout",)
    outputs, more = softmax_head(x, num_classes=num_classes)
    return Built(inputs, outputs, head_names + more)


# ----------------------------------------------------------------------------------------------
# study 04: four ad-hoc CNNs (Table II) and the tuner's search space

STUDY04_MODELS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    # model: (filters per conv block, hidden dense units); then Dense(1, sigmoid)
    1: ((8, 16, 32, 64, 128), (1000, 100)),
    2: ((8, 16, 32), (500, 100)),
    3: ((8, 16, 32), (100,)),
    4: ((8, 28, 36), (1000,)),
}
STUDY04_PAPER_PARAMS = {1: 3.400e6, 2: 1.087e7, 3: 2.169e6, 4: 2.434e7}
"""Table II's trainable parameters; ours at 224x224x3 agree to the 4 printed digits (the paper
truncates: model 3 is 2,169,545, model 4 is 24,349,521)."""


def study04_min_input_size(n_blocks: int) -> int:
    """Smallest square input for which ``n_blocks`` (valid 3x3 conv + 2x2 pool) leave >= 1 px."""
    size = 1
    for _ in range(n_blocks):
        size = 2 * size + 2
    return size


def _study04_features(x: Any, filters: Sequence[int]) -> Any:
    from keras import layers

    for i, f in enumerate(filters, start=1):
        # conv 3x3, stride 1, no padding (PyTorch's default; reproduces Table II's counts)
        x = _conv_bn_relu(x, f, 3, f"block{i}", padding="valid")
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    return x


def _study04_classifier(x: Any, dense: Sequence[int], dropout: float | None) -> tuple[Any, tuple[str, ...]]:
    from keras import layers

    x = layers.Flatten(name="flatten")(x)
    names = ["flatten"]
    for j, units in enumerate(dense, start=1):
        x = layers.Dense(units, activation="relu", name=f"fc{j}")(x)
        names.append(f"fc{j}")
    outputs, more = softmax_head(x, num_classes=2, dropout=dropout, pool=False, output="sigmoid")
    return outputs, tuple(names) + more


def _build_study04(
    model: int,
    /,
    *,
    inputs: Any,
    input_shape: tuple[int, int, int],
    num_classes: int,
    head: str = "paper",
    dropout: float | None = None,
) -> Built:
    """Study 04 Model ``model`` (Table II, ``STUDY04_MODELS``): conv blocks (conv 3x3 stride 1
    valid - BN - ReLU - max-pool 2), flatten, the hidden dense layers (ReLU), Dense(1, sigmoid).
    Returns ONE unit; ``model`` is bound by ``functools.partial`` in ``SPECS``."""
    filters, dense = STUDY04_MODELS[model]
    x = _study04_features(inputs, filters)
    outputs, head_names = _study04_classifier(x, dense, dropout)
    return Built(inputs, outputs, head_names)


def study04_tunable(hp: Any, *, input_shape: Sequence[int] = (224, 224, 1)) -> Any:
    """KerasTuner hypermodel for study 04's search (the paper used Ray Tune).

    Search space: 2-5 conv blocks (capped so the input stays >= 1 px), filters per block 8-128
    (step 4: covers Table II's 8/16/28/32/36/64/128), 1-2 hidden dense layers of 100/500/1000
    units, SGD learning rate 1e-4/1e-3 and momentum 0.6-0.9. Use
    ``functools.partial(study04_tunable, input_shape=...)`` as the tuner's hypermodel. Its
    BatchNorm layers have Keras' default momentum: a hypermodel trained from scratch on a short
    run wants :func:`osteo_tf.models.spec.set_random_init_batchnorm` applied to its result.

    Args:
        hp: a ``keras_tuner.HyperParameters``.
        input_shape: (H, W, 1): one grey channel in [0, 1], repeated to 3 channels in the graph
            like the registered study 04 models.

    Returns:
        A compiled ``keras.Model`` (binary cross-entropy, accuracy and AUC), one sigmoid unit.
    """
    import keras

    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or shape[-1] != 1:
        raise ValueError(f"input_shape must be (H, W, 1) (one grey channel). Received: input_shape={input_shape!r}")
    max_blocks = max(b for b in range(1, 6) if study04_min_input_size(b) <= min(shape[:2]))
    if max_blocks < 2:
        raise ValueError(f"input_shape is too small for 2 conv blocks (>= 10 px). Received: input_shape={input_shape!r}")
    n_blocks = hp.Int("conv_blocks", 2, max_blocks, default=min(3, max_blocks))
    filters = [hp.Int(f"filters_{i}", 8, 128, step=4) for i in range(1, n_blocks + 1)]
    n_dense = hp.Int("dense_layers", 1, 2)
    dense = [hp.Choice(f"dense_units_{j}", [100, 500, 1000]) for j in range(1, n_dense + 1)]
    learning_rate = hp.Choice("learning_rate", [1e-4, 1e-3])
    momentum = hp.Choice("momentum", [0.6, 0.7, 0.8, 0.9])
    inputs = keras.Input(shape=shape, name="input")
    trunk, _ = grey_to_trunk(inputs, scaling="[0,1]", channels=3)
    outputs, _ = _study04_classifier(_study04_features(trunk, filters), dense, None)
    model = keras.Model(inputs, outputs, name="study04_tunable")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum),
        loss="binary_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    return model


_COMMON = dict(family="study", heads=("paper",), default_head="paper", channels=3, input_scaling="[0,1]")

SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="study01_cnn",
        description="Study 01's small CNN from scratch: 4 conv (pool after 3) + 1 FC softmax",
        paper_input_size=400,
        min_input_size=8,
        last_conv="conv4_relu",
        builder=build_study01_cnn,
        notes="Filter counts 32/64/128/128, 3x3 kernels, BN and the 400 px input (the ROI size) "
        "are our choices: the paper does not give them.",
        **_COMMON,
    ),
    ModelSpec(
        name="compact_cnn",
        description="Compact CNN for CPU quick runs: 4 conv (BN, pool after 3) + GAP softmax",
        paper_input_size=96,
        min_input_size=8,
        last_conv="conv4_relu",
        builder=build_compact_cnn,
        notes="Not from any of the five papers: the quick profile's stand-in for MobileNetV3 / "
        "EfficientNet on the knee, where those trained from scratch on a few hundred images stay at chance.",
        **{**_COMMON, "heads": ("softmax",), "default_head": "softmax"},
    ),
    ModelSpec(
        name="study03_multibranch",
        description="Study 03's multi-branch DCNN (Table 1)",
        paper_input_size=224,
        min_input_size=8,
        last_conv="block3_concat",
        builder=build_study03_multibranch,
        paper_params=(PaperCount(40.7e3, "study 03 text ('40.7k learnables'; contradicts its Table 1)"),),
        notes="Table 1 built as printed (no pooling between blocks); option block_pooling=True "
        "adds 2x2 pools for CPU runs. Paper names: r1 = stem2_relu, r11..r34 = blockB_branchK_relu, "
        "cont1 = block1_concat.",
        **_COMMON,
    ),
    *(
        ModelSpec(
            name=f"study04_model{m}",
            description=f"Study 04 Model {m} (Table II): blocks {filters}, dense {dense}, 1 sigmoid",
            paper_input_size=224,
            min_input_size=study04_min_input_size(len(filters)),
            last_conv=f"block{len(filters)}_relu",
            builder=functools.partial(_build_study04, m),
            output="sigmoid",
            paper_params=(PaperCount(STUDY04_PAPER_PARAMS[m], "study 04 Table II"),),
            notes="Returns ONE sigmoid unit (P(class 1)); num_classes must be 2. Valid (unpadded) "
            "3x3 convs reproduce Table II's counts; its batch sizes and SGD settings are study 04's "
            "training recipes.",
            **_COMMON,
        )
        for m, (filters, dense) in STUDY04_MODELS.items()
    ),
)
"""The studies' own CNNs, in registry order."""
