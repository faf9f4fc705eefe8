"""The model registry: ``SPECS``, ``names``, ``get_spec``, ``build``, trainable modes, ``build_info``.

``SPECS`` is assembled from the family modules in a stated order: the keras.applications
backbones (``applications.SPECS``), the classic nets Keras lacks (``classic.SPECS``), the studies'
own CNNs (``studies.SPECS``). The families import only ``spec``; this module imports them.

Every classifier is ONE flat functional graph, ``keras.Model(grey_input, head(trunk(input_layers(grey_input))))``:
it takes one grey channel in [0, 1], shape (H, W, 1); its first layers (``spec.grey_to_trunk``:
``grey_to_rgb``, ``input_scaling``) repeat the channel and apply the backbone's own scaling, as
``keras.applications``' ``include_preprocessing`` does, so training, explanation, prediction and
a saved model all see the same thing. No backbone is ever nested as a layer (Grad-CAM tools cannot see inside a nested model: they
look for the target layer in the outer model's graph). Every layer has a deterministic name:
layers that Keras names automatically (``conv2d_94``, ``re_lu_3``...) are renamed in graph order
as a fresh session would name them, so names do not depend on what was built before.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from osteo_tf.models import applications, classic, studies
from osteo_tf.models.spec import HeadKind, ModelSpec, PaperCount, WeightsUnavailableError, grey_to_trunk

_INFO_ATTR = "_osteo_tf_info"
_FETCH_FAILED: dict[tuple, str] = {}
"""ImageNet weight files whose download already failed in this process (name, file) -> message."""

SPECS: tuple[ModelSpec, ...] = applications.SPECS + classic.SPECS + studies.SPECS
"""Every registered model, in registry order: backbones, classic nets, the studies' CNNs."""


def _index(specs: Sequence[ModelSpec]) -> dict[str, ModelSpec]:
    by_name: dict[str, ModelSpec] = {}
    for spec in specs:
        if spec.name in by_name:
            raise ValueError(f"Model names must be unique. Received: name={spec.name!r} twice")
        by_name[spec.name] = spec
    return by_name


_BY_NAME = _index(SPECS)


def names() -> list[str]:
    """Return the registered model names, in registry order (backbones, classic, studies)."""
    return [spec.name for spec in SPECS]


_all_names = names  # param_table has an argument called ``names``


def get_spec(name: str) -> ModelSpec:
    """Return the :class:`ModelSpec` of ``name`` (case-insensitive).

    Raises:
        ValueError: for an unknown name; the message lists the known names.
    """
    if not isinstance(name, str) or name.lower() not in _BY_NAME:
        raise ValueError(f"Unknown model. Expected one of {names()}. Received: name={name!r}")
    return _BY_NAME[name.lower()]


# ----------------------------------------------------------------------------------------------
# validation helpers


def _validate_shape(spec: ModelSpec, input_shape: Any) -> tuple[int, int, int]:
    ok = (
        isinstance(input_shape, (tuple, list))
        and len(input_shape) == 3
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in input_shape)
        and all(v > 0 for v in input_shape)
    )
    if not ok:
        raise ValueError(
            "input_shape must be a tuple of three positive ints (height, width, channels). "
            f"Received: input_shape={input_shape!r}"
        )
    h, w, c = (int(v) for v in input_shape)
    if c != 1:
        raise ValueError(
            "input_shape must have 1 channel: every model takes one grey channel in [0, 1] and "
            f"repeats and scales it inside its graph. Received: input_shape={tuple(input_shape)!r}"
        )
    if min(h, w) < spec.min_input_size:
        raise ValueError(
            f"input_shape height and width must be >= {spec.min_input_size} px for {spec.name} "
            f"(paper size {spec.paper_input_size}). Received: input_shape={tuple(input_shape)!r}"
        )
    return h, w, c


def _validate_args(
    spec: ModelSpec,
    num_classes: Any,
    head: str,
    dropout: Any,
    dense_units: Any,
    trainable: Any,
) -> None:
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2. Received: num_classes={num_classes!r}")
    if spec.output == "sigmoid" and num_classes != 2:
        raise ValueError(
            f"{spec.name} has one sigmoid output unit (binary, as in the paper), so num_classes "
            f"must be 2. Received: num_classes={num_classes!r}"
        )
    if head not in spec.heads:
        raise ValueError(f"head must be one of {spec.heads} for {spec.name}. Received: head={head!r}")
    if dropout is not None and not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise ValueError(f"dropout must be None or a float in [0, 1). Received: dropout={dropout!r}")
    if dense_units is not None and (
        not isinstance(dense_units, (int, np.integer)) or isinstance(dense_units, bool) or dense_units < 1
    ):
        raise ValueError(f"dense_units must be None or a positive int. Received: dense_units={dense_units!r}")
    if not (
        trainable in ("all", "head")
        or (isinstance(trainable, (int, np.integer)) and not isinstance(trainable, bool) and trainable >= 0)
    ):
        raise ValueError(
            'trainable must be "all", "head" or a non-negative int (freeze the first N backbone '
            f"layers). Received: trainable={trainable!r}"
        )


# ----------------------------------------------------------------------------------------------
# weights


def expected_weights_file(name: str, input_shape: Sequence[int], head: str | None = None) -> str | None:
    """The file name Keras looks for in ``~/.keras/models`` for ``weights="imagenet"``.

    Returns ``None`` for models without Keras ImageNet weights.
    """
    spec = get_spec(name)
    if not spec.imagenet:
        return None
    return applications.weights_file_name(spec.name, tuple(input_shape), head or spec.default_head)


def local_weights_file(name: str, input_shape: Sequence[int], head: str | None = None) -> Path | None:
    """The ImageNet weights file of registry model ``name`` when it is already on disk (in
    ``applications.keras_models_dir()``), else ``None`` (also for models without Keras weights)."""
    spec = get_spec(name)
    if not spec.imagenet:
        return None
    return applications.local_weights_file(spec.name, tuple(input_shape), head or spec.default_head)


def _unavailable_message(spec: ModelSpec, input_shape: tuple[int, ...], head: str, err: Any) -> str:
    if not spec.imagenet:
        return (
            f"Keras has no ImageNet weights for {spec.name} ({spec.family} architecture built by "
            "osteo_tf). Pass weights=None (random initialisation), weights='<file>.weights.h5' "
            "(weights you converted, loaded by layer name), or allow_random_init=True."
        )
    return applications.missing_weights_message(spec.name, input_shape, head, err)


# ----------------------------------------------------------------------------------------------
# naming, trainability, info


_AUTO_SUFFIX = re.compile(r"^(?P<base>.+?)(_\d+)?$")


def _rename_auto_layers(model: Any) -> None:
    """Give auto-named layers the names a fresh Keras session would give, in graph order."""
    from keras import layers as klayers
    from keras.src.utils import naming

    taken = {layer.name for layer in model.layers}
    counters: dict[str, int] = {}
    for layer in model.layers:
        if isinstance(layer, klayers.InputLayer):
            base = "input"
            if layer.name != base and base not in taken:
                taken.discard(layer.name)
                layer.name = base
                taken.add(base)
            continue
        snake = naming.to_snake_case(layer.__class__.__name__)
        m = _AUTO_SUFFIX.match(layer.name)
        if m is None or m.group("base") != snake:
            continue
        k = counters.get(snake, 0)
        new = snake if k == 0 else f"{snake}_{k}"
        while new in taken and new != layer.name:
            k += 1
            new = f"{snake}_{k}"
        counters[snake] = k + 1
        if new != layer.name:
            taken.discard(layer.name)
            layer.name = new
            taken.add(new)


def backbone_layers(model: Any) -> list[Any]:
    """The layers of a built model that are not its new head, in order (the input layer and the
    weightless input layers ``grey_to_rgb`` / ``input_scaling`` excluded).

    Raises:
        ValueError: if ``model`` was not built by :func:`build`.
    """
    from keras import layers as klayers

    info = _get_info(model)
    skip = set(info["head_layers"]) | set(info.get("input_layers", ()))
    return [l for l in model.layers if l.name not in skip and not isinstance(l, klayers.InputLayer)]


def head_layers(model: Any) -> list[Any]:
    """The layers of the new head of a model built by :func:`build`."""
    head = set(_get_info(model)["head_layers"])
    return [l for l in model.layers if l.name in head]


def set_trainable(model: Any, trainable: str | int) -> None:
    """Apply a trainable mode to a model built by :func:`build`.

    Args:
        model: from :func:`build`.
        trainable: ``"all"``; ``"head"`` (backbone frozen: its BatchNorm layers then run in
            inference mode, as ``layer.trainable=False`` implies in Keras 3); or an int N:
            freeze the first N backbone layers (``backbone_layers(model)[:N]``), train the rest.

    Raises:
        ValueError: for an unknown mode or N larger than the backbone.
    """
    backbone = backbone_layers(model)
    if isinstance(trainable, (int, np.integer)) and not isinstance(trainable, bool):
        n = int(trainable)
        if not 0 <= n <= len(backbone):
            raise ValueError(
                f"trainable={n} freezes more layers than {model.name}'s backbone has "
                f"({len(backbone)}). Received: trainable={trainable!r}"
            )
    elif trainable == "all":
        n = 0
    elif trainable == "head":
        n = len(backbone)
    else:
        raise ValueError(
            f'trainable must be "all", "head" or a non-negative int. Received: trainable={trainable!r}'
        )
    model.trainable = True
    for i, layer in enumerate(backbone):
        layer.trainable = i >= n
    for layer in head_layers(model):
        layer.trainable = True
    _get_info(model)["trainable"] = trainable


def _count(variables: Sequence[Any]) -> int:
    return int(sum(int(np.prod(v.shape)) for v in variables))


def _get_info(model: Any) -> dict[str, Any]:
    info = getattr(model, _INFO_ATTR, None)
    if info is None:
        raise ValueError(
            "model was not built by osteo_tf.models.build (no build info). "
            f"Received: model={getattr(model, 'name', model)!r}"
        )
    return info


def build_info(model: Any) -> dict[str, Any]:
    """What a run should record about a model built by :func:`build`.

    Returns:
        A new dict: ``name``, ``weights`` (``"imagenet"``, ``"random"``,
        ``"random (imagenet unavailable)"`` or ``"file:<path>"``), ``trainable_params`` and
        ``total_params`` (counted now, so later freezing is reflected), ``input_shape``,
        ``num_classes``, ``output`` (``"softmax"``/``"sigmoid"``), ``output_units``, ``head``,
        ``head_layers``, ``trainable`` (the mode), ``backbone_layers`` (count), ``last_conv``,
        ``input_scaling``, ``input_layers`` (names of the in-graph input layers) and
        ``input_steps`` (what they do, in words).

    Raises:
        ValueError: if ``model`` was not built by :func:`build`.
    """
    info = dict(_get_info(model))
    info["head_layers"] = list(info["head_layers"])
    info["input_layers"] = list(info.get("input_layers", ()))
    info["trainable_params"] = _count(model.trainable_weights)
    info["total_params"] = _count(model.weights)
    return info


# ----------------------------------------------------------------------------------------------
# build


def build(
    name: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    weights: str | os.PathLike | None = None,
    allow_random_init: bool = False,
    head: HeadKind | None = None,
    dropout: float | None = None,
    dense_units: int | None = None,
    trainable: str | int = "all",
    **options: Any,
) -> Any:
    """Build a registered classifier as one flat functional ``keras.Model``.

    Args:
        name: a name from :func:`names` (case-insensitive).
        input_shape: ``(H, W, 1)``: one grey channel in [0, 1] (the graph repeats it to the
            trunk's ``spec.channels`` and applies ``spec.input_scaling``). H and W must be >=
            ``get_spec(name).min_input_size``.
        num_classes: >= 2. The study 04 models (``spec.output == "sigmoid"``) need exactly 2
            and return ONE sigmoid unit: the probability of class index 1.
        weights: ``None`` (random), ``"imagenet"`` (keras.applications backbones only; Keras
            looks in ``~/.keras/models`` and downloads when it can) or a path to a weights file
            (``.weights.h5`` from ``model.save_weights``, or a legacy ``.h5``) loaded into the
            whole model, layers with mismatched shapes skipped with a warning.
        allow_random_init: when ImageNet weights are unavailable, warn and build with random
            weights instead of raising; ``build_info(model)["weights"]`` then says so.
        head: ``"softmax"`` (the standard new head: GAP -> [Dense relu] -> [Dropout] ->
            Dense softmax) or ``"paper"`` (the architecture's original classifier with its last
            layer replaced, as studies 01/04 did: AlexNet and VGG16 keep fc6/fc7; SqueezeNet
            ends with conv10; MobileNetV3/EfficientNetB0 get study 05's Dense 1024 head).
            ``None`` = ``spec.default_head``.
        dropout: Dropout rate before the output layer (study 04: 0.4).
        dense_units: a hidden ReLU Dense layer in the head (study 05: 1024).
        trainable: ``"all"``, ``"head"`` or an int N (freeze the first N backbone layers); see
            :func:`set_trainable`.
        **options: builder-specific options (e.g. ``version="1.1"`` for squeezenet,
            ``filters=`` for study01_cnn, ``block_pooling=True`` for study03_multibranch),
            passed to the builder as keyword arguments.

    Returns:
        The model; ``build_info(model)`` describes it.

    Raises:
        ValueError: bad name, shape, classes, head, dropout, dense_units or trainable mode.
        TypeError: an option (or ``dense_units``) the model's builder does not take.
        WeightsUnavailableError: ImageNet weights unavailable and ``allow_random_init`` False.
        FileNotFoundError: ``weights`` is neither None, "imagenet" nor an existing file.
    """
    import keras

    spec = get_spec(name)
    head = spec.default_head if head is None else head
    shape = _validate_shape(spec, input_shape)
    _validate_args(spec, num_classes, head, dropout, dense_units, trainable)
    weights_file: Path | None = None
    if weights is None:
        keras_weights, weights_label = None, "random"
    elif isinstance(weights, str) and weights == "imagenet":
        keras_weights, weights_label = "imagenet", "imagenet"
    elif isinstance(weights, (str, os.PathLike)) and Path(weights).is_file():
        weights_file = Path(weights)
        keras_weights, weights_label = None, f"file:{weights_file}"
    else:
        raise FileNotFoundError(
            "weights must be None, 'imagenet' or the path of an existing weights file. "
            f"Received: weights={weights!r}"
        )

    trunk_shape = (shape[0], shape[1], spec.channels)
    kwargs: dict[str, Any] = dict(input_shape=trunk_shape, num_classes=int(num_classes), head=head)
    if dropout is not None:
        kwargs["dropout"] = dropout
    if dense_units is not None:
        kwargs["dense_units"] = dense_units
    kwargs.update(options)

    input_layer_names: tuple[str, ...] = ()

    def call_builder(keras_weights: str | None) -> Any:
        nonlocal grey, input_layer_names
        grey = keras.Input(shape=shape, name="input")
        trunk, input_layer_names = grey_to_trunk(grey, scaling=spec.input_scaling, channels=spec.channels)
        # only the families with Keras weights take ``weights``; the others never see "imagenet"
        if spec.imagenet:
            return spec.builder(**kwargs, inputs=trunk, weights=keras_weights)
        return spec.builder(**kwargs, inputs=trunk)

    grey = None
    fetch_key = (spec.name, expected_weights_file(spec.name, trunk_shape, head))
    if keras_weights == "imagenet" and fetch_key in _FETCH_FAILED:
        # Already failed in this process: do not wait for another network timeout.
        message = _FETCH_FAILED[fetch_key]
        if not allow_random_init:
            raise WeightsUnavailableError(message)
        warnings.warn(f"{message} Building with random weights (allow_random_init=True).", stacklevel=2)
        keras_weights, weights_label = None, "random (imagenet unavailable)"
    if keras_weights == "imagenet" and not spec.imagenet:
        err = WeightsUnavailableError(_unavailable_message(spec, trunk_shape, head, None))
        if not allow_random_init:
            raise err
        warnings.warn(f"{err} Building with random weights (allow_random_init=True).", stacklevel=2)
        keras_weights, weights_label = None, "random (imagenet unavailable)"
    local_file = None
    if keras_weights == "imagenet" and spec.imagenet:
        # a file the user placed where Keras caches downloads: pass its path (get_file's hash check
        # would try to download again)
        local_file = applications.local_weights_file(spec.name, shape, head)
    try:
        built = call_builder(str(local_file) if local_file is not None else keras_weights)
    except Exception as err:  # noqa: BLE001 - keras raises a bare Exception when offline
        if keras_weights != "imagenet" or not applications.is_download_failure(err):
            raise
        message = _unavailable_message(spec, trunk_shape, head, err)
        _FETCH_FAILED[fetch_key] = message
        if not allow_random_init:
            raise WeightsUnavailableError(message) from err
        warnings.warn(f"{message} Building with random weights (allow_random_init=True).", stacklevel=2)
        weights_label = "random (imagenet unavailable)"
        built = call_builder(None)

    model = keras.Model(grey, built.outputs, name=spec.name)
    _rename_auto_layers(model)
    info = {
        "name": spec.name,
        "weights": weights_label,
        "weights_file": str(local_file) if local_file is not None else None,
        "input_shape": shape,
        "num_classes": int(num_classes),
        "output": spec.output,
        "output_units": 1 if spec.output == "sigmoid" else int(num_classes),
        "head": head,
        "head_layers": tuple(built.head_layers),
        "trainable": trainable,
        "last_conv": spec.last_conv,
        "input_scaling": spec.input_scaling,
        "input_layers": tuple(input_layer_names),
        "input_steps": spec.input_steps,
        "options": dict(options),
    }
    object.__setattr__(model, _INFO_ATTR, info)  # plain attribute: not tracked by Keras
    info["backbone_layers"] = len(backbone_layers(model))
    if weights_file is not None:
        _load_weights_file(model, weights_file)
    set_trainable(model, trainable)
    return model


def _load_weights_file(model: Any, path: Path) -> None:
    if path.name.endswith(".weights.h5"):
        model.load_weights(str(path), skip_mismatch=True)
    elif path.suffix in (".h5", ".hdf5"):
        model.load_weights(str(path), skip_mismatch=True, by_name=True)
    else:
        raise ValueError(
            "weights file must be a .weights.h5 (model.save_weights) or legacy .h5 file. "
            f"Received: weights={str(path)!r}"
        )


# ----------------------------------------------------------------------------------------------
# parameter table


def param_table(
    input_size: int | None = None,
    *,
    names: Sequence[str] | None = None,
    num_classes: int = 2,
    paper: bool = True,
) -> Any:
    """Parameter counts of registered models, side by side with the papers' counts.

    Builds every model with ``weights=None`` (slow for all models at paper size: a utility for
    notebooks and notes, not for tests).

    Args:
        input_size: square size for every model; ``None`` = each model's paper input size.
        names: models to include (default: all).
        num_classes: classes of the plain row of each model.
        paper: also add one row per paper count, built under that count's conditions
            (classes, head, trainable mode) so the numbers are comparable.

    Returns:
        A ``pandas.DataFrame`` with columns ``name``, ``input_size``, ``num_classes``, ``head``,
        ``trainable``, ``total_params``, ``trainable_params``, ``paper_params``,
        ``paper_counts``, ``paper_source``, ``ours_vs_paper`` (ours / paper of the counted kind).
    """
    import pandas as pd

    rows = []
    for model_name in names if names is not None else _all_names():
        spec = get_spec(model_name)
        size = spec.paper_input_size if input_size is None else int(input_size)
        channels = 1
        configs: list[tuple[int, str, str | int, PaperCount | None]] = []
        for pc in spec.paper_params if paper else ():
            configs.append((pc.num_classes, pc.head or spec.default_head, pc.trainable, pc))
        plain = (num_classes, spec.default_head, "all")
        if plain not in [c[:3] for c in configs]:
            configs.insert(0, (*plain, None))
        for classes, head_kind, mode, pc in configs:
            model = build(
                spec.name,
                input_shape=(size, size, channels),
                num_classes=classes,
                head=head_kind,
                trainable=mode,
                dropout=None,
            )
            info = build_info(model)
            ours = None
            if pc is not None:
                ours = info["total_params"] if pc.counts == "total" else info["trainable_params"]
            rows.append(
                {
                    "name": spec.name,
                    "input_size": size,
                    "num_classes": classes,
                    "head": head_kind,
                    "trainable": mode,
                    "total_params": info["total_params"],
                    "trainable_params": info["trainable_params"],
                    "paper_params": None if pc is None else pc.params,
                    "paper_counts": None if pc is None else pc.counts,
                    "paper_source": None if pc is None else pc.source,
                    "ours_vs_paper": None if pc is None else ours / pc.params,
                }
            )
            del model
    return pd.DataFrame(rows)


def info_dict(spec: ModelSpec) -> Mapping[str, Any]:
    """A JSON-friendly view of a spec (for ``osteo-tf list`` and reports)."""
    return {
        "name": spec.name,
        "family": spec.family,
        "description": spec.description,
        "paper_input_size": spec.paper_input_size,
        "min_input_size": spec.min_input_size,
        "default_head": spec.default_head,
        "heads": list(spec.heads),
        "last_conv": spec.last_conv,
        "input_scaling": spec.input_scaling,
        "output": spec.output,
        "channels": spec.channels,
        "imagenet": spec.imagenet,
        "paper_params": [pc.__dict__ for pc in spec.paper_params],
        "notes": spec.notes,
    }
