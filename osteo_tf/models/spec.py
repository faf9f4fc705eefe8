"""What every model family shares: :class:`ModelSpec`, heads, the in-graph input layers (grey ->
the trunk's channels and scaling), the random-init BatchNorm rule.

The leaf of ``osteo_tf.models``: it imports nothing from ``osteo_tf``. The family modules
(``applications``, ``classic``, ``studies``) import it and export their specs as data; the registry
imports the families and assembles them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

HeadKind = Literal["softmax", "paper"]
Scaling = Literal["torch", "caffe", "tf", "[0,1]", "[0,255]"]

HEAD_KINDS = ("softmax", "paper")
SCALINGS = ("torch", "caffe", "tf", "[0,1]", "[0,255]")

_IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be loaded (offline, or none exist)."""


@dataclass(frozen=True)
class PaperCount:
    """A parameter count printed in a paper, with the conditions under which it was counted.

    Attributes:
        params: the number as printed (rounded numbers stay rounded, e.g. ``60e6``).
        source: where it is printed, e.g. ``"study 01 Table 1"``.
        num_classes: classes of the output layer the count includes (1000 = ImageNet top).
        counts: ``"total"`` (every weight, as Keras' ``count_params``) or ``"trainable"``.
        trainable: the trainable mode the count refers to (``"all"`` or ``"head"``).
        head: the head kind it implies (``None`` = the model's default head).
    """

    params: float
    source: str
    num_classes: int = 2
    counts: Literal["total", "trainable"] = "trainable"
    trainable: Literal["all", "head"] = "all"
    head: str | None = None


@dataclass(frozen=True)
class Built:
    """What a builder hands back to ``osteo_tf.models.build``.

    Attributes:
        inputs: the trunk's input tensor the builder was given (``inputs=``).
        outputs: the model's output tensor (head included).
        head_layers: names of the layers that form the new head (trained by ``trainable="head"``).
    """

    inputs: Any
    outputs: Any
    head_layers: tuple[str, ...]


Builder = Callable[..., Built]
"""A family's builder. ``osteo_tf.models.build`` calls it with keyword arguments only:
``inputs`` (the trunk's input tensor: the model's grey input after :func:`grey_to_trunk`, i.e.
``(H, W, spec.channels)`` already scaled per ``spec.input_scaling``; the builder builds on it and
never makes its own ``keras.Input``, so the classifier stays one flat graph), ``input_shape``
(the trunk's ``(H, W, spec.channels)``), ``num_classes``, ``head`` (one of ``spec.heads``);
``weights`` (``None`` or ``"imagenet"``) for specs with ``imagenet=True``; ``dropout`` and
``dense_units`` when the caller gave them; and the caller's builder-specific options. A builder
declares exactly the keywords it takes, so Python raises ``TypeError`` for any other."""


@dataclass(frozen=True)
class ModelSpec:
    """How a registered model is built and fed.

    Attributes:
        name: the registry name (lowercase).
        family: ``"keras.applications"``, ``"classic"`` (built here, no Keras weights) or
            ``"study"`` (a study's own CNN).
        description: one line.
        paper_input_size: the square input size (px) the papers use.
        min_input_size: the smallest square input the architecture accepts (px).
        default_head: the head used when ``build(..., head=None)``.
        heads: the head kinds the builder accepts.
        last_conv: name of the last convolutional feature layer (4-D output), the
            ``penultimate_layer`` for Grad-CAM.
        input_scaling: what the trunk expects, in ``keras.applications.*.preprocess_input``
            terms: ``"caffe"`` (BGR, 0-255, ImageNet mean subtracted), ``"torch"`` ([0, 1],
            ImageNet mean/std normalised), ``"tf"`` ([-1, 1]), ``"[0,255]"`` (the model
            normalises inside, EfficientNet) or ``"[0,1]"`` (the studies' own CNNs).
        builder: the family's function that builds the graph (see :data:`Builder`).
        output: ``"softmax"`` (num_classes units) or ``"sigmoid"`` (ONE unit: the probability
            of the second class; ``num_classes`` must be 2).
        channels: the trunk's channel count. Every model takes ONE grey channel; its graph
            repeats it to ``channels`` (3 for every registered architecture: the papers' nets
            and ImageNet weights take RGB) before ``input_scaling``.
        imagenet: whether Keras can provide ImageNet weights for it.
        paper_params: parameter counts the papers print (see :class:`PaperCount`).
        notes: what is our choice rather than the paper's.

    Raises:
        ValueError: ``default_head`` not in ``heads``, or ``input_scaling`` not in ``SCALINGS``.
    """

    name: str
    family: str
    description: str
    paper_input_size: int
    min_input_size: int
    default_head: str
    heads: tuple[str, ...]
    last_conv: str
    input_scaling: str
    builder: Builder = field(repr=False, compare=False)
    output: str = "softmax"
    channels: int = 3
    imagenet: bool = False
    paper_params: tuple[PaperCount, ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        if self.default_head not in self.heads:
            raise ValueError(
                f"{self.name}: default_head must be one of heads={self.heads}. "
                f"Received: default_head={self.default_head!r}"
            )
        if self.input_scaling not in SCALINGS:
            raise ValueError(
                f"{self.name}: input_scaling must be one of {SCALINGS}. "
                f"Received: input_scaling={self.input_scaling!r}"
            )

    @property
    def penultimate_layer(self) -> str:
        """Alias of ``last_conv`` under tf-keras-vis' name."""
        return self.last_conv

    @property
    def input_steps(self) -> list[str]:
        """What the graph does to its grey (H, W, 1) input before the trunk, in words."""
        return input_steps(self.input_scaling, self.channels)


def scaling_affine(scaling: str, channels: int = 3) -> tuple[list[float], list[float]]:
    """Per-channel ``(scale, offset)`` with ``scale * grey + offset`` == :func:`scale_images` of
    the grey image repeated to ``channels`` (every convention is affine per channel; for a grey
    image caffe's RGB -> BGR flip only reorders the channel means).

    Raises:
        ValueError: for an unknown ``scaling``.
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}. Received: scaling={scaling!r}")
    ones = np.ones(channels, np.float64)
    if scaling == "[0,1]":
        scale, offset = ones, 0 * ones
    elif scaling == "[0,255]":
        scale, offset = 255.0 * ones, 0 * ones
    elif scaling == "tf":
        scale, offset = 2.0 * ones, -ones
    elif scaling == "torch":
        scale, offset = 1.0 / _IMAGENET_STD_RGB[:channels], -_IMAGENET_MEAN_RGB[:channels] / _IMAGENET_STD_RGB[:channels]
    else:
        scale, offset = 255.0 * ones, -_CAFFE_MEAN_BGR[:channels]
    return [float(v) for v in scale], [float(v) for v in offset]


def input_steps(scaling: str, channels: int = 3) -> list[str]:
    """The in-graph input steps of :func:`grey_to_trunk`, in words (for sidecars and reports)."""
    steps = ["grey (H, W, 1) in [0, 1]"]
    if channels != 1:
        steps.append(f"layer grey_to_rgb: the grey channel repeated to {channels} channels")
    if scaling != "[0,1]":
        steps.append(f"layer input_scaling: {scaling!r} scaling (keras.applications preprocess_input "
                     "convention)" if scaling != "[0,255]" else "layer input_scaling: x 255")
    return steps


def grey_to_trunk(grey: Any, *, scaling: str, channels: int = 3) -> tuple[Any, tuple[str, ...]]:
    """The model's input layers: grey (H, W, 1) in [0, 1] -> the trunk's channels and scaling.

    Built from Keras' own layers (``Concatenate`` named ``grey_to_rgb``, ``Rescaling`` with
    per-channel scale and offset named ``input_scaling``), so a saved model loads with
    ``safe_mode=True`` in plain Keras, with no custom object. Identity steps add no layer.

    Args:
        grey: the model's ``keras.Input`` of shape (H, W, 1).
        scaling: one of ``SCALINGS``.
        channels: the trunk's channels (1 or 3).

    Returns:
        The trunk's input tensor and the names of the layers added.
    """
    from keras import layers

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels!r}")
    x, names = grey, []
    if channels == 3:
        x = layers.Concatenate(axis=-1, name="grey_to_rgb")([x, x, x])
        names.append("grey_to_rgb")
    if scaling != "[0,1]":
        scale, offset = scaling_affine(scaling, channels)
        if len(set(scale)) == 1 and len(set(offset)) == 1:
            scale, offset = scale[0], offset[0]
        x = layers.Rescaling(scale, offset, name="input_scaling")(x)
        names.append("input_scaling")
    return x, tuple(names)


def scale_images(x: Any, scaling: str) -> Any:
    """Scale [0, 1] images per a ``keras.applications`` convention (see ``ModelSpec``).

    The NumPy/TensorFlow reference of the ``input_scaling`` layer (:func:`grey_to_trunk`), which
    is where the models apply it; tests compare the two.

    Args:
        x: (..., H, W, C) NumPy array or tensor, float in [0, 1].
        scaling: one of ``SCALINGS``.

    Returns:
        The same shape, float32.

    Raises:
        ValueError: for an unknown ``scaling``.
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}. Received: scaling={scaling!r}")
    if isinstance(x, np.ndarray):
        x = x.astype(np.float32, copy=False)
    else:
        import tensorflow as tf

        x = tf.cast(x, tf.float32)
    if scaling == "[0,1]":
        return x
    if scaling == "[0,255]":
        return x * 255.0
    if scaling == "tf":
        return x * 2.0 - 1.0
    if scaling == "torch":
        return (x - _IMAGENET_MEAN_RGB) / _IMAGENET_STD_RGB
    # caffe: RGB -> BGR, 0-255, ImageNet channel means subtracted, no scaling
    return x[..., ::-1] * 255.0 - _CAFFE_MEAN_BGR


def softmax_head(
    x: Any,
    *,
    num_classes: int,
    dropout: float | None = None,
    dense_units: int | None = None,
    pool: bool = True,
    output: str = "softmax",
) -> tuple[Any, tuple[str, ...]]:
    """The standard new head: ``head_gap -> [head_dense relu] -> [head_dropout] -> predictions``.

    ``predictions`` computes in float32 under a mixed-precision policy.

    Args:
        x: a 4-D feature map (``pool=True``) or a 2-D feature vector (``pool=False``).
        num_classes: output classes (softmax); ignored for ``output="sigmoid"`` (1 unit).
        dropout: rate of a Dropout layer before ``predictions`` (``None``/0 = none).
        dense_units: units of a hidden ReLU Dense layer (study 05: 1024); ``None`` = none.
        pool: apply GlobalAveragePooling2D first.
        output: ``"softmax"`` or ``"sigmoid"``.

    Returns:
        The output tensor and the names of the head's layers.
    """
    from keras import layers

    names: list[str] = []
    if pool:
        x = layers.GlobalAveragePooling2D(name="head_gap")(x)
        names.append("head_gap")
    if dense_units:
        x = layers.Dense(dense_units, activation="relu", name="head_dense")(x)
        names.append("head_dense")
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
        names.append("head_dropout")
    units = 1 if output == "sigmoid" else num_classes
    # float32 whatever the dtype policy: a float16 softmax ties probabilities (AUC, ECE)
    x = layers.Dense(units, activation=output, name="predictions", dtype="float32")(x)
    names.append("predictions")
    return x, tuple(names)


RANDOM_INIT_BN_MOMENTUM = 0.9
"""BatchNorm moving-average momentum of randomly initialised models (PyTorch's default)."""


def set_random_init_batchnorm(model: Any, momentum: float = RANDOM_INIT_BN_MOMENTUM) -> int:
    """Set the moving-average momentum of every BatchNormalization layer of a random-init model.

    Keras' default momentum (0.99) averages the moving mean and variance over about 100 steps. A
    short CPU run from random initialisation often has fewer: the moving statistics then stay
    near their initial values and the model predicts almost one class at inference although it
    fits the training data. 0.9 averages over about 10 steps; it is PyTorch's default (its
    ``momentum=0.1``), which is what study 04's paper trained with. Models initialised from
    ImageNet weights keep Keras' value. Call it before the first fit; ``osteo_tf.experiments``
    calls it for every randomly initialised registry model it builds.

    Args:
        model: a ``keras.Model``; its top-level layers are searched (the registry's models are
            flat graphs).
        momentum: in [0, 1).

    Returns:
        The number of BatchNormalization layers set.

    Raises:
        ValueError: ``momentum`` outside [0, 1).
    """
    import keras

    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise ValueError(f"momentum must be a float in [0, 1). Received: momentum={momentum!r}")
    n = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
            n += 1
    return n
