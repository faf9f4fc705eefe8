"""Explanations: Grad-CAM / Grad-CAM++ (tf-keras-vis), LIME (lime), overlays, LIME-masked
datasets (study 05), sanity metrics, and the ``osteo-tf predict`` helper.

Everything that touches tf-keras-vis or lime lives here, behind one adapter each
(``/work/shared/reliability.md`` lists their traps on our stack):

* :class:`CamExplainer` clones the caller's model ONCE (``keras.models.clone_model`` +
  ``set_weights``), replaces the output activation of the CLONE by a linear one
  (``ReplaceToLinear``) and hands the clone to tf-keras-vis ``Gradcam`` / ``GradcamPlusPlus``
  with an explicit ``penultimate_layer`` and ``seek_penultimate_conv_layer=False``. The caller's
  model is never modified. Should tf-keras-vis raise (or return non-finite maps) the same maps
  are computed by a pure-TensorFlow ``GradientTape`` implementation with the same contract;
  :attr:`CamResult.backend` says which path ran.
* Scores: for a softmax output the score of class ``c`` is its logit; for a single-sigmoid
  output (study 04) the score of class 1 is the logit and the score of class 0 its negative, so
  "class 0" maps show what argues AGAINST class 1.
* :func:`lime_explain` runs ``lime.lime_image.LimeImageExplainer(random_state=seed)`` with an
  explicit segmentation (SLIC or quickshift with fixed parameters), an explicit grey -> RGB
  conversion, and our own neighbourhood sampler (:class:`_BatchedLimeImageExplainer`): the same
  random draws as lime's, perturbations built vectorized, predictions in large batches and no
  tqdm progress bar (lime 0.2.0.1 has no ``progress_bar`` switch: its bar is unconditional).

Maps are (N, H, W) float32, finite, in [0, 1] (each map min-max normalised; a constant map
becomes zeros), upsampled (bilinear, corners aligned) to the input size.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

CAM_METHODS = ("gradcam", "gradcam++")
CAM_BACKENDS = ("auto", "tf-keras-vis", "tf")
SEGMENTATIONS = ("slic", "quickshift")
DEFAULT_SEGMENTATION: tuple[str, dict] = (
    "slic",
    {"n_segments": 50, "compactness": 0.1, "sigma": 1.0, "start_label": 0},
)
"""SLIC on the grey image (``channel_axis=None``). Compactness 0.1 suits intensities in [0, 1]
(scikit-image's 10 is meant for Lab colour, where it makes a plain grid on a grey radiograph)."""
QUICKSHIFT_DEFAULTS = {"kernel_size": 4, "max_dist": 200, "ratio": 0.2, "sigma": 0.0}
"""lime's own quickshift parameters (used on the explicitly converted RGB image)."""
SIDECAR_SUFFIX = ".osteo_tf.json"
SIDECAR_FORMAT = "osteo_tf.model/1"
EXPLAIN_KINDS = (None, "gradcam", "gradcam++", "lime")

_KERNEL_RANK_MIN = 2  # variables of rank >= 2 are kernels (conv, depthwise, pointwise, dense)


# ---------------------------------------------------------------------------------------------
# small helpers


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Min-max normalise each map of a stack to [0, 1]; constant or non-finite maps -> zeros.

    Args:
        maps: (N, H, W) float array.

    Returns:
        (N, H, W) float32 in [0, 1], finite.
    """
    maps = np.asarray(maps, dtype=np.float64)
    out = np.zeros(maps.shape, np.float32)
    for i, m in enumerate(maps):
        if not np.all(np.isfinite(m)):
            continue
        lo, hi = float(m.min()), float(m.max())
        if hi - lo > 1e-12 * max(1.0, abs(hi)):
            out[i] = ((m - lo) / (hi - lo)).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def _upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear, corners aligned (what tf-keras-vis does with ``scipy.ndimage.zoom``)."""
    from scipy.ndimage import zoom

    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape[1:] == tuple(size):
        return maps
    factors = (1.0, size[0] / maps.shape[1], size[1] / maps.shape[2])
    out = zoom(maps, factors, order=1)
    # zoom rounds the output shape; guard against an off-by-one
    return out[:, : size[0], : size[1]]


def _check_batch(images: Any, name: str = "images") -> np.ndarray:
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[np.newaxis]
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a model-ready batch (N, H, W, C). Received: {name}.shape={x.shape}")
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite numbers. Received: dtype={x.dtype}")
    return x.astype(np.float32, copy=False)


def _output_kind(model: Any) -> tuple[str, int]:
    """("sigmoid", 2) for a single-unit output, ("softmax", C) otherwise."""
    units = int(model.outputs[0].shape[-1])
    return ("sigmoid", 2) if units == 1 else ("softmax", units)


def _probabilities(raw: np.ndarray) -> np.ndarray:
    """Model outputs -> (N, C) class probabilities (single sigmoid -> [1 - p, p])."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim == 1:
        raw = raw[:, None]
    if raw.shape[1] == 1:
        return np.concatenate([1.0 - raw, raw], axis=1)
    return raw


def last_conv_layer(model: Any) -> str:
    """The Grad-CAM feature layer: the spec's ``last_conv`` for models from
    ``osteo_tf.models.build``, else the last layer with a 4-D output whose spatial size is
    not 1 x 1 when one exists (else the last 4-D layer).

    Raises:
        ValueError: the model has no layer with a 4-D output.
    """
    info = getattr(model, "_osteo_tf_info", None)
    if isinstance(info, dict) and info.get("last_conv"):
        return str(info["last_conv"])
    candidates = []
    for layer in model.layers:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # layer without a single output
            continue
        if len(shape) == 4:
            candidates.append((layer.name, shape))
    if not candidates:
        raise ValueError(
            f"model {model.name!r} has no layer with a 4-D (N, h, w, c) output: Grad-CAM needs a "
            "convolutional feature map. Pass penultimate_layer=<layer name>."
        )
    spatial = [n for n, s in candidates if not (s[1] == 1 and s[2] == 1)]
    return spatial[-1] if spatial else candidates[-1][0]


# ---------------------------------------------------------------------------------------------
# Grad-CAM


@dataclass
class CamResult:
    """Grad-CAM output.

    Attributes:
        maps: (N, H, W) float32 in [0, 1], upsampled to the input.
        class_index: (N,) the class each map explains.
        method: ``"gradcam"`` or ``"gradcam++"``.
        backend: ``"tf-keras-vis"`` or ``"tf"`` (the GradientTape fallback).
        penultimate_layer: the feature layer used.
        fallback_reason: why the fallback ran (``None`` when tf-keras-vis did).
    """

    maps: np.ndarray
    class_index: np.ndarray
    method: str
    backend: str
    penultimate_layer: str
    fallback_reason: str | None = None


class CamExplainer:
    """Grad-CAM / Grad-CAM++ for one model, cloning it once.

    Args:
        model: a flat functional ``keras.Model`` with one 4-D input and one output (softmax
            over C classes, or a single sigmoid unit = probability of class 1). Never modified.
        penultimate_layer: name of the feature layer; ``None`` = :func:`last_conv_layer`.
        backend: ``"auto"`` (tf-keras-vis, fallback on failure), ``"tf-keras-vis"`` (no
            fallback: errors propagate) or ``"tf"`` (the GradientTape implementation only).

    Raises:
        ValueError: bad backend, unknown layer, or a layer without a 4-D output.
    """

    def __init__(self, model: Any, *, penultimate_layer: str | None = None, backend: str = "auto") -> None:
        if backend not in CAM_BACKENDS:
            raise ValueError(f"backend must be one of {CAM_BACKENDS}. Received: backend={backend!r}")
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError(
                f"model must have one input and one output. Received: {len(model.inputs)} inputs, "
                f"{len(model.outputs)} outputs"
            )
        self.model = model
        self.backend = backend
        self.penultimate_layer = penultimate_layer or last_conv_layer(model)
        try:
            layer = model.get_layer(self.penultimate_layer)
        except ValueError:
            raise ValueError(
                f"penultimate_layer {self.penultimate_layer!r} is not a layer of {model.name!r}. "
                f"Received: penultimate_layer={penultimate_layer!r}"
            ) from None
        if len(layer.output.shape) != 4:
            raise ValueError(
                f"penultimate_layer must have a 4-D output (N, h, w, c). Received: "
                f"penultimate_layer={self.penultimate_layer!r} with output shape {layer.output.shape}"
            )
        self.output_kind, self.num_classes = _output_kind(model)
        self._clone = None
        self._tkv_error: str | None = None
        self._grad_model = None

    # -- the clone used by tf-keras-vis -------------------------------------------------------
    def _linear_clone(self):
        if self._clone is None:
            import keras
            from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

            clone = keras.models.clone_model(self.model)
            clone.set_weights(self.model.get_weights())
            ReplaceToLinear()(clone)  # on the clone only
            self._clone = clone
        return self._clone

    def _tkv_cams(self, x: np.ndarray, classes: np.ndarray, method: str) -> np.ndarray:
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus

        cls = Gradcam if method == "gradcam" else GradcamPlusPlus
        # clone=False: the model handed over is already OUR clone (no modifier is applied).
        vis = cls(self._linear_clone(), model_modifier=None, clone=False)
        cam = vis(
            self._score_fn(classes),
            x,
            penultimate_layer=self.penultimate_layer,
            seek_penultimate_conv_layer=False,
            expand_cam=False,
            normalize_cam=False,
        )
        return np.asarray(cam, dtype=np.float32)

    def _score_fn(self, classes: np.ndarray):
        import tensorflow as tf

        idx = tf.constant(classes.astype(np.int32))
        if self.output_kind == "sigmoid":
            sign = tf.constant(np.where(classes == 1, 1.0, -1.0).astype(np.float32))
            return lambda out: sign * tf.reshape(out, (-1,))
        return lambda out: tf.gather(out, idx, axis=1, batch_dims=1)

    # -- the GradientTape fallback ------------------------------------------------------------
    def _logits(self, pre, layer):
        """The linear part of the output layer applied to its input (no model is modified)."""
        import keras
        from keras import ops

        if isinstance(layer, keras.layers.Dense):
            y = ops.matmul(pre, layer.kernel)
            return y + layer.bias if layer.use_bias else y
        if isinstance(layer, keras.layers.Activation):
            return pre
        # unknown output layer: invert its activation
        out = layer(pre)
        act = getattr(getattr(layer, "activation", None), "__name__", "")
        if act == "sigmoid" or self.output_kind == "sigmoid":
            out = ops.clip(out, 1e-7, 1 - 1e-7)
            return ops.log(out) - ops.log(1 - out)
        return ops.log(ops.clip(out, 1e-12, 1.0))

    def _tf_cams(self, x: np.ndarray, classes: np.ndarray, method: str) -> np.ndarray:
        import keras
        import tensorflow as tf

        out_layer = self.model.layers[-1]
        if self._grad_model is None:
            self._grad_model = keras.Model(
                self.model.inputs, [self.model.get_layer(self.penultimate_layer).output, out_layer.input]
            )
        score_fn = self._score_fn(classes)
        xt = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            feats, pre = self._grad_model(xt, training=False)
            tape.watch(feats)
            score = score_fn(self._logits(pre, out_layer))
        grads = tape.gradient(score, feats)
        feats, grads = feats.numpy().astype(np.float64), grads.numpy().astype(np.float64)
        if method == "gradcam":
            weights = grads.mean(axis=(1, 2), keepdims=True)
        else:  # Grad-CAM++ (Chattopadhay et al. 2018); exp(score) cancels after normalisation
            g2, g3 = grads**2, grads**3
            denom = 2.0 * g2 + feats.sum(axis=(1, 2), keepdims=True) * g3
            denom = np.where(denom != 0.0, denom, 1.0)
            alphas = g2 / denom
            norm = alphas.sum(axis=(1, 2), keepdims=True)
            alphas = alphas / np.where(norm != 0.0, norm, 1.0)
            weights = (np.maximum(grads, 0.0) * alphas).sum(axis=(1, 2), keepdims=True)
        return np.maximum((feats * weights).sum(axis=-1), 0.0).astype(np.float32)

    # -- public -------------------------------------------------------------------------------
    def predicted_class(self, images: np.ndarray) -> np.ndarray:
        """The predicted class of each image (from the model's own output; nothing modified)."""
        x = _check_batch(images)
        probs = _probabilities(np.asarray(self.model(x, training=False)))
        return probs.argmax(axis=1).astype(np.int64)

    def explain(self, images: Any, *, class_index: int | Sequence[int] | None = None,
                method: str = "gradcam") -> CamResult:
        """Maps for a batch.

        Args:
            images: (N, H, W, C) model-ready float batch (already scaled for the model).
            class_index: class to explain, one int or one per image; ``None`` = predicted class.
            method: ``"gradcam"`` or ``"gradcam++"``.

        Returns:
            A :class:`CamResult`.

        Raises:
            ValueError: bad method or class index.
        """
        if method not in CAM_METHODS:
            raise ValueError(f"method must be one of {CAM_METHODS}. Received: method={method!r}")
        x = _check_batch(images)
        n = x.shape[0]
        if class_index is None:
            classes = self.predicted_class(x)
        else:
            classes = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (n,)).copy()
            if classes.ndim != 1 or np.any(classes < 0) or np.any(classes >= self.num_classes):
                raise ValueError(
                    f"class_index must be in [0, {self.num_classes - 1}] (one int or one per image). "
                    f"Received: class_index={class_index!r}"
                )
        backend, reason, raw = self.backend, None, None
        if backend in ("auto", "tf-keras-vis"):
            try:
                if self._tkv_error is not None and backend == "auto":
                    raise RuntimeError(self._tkv_error)
                raw = self._tkv_cams(x, classes, method)
                if not np.all(np.isfinite(raw)):
                    raise FloatingPointError("tf-keras-vis returned non-finite maps")
                backend = "tf-keras-vis"
            except Exception as err:  # noqa: BLE001 - any failure of the library -> fallback
                if backend == "tf-keras-vis":
                    raise
                reason = f"{type(err).__name__}: {err}"
                if not isinstance(err, FloatingPointError):
                    self._tkv_error = reason  # do not retry a library that cannot run this model
                log.warning("tf-keras-vis failed on %s (%s); using the GradientTape fallback",
                            self.model.name, reason)
                raw = None
        if raw is None:
            raw = self._tf_cams(x, classes, method)
            backend = "tf"
        maps = normalize_maps(_upsample(raw, x.shape[1:3]))
        return CamResult(maps, classes, method, backend, self.penultimate_layer, reason)


def gradcam_result(model: Any, images: Any, *, class_index: int | Sequence[int] | None = None,
                   method: str = "gradcam", penultimate_layer: str | None = None,
                   backend: str = "auto") -> CamResult:
    """One-shot :meth:`CamExplainer.explain` (clones the model; reuse a
    :class:`CamExplainer` to explain several batches or methods)."""
    return CamExplainer(model, penultimate_layer=penultimate_layer, backend=backend).explain(
        images, class_index=class_index, method=method
    )


def gradcam(model: Any, images: Any, *, class_index: int | Sequence[int] | None = None,
            method: str = "gradcam", penultimate_layer: str | None = None,
            backend: str = "auto") -> np.ndarray:
    """Grad-CAM or Grad-CAM++ maps.

    Args:
        model: flat functional classifier (softmax, or one sigmoid unit); never modified.
        images: (N, H, W, C) model-ready batch (scaled as the model expects).
        class_index: the class to explain (int or one per image); ``None`` = predicted. For a
            single-sigmoid output class 1 uses the logit, class 0 its negative.
        method: ``"gradcam"`` or ``"gradcam++"``.
        penultimate_layer: feature layer name; ``None`` = :func:`last_conv_layer`.
        backend: see :class:`CamExplainer`.

    Returns:
        (N, H, W) float32 in [0, 1].
    """
    return gradcam_result(model, images, class_index=class_index, method=method,
                          penultimate_layer=penultimate_layer, backend=backend).maps


# ---------------------------------------------------------------------------------------------
# LIME


@dataclass
class LimeResult:
    """A LIME explanation of one grey image.

    Attributes:
        mask: (H, W) bool, the selected superpixels.
        segments: (H, W) int, superpixel labels 0..S-1.
        weights: (S,) float, the local linear model's weight of each superpixel for ``label``.
        label: the explained class.
        score: R^2 of the local linear model on the weighted neighbourhood.
        probabilities: (C,) the model's probabilities on the unperturbed image.
        seed: the seed used.
        segmentation: (algorithm, parameters) used.
    """

    mask: np.ndarray
    segments: np.ndarray
    weights: np.ndarray
    label: int
    score: float
    probabilities: np.ndarray
    seed: int
    segmentation: tuple[str, dict] = field(default_factory=lambda: DEFAULT_SEGMENTATION)


def _lime_classes():
    from lime.lime_image import LimeImageExplainer

    class _BatchedLimeImageExplainer(LimeImageExplainer):
        """lime's explainer with a vectorized, batched, silent ``data_labels``.

        Draws the same random on/off matrix as lime (``random_state.randint(0, 2, ...)``, row 0
        all on), so results equal lime's for the same seed; builds each batch of perturbed
        images at once and never shows a progress bar.
        """

        def data_labels(self, image, fudged_image, segments, classifier_fn, num_samples, batch_size=10):
            n_features = np.unique(segments).shape[0]
            data = self.random_state.randint(0, 2, num_samples * n_features).reshape((num_samples, n_features))
            data[0, :] = 1
            onehot = (segments[np.newaxis] == np.arange(n_features)[:, None, None]).astype(np.float32)
            # float32 batches: the grey values come from float32 images, so nothing is lost. A
            # ModelPredictor takes ONE channel (it repeats and scales inside its compiled graph),
            # which builds a third of the pixels; any other classifier_fn gets lime's RGB.
            grey_ok = isinstance(classifier_fn, ModelPredictor)
            image32, fudged32 = image.astype(np.float32), fudged_image.astype(np.float32)
            if grey_ok:
                image32, fudged32 = image32[..., :1], fudged32[..., :1]
            labels = []
            for start in range(0, num_samples, batch_size):
                rows = data[start:start + batch_size]
                off = np.tensordot(1 - rows.astype(np.float32), onehot, axes=(1, 0)) > 0.5  # (b, H, W)
                batch = np.where(off[..., None], fudged32[None], image32[None])
                labels.append(np.asarray(classifier_fn(batch)))
            return data, np.concatenate(labels, axis=0)

    return _BatchedLimeImageExplainer


def make_segmentation_fn(segmentation: tuple[str, Mapping] | Callable = DEFAULT_SEGMENTATION) -> Callable:
    """A segmentation function for lime, from ``(algorithm, params)``.

    Args:
        segmentation: ``("slic", params)`` (run on the grey channel, ``channel_axis=None``),
            ``("quickshift", params)`` (on the RGB image, as lime does) or a callable
            ``fn(rgb (H, W, 3)) -> (H, W) int``.

    Returns:
        ``fn(rgb) -> segments`` with labels relabelled to 0..S-1.

    Raises:
        ValueError: unknown algorithm.
    """
    if callable(segmentation):
        return segmentation
    try:
        algo, params = segmentation
    except (TypeError, ValueError):
        raise ValueError(
            f"segmentation must be (algorithm, params) or a callable. Received: segmentation={segmentation!r}"
        ) from None
    params = dict(params or {})
    if algo not in SEGMENTATIONS:
        raise ValueError(f"segmentation algorithm must be one of {SEGMENTATIONS}. Received: {algo!r}")
    from skimage.segmentation import quickshift, relabel_sequential, slic

    def fn(rgb: np.ndarray) -> np.ndarray:
        if algo == "slic":
            seg = slic(np.asarray(rgb)[..., 0], channel_axis=None, **params)
        else:
            seg = quickshift(np.asarray(rgb, dtype=np.float64), **{**QUICKSHIFT_DEFAULTS, **params})
        return relabel_sequential(np.asarray(seg, dtype=np.int64) - int(seg.min()))[0]

    return fn


_FORWARD: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _compiled_forward(model: Any, *, channels: int, scale: Callable | None = None):
    """One ``tf.function`` per (model, channels, scale), cached weakly on the model: explaining
    many images traces once. The function takes ONE grey channel, repeats it to ``channels``
    and applies ``scale`` inside the graph (``scale`` must accept tensors, as the registry's
    ``spec.preprocess`` does)."""
    import tensorflow as tf

    per_model = _FORWARD.setdefault(model, {})
    key = (channels, scale)
    fn = per_model.get(key)
    if fn is None:
        ref = weakref.ref(model)  # the cached function must not keep the model alive

        def forward(x):
            x = tf.repeat(x, channels, axis=-1) if channels != 1 else x
            if scale is not None:
                x = scale(x)
            return ref()(x, training=False)

        fn = tf.function(forward, reduce_retracing=True)
        per_model[key] = fn
    return fn


class ModelPredictor:
    """A lime ``classifier_fn`` (and batch predictor) for a Keras model.

    Takes (n, H, W, 3) RGB batches whose channels are identical (lime converts grey to RGB) or
    (n, H, W, 1) grey batches, keeps ONE channel (the grey image in [0, 1]), and predicts in
    chunks of ``batch_size`` with one compiled ``tf.function`` (traced once per input shape)
    that repeats the channel to the model's channel count and applies ``scale`` (the model's
    input scaling, e.g. ``spec.preprocess``) inside the graph. Returns (n, C) probabilities
    (single sigmoid -> [1 - p, p]).

    Args:
        model: the classifier (not modified).
        scale: callable on (n, H, W, C) float32 in [0, 1], NumPy arrays and tensors alike;
            ``None`` = identity.
        batch_size: images per forward pass.
    """

    def __init__(self, model: Any, *, scale: Callable | None = None, batch_size: int = 256) -> None:
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int. Received: batch_size={batch_size!r}")
        self.model, self.scale, self.batch_size = model, scale, int(batch_size)
        self.channels = int(model.inputs[0].shape[-1])
        self._forward = _compiled_forward(model, channels=self.channels, scale=scale)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        grey = np.asarray(rgb, dtype=np.float32)
        grey = grey[..., :1] if grey.ndim == 4 else grey[..., None]
        out = [np.asarray(self._forward(grey[i:i + self.batch_size])) for i in range(0, len(grey), self.batch_size)]
        return _probabilities(np.concatenate(out, axis=0))


def lime_explain(
    model_or_fn: Any,
    image: np.ndarray,
    *,
    num_samples: int = 1000,
    batch_size: int = 256,
    seed: int = 0,
    segmentation: tuple[str, Mapping] | Callable = DEFAULT_SEGMENTATION,
    top_label: int | None = None,
    num_features: int = 5,
    positive_only: bool = True,
    hide_color: float | None = None,
    scale: Callable | None = None,
) -> LimeResult:
    """LIME on one grey radiograph.

    Args:
        model_or_fn: a Keras model (wrapped in :class:`ModelPredictor` with ``scale``) or a
            ``classifier_fn(rgb (n, H, W, 3) float in [0, 1]) -> (n, C) probabilities``.
        image: (H, W) (or (H, W, 1)) float in [0, 1], grey. Converted to RGB explicitly
            (three identical channels) before lime sees it.
        num_samples: perturbed samples (lime's default 1000).
        batch_size: images per classifier call (lime's default is 10).
        seed: seeds ``LimeImageExplainer(random_state=seed)``: same seed, same explanation.
        segmentation: see :func:`make_segmentation_fn`.
        top_label: the class to explain; ``None`` = the predicted class.
        num_features: superpixels kept in the mask.
        positive_only: keep only superpixels with positive weight.
        hide_color: grey level of switched-off superpixels; ``None`` = each superpixel's mean.
        scale: the model's input scaling (used only when ``model_or_fn`` is a model).

    Returns:
        A :class:`LimeResult`.

    Raises:
        ValueError: bad image or options.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"image must be a grey (H, W) array. Received: image.shape={np.shape(image)}")
    img = img.astype(np.float64)
    if not np.all(np.isfinite(img)) or img.min() < -1e-6 or img.max() > 1 + 1e-6:
        raise ValueError("image must be finite and in [0, 1]. "
                         f"Received: range [{np.nanmin(img):.4g}, {np.nanmax(img):.4g}]")
    for name, v in (("num_samples", num_samples), ("batch_size", batch_size), ("num_features", num_features)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int. Received: {name}={v!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int. Received: seed={seed!r}")
    classifier = model_or_fn if not hasattr(model_or_fn, "inputs") else ModelPredictor(
        model_or_fn, scale=scale, batch_size=batch_size)
    if not callable(classifier):
        raise TypeError(f"model_or_fn must be a Keras model or a callable. Received: {type(model_or_fn)!r}")
    rgb = np.repeat(np.clip(img, 0.0, 1.0)[..., None], 3, axis=-1)  # explicit grey -> RGB
    seg_fn = make_segmentation_fn(segmentation)
    probs = np.asarray(classifier(rgb[None]), dtype=np.float64)[0]
    label = int(np.argmax(probs)) if top_label is None else int(top_label)
    if not 0 <= label < probs.shape[0]:
        raise ValueError(f"top_label must be in [0, {probs.shape[0] - 1}]. Received: top_label={top_label!r}")
    explainer = _lime_classes()(random_state=int(seed))
    exp = explainer.explain_instance(
        rgb, classifier, labels=(label,), hide_color=hide_color, top_labels=None,
        num_features=100000, num_samples=int(num_samples), batch_size=int(batch_size),
        segmentation_fn=seg_fn, random_seed=int(seed),
    )
    segments = np.asarray(exp.segments)
    weights = np.zeros(int(segments.max()) + 1, np.float64)
    for f, w in exp.local_exp[label]:
        weights[int(f)] = float(w)
    _, mask = exp.get_image_and_mask(label, positive_only=positive_only, num_features=int(num_features),
                                     hide_rest=False)
    return LimeResult(
        mask=np.asarray(mask) != 0, segments=segments, weights=weights, label=label,
        score=float(exp.score), probabilities=probs, seed=int(seed),
        segmentation=segmentation if not callable(segmentation) else ("custom", {}),
    )


# ---------------------------------------------------------------------------------------------
# overlays


def _grey01(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        img = img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"image must be (H, W) grey. Received: image.shape={np.shape(image)}")
    lo, hi = float(img.min()), float(img.max())
    if lo < 0.0 or hi > 1.0:  # model-scaled input: show it min-max stretched
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img


def _resize_to(arr: np.ndarray, shape: tuple[int, int], *, nearest: bool) -> np.ndarray:
    if arr.shape == tuple(shape):
        return arr
    from skimage.transform import resize

    return resize(arr.astype(np.float64), shape, order=0 if nearest else 1, mode="edge",
                  anti_aliasing=False, preserve_range=True)


def overlay_rgb(image: np.ndarray, cam_or_mask: np.ndarray | None = None, *, alpha: float = 0.4,
                cmap: str = "jet", segments: np.ndarray | None = None) -> np.ndarray:
    """The overlay as an RGB array.

    Args:
        image: (H, W) grey in [0, 1] (other ranges are min-max stretched for display).
        cam_or_mask: (h, w) float map in [0, 1] (drawn as a ``cmap`` heatmap with ``alpha``) or
            bool mask (LIME: tinted green, its boundary in yellow); resized to the image.
        alpha: heatmap opacity.
        cmap: matplotlib colormap name.
        segments: optional superpixels whose boundaries are drawn thin (LIME).

    Returns:
        (H, W, 3) float in [0, 1].
    """
    import matplotlib

    grey = _grey01(image)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if cam_or_mask is None:
        return rgb
    arr = np.asarray(cam_or_mask)
    if arr.dtype == bool:
        from skimage.segmentation import find_boundaries, mark_boundaries

        mask = _resize_to(arr.astype(np.float64), grey.shape, nearest=True) > 0.5
        if segments is not None:
            seg = _resize_to(np.asarray(segments), grey.shape, nearest=True).astype(np.int64)
            rgb = mark_boundaries(rgb, seg, color=(0.55, 0.55, 0.55))
        rgb = np.where(mask[..., None], 0.6 * rgb + 0.4 * np.array([0.0, 1.0, 0.0]), rgb)
        rgb[find_boundaries(mask.astype(np.int64), mode="inner")] = (1.0, 1.0, 0.0)
        return np.clip(rgb, 0.0, 1.0)
    cam = np.clip(np.nan_to_num(_resize_to(arr.astype(np.float64), grey.shape, nearest=False)), 0.0, 1.0)
    heat = matplotlib.colormaps[cmap](cam)[..., :3]
    return np.clip((1.0 - alpha) * rgb + alpha * heat, 0.0, 1.0)


def overlay_figure(image: np.ndarray, cam: np.ndarray | None = None, lime: LimeResult | None = None,
                   *, title: str | None = None, cam_label: str = "Grad-CAM"):
    """A matplotlib figure: the radiograph, then the Grad-CAM heatmap and/or LIME mask over it.

    Args:
        image: (H, W) grey in [0, 1].
        cam: (H, W) map in [0, 1] or ``None``.
        lime: a :class:`LimeResult` or ``None``.
        title: figure title.
        cam_label: title of the heatmap panel.

    Returns:
        ``matplotlib.figure.Figure`` (not registered with pyplot: display it in a notebook or
        ``fig.savefig(...)``).
    """
    from matplotlib.figure import Figure

    panels = [("image", overlay_rgb(image))]
    if cam is not None:
        panels.append((cam_label, overlay_rgb(image, cam)))
    if lime is not None:
        panels.append((f"LIME (class {lime.label})", overlay_rgb(image, lime.mask, segments=lime.segments)))
    fig = Figure(figsize=(3.2 * len(panels), 3.4), layout="constrained")
    for i, (name, rgb) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


def save_overlay_png(image: np.ndarray, cam_or_mask: np.ndarray | None, path: str | os.PathLike, *,
                     segments: np.ndarray | None = None, alpha: float = 0.4) -> Path:
    """Write :func:`overlay_rgb` as an 8-bit RGB PNG (parent folders created).

    Returns:
        The written path.
    """
    from PIL import Image

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    rgb = overlay_rgb(image, cam_or_mask, segments=segments, alpha=alpha)
    Image.fromarray(np.round(rgb * 255).astype(np.uint8), mode="RGB").save(out, format="PNG")
    return out


# ---------------------------------------------------------------------------------------------
# sanity checks


def parse_bbox(bbox: str | Sequence[float]) -> tuple[int, int, int, int]:
    """``"x0,y0,x1,y1"`` or a 4-sequence -> ints (half-open: ``image[y0:y1, x0:x1]``)."""
    vals = [float(v) for v in bbox.split(",")] if isinstance(bbox, str) else [float(v) for v in bbox]
    if len(vals) != 4 or not (vals[2] > vals[0] and vals[3] > vals[1]):
        raise ValueError(f"bbox must be x0,y0,x1,y1 with x1 > x0 and y1 > y0. Received: bbox={bbox!r}")
    return tuple(int(round(v)) for v in vals)  # type: ignore[return-value]


def pointing_game(cam: np.ndarray, bbox: str | Sequence[float], *,
                  bbox_shape: tuple[int, int] | None = None) -> dict[str, float]:
    """How much of a map's energy falls inside a region of interest.

    Args:
        cam: (H, W) map, non-negative.
        bbox: ``"x0,y0,x1,y1"`` (half-open pixel box) or a 4-sequence.
        bbox_shape: (height, width) of the image the box refers to, when it differs from the
            map's (the box is rescaled).

    Returns:
        ``energy_in_roi`` (share of the map's sum inside the box), ``area_share`` (the box's
        share of the image), ``ratio`` (energy / area: > 1 = the map concentrates on the ROI;
        NaN for an all-zero map) and ``hit`` (1.0 if the map's maximum is inside the box).
    """
    m = np.asarray(cam, dtype=np.float64)
    if m.ndim != 2 or m.size == 0 or not np.all(np.isfinite(m)) or m.min() < 0:
        raise ValueError(f"cam must be a finite non-negative (H, W) map. Received: shape={m.shape}")
    x0, y0, x1, y1 = parse_bbox(bbox)
    if bbox_shape is not None:
        sy, sx = m.shape[0] / bbox_shape[0], m.shape[1] / bbox_shape[1]
        x0, x1 = int(np.floor(x0 * sx)), int(np.ceil(x1 * sx))
        y0, y1 = int(np.floor(y0 * sy)), int(np.ceil(y1 * sy))
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, m.shape[1]), min(y1, m.shape[0])
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"bbox lies outside the map of shape {m.shape}. Received: bbox={bbox!r}")
    total = m.sum()
    area = (x1 - x0) * (y1 - y0) / m.size
    energy = float(m[y0:y1, x0:x1].sum() / total) if total > 0 else float("nan")
    iy, ix = np.unravel_index(int(np.argmax(m)), m.shape)
    return {
        "energy_in_roi": energy,
        "area_share": float(area),
        "ratio": energy / area if total > 0 else float("nan"),
        "hit": float(y0 <= iy < y1 and x0 <= ix < x1),
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps; NaN when either is constant (undefined, not a pass)."""
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _nanmean(values) -> float:
    """Mean of the defined values; NaN when none is defined."""
    v = np.asarray(values, dtype=float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def kernel_layers(model: Any) -> list[str]:
    """Names of the layers with kernels (conv, depthwise, separable, dense), input to output."""
    return [l.name for l in model.layers if any(len(w.shape) >= _KERNEL_RANK_MIN for w in l.weights)]


def _randomize(layer: Any, rng: np.random.Generator) -> None:
    """Re-draw every kernel of ``layer`` ~ N(0, std of the trained kernel); biases kept."""
    new = []
    for w in layer.get_weights():
        if w.ndim >= _KERNEL_RANK_MIN:
            std = float(w.std()) or 0.05
            w = rng.normal(0.0, std, size=w.shape).astype(w.dtype)
        new.append(w)
    layer.set_weights(new)


def randomization_check(
    model: Any,
    images: Any,
    *,
    layers: Literal["all", "cascade"] = "all",
    seed: int = 0,
    method: str = "gradcam",
    class_index: int | Sequence[int] | None = None,
    penultimate_layer: str | None = None,
) -> dict[str, Any]:
    """Model-parameter randomization test (Adebayo et al. 2018) on a CLONE of ``model``.

    The maps of the trained model are compared (Spearman rank correlation, per image) with the
    maps of a clone whose kernels (every conv / depthwise / separable / dense layer) are
    re-drawn from N(0, std of the trained kernel). A faithful explanation changes: a map that
    survives randomization explains the image (edges, intensity), not the model.

    Args:
        model: the trained classifier (never modified).
        images: (N, H, W, C) model-ready batch.
        layers: ``"all"`` (every kernel layer at once) or ``"cascade"`` (from the output layer
            down, one more layer per step, as in the paper).
        seed: seeds the re-drawn weights.
        method: ``"gradcam"`` or ``"gradcam++"``.
        class_index: explained class; ``None`` = the TRAINED model's predicted class (kept
            fixed for the randomized models).
        penultimate_layer: feature layer (``None`` = :func:`last_conv_layer`).

    Returns:
        ``spearman``: (N,) per image for the fully randomized model; ``mean``: their mean;
        ``self_spearman``: mean correlation of the trained maps with the same maps recomputed on
        an un-randomized clone (must be 1.0: the check itself is deterministic); ``cascade``
        (``layers="cascade"`` only): a list of ``{"layer", "randomized", "mean"}`` per step;
        ``layers_randomized``: the kernel layers re-drawn (top first).

    Raises:
        ValueError: bad ``layers``.
    """
    import keras

    if layers not in ("all", "cascade"):
        raise ValueError(f'layers must be "all" or "cascade". Received: layers={layers!r}')
    x = _check_batch(images)
    base = CamExplainer(model, penultimate_layer=penultimate_layer)
    trained = base.explain(x, class_index=class_index, method=method)
    classes = trained.class_index
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    again = CamExplainer(clone, penultimate_layer=trained.penultimate_layer).explain(
        x, class_index=classes, method=method)
    self_corr = _nanmean([_spearman(a, b) for a, b in zip(trained.maps, again.maps)])
    rng = np.random.default_rng(seed)
    order = kernel_layers(clone)[::-1]  # top (output) first
    steps = [order[: k + 1] for k in range(len(order))] if layers == "cascade" else [order]
    cascade, per_image, done = [], np.zeros(len(x)), set()
    for chosen in steps:
        for name in chosen:
            if name not in done:
                _randomize(clone.get_layer(name), rng)
                done.add(name)
        rand = CamExplainer(clone, penultimate_layer=trained.penultimate_layer).explain(
            x, class_index=classes, method=method)
        per_image = np.array([_spearman(a, b) for a, b in zip(trained.maps, rand.maps)])
        cascade.append({"layer": chosen[-1], "randomized": len(chosen), "mean": _nanmean(per_image)})
    out: dict[str, Any] = {
        "spearman": per_image,
        "mean": _nanmean(per_image),
        "n_undefined": int(np.isnan(per_image).sum()),  # a constant map has no ranking to compare
        "self_spearman": self_corr,
        "layers_randomized": order,
        "backend": trained.backend,
    }
    if layers == "cascade":
        out["cascade"] = cascade
    return out


# ---------------------------------------------------------------------------------------------
# LIME-masked datasets (study 05)


def kfold_model_for(folds: Mapping[str, int] | pd.Series, fold_models: Mapping[int, Any], *,
                    name: str = "fold{k}") -> Callable[[pd.Series], tuple[str, Any]]:
    """``model_for`` for :func:`lime_masked_dataset` from a k-fold scheme.

    Args:
        folds: image path -> the fold it belongs to (it was held out of that fold's training).
        fold_models: fold k -> the model trained on every fold EXCEPT k.
        name: model id pattern (``{k}`` = fold).

    Returns:
        ``fn(row) -> (model_id, model)``: the model of the image's own fold, i.e. one that never
        saw it.

    Raises:
        KeyError (when called): an image without a fold, or a fold without a model.
    """
    folds = dict(folds.items())

    def model_for(row: pd.Series) -> tuple[str, Any]:
        k = folds[str(row["path"])]
        if k not in fold_models:
            raise KeyError(f"no model for fold {k} (image {row['path']})")
        return name.format(k=k), fold_models[k]

    return model_for


def lime_masked_dataset(
    manifest: pd.DataFrame | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model_for: Callable[[pd.Series], tuple[str, Any]] | Mapping[str, tuple[str, Any]],
    image_size: int | tuple[int, int],
    scale: Callable | Mapping[str, Callable | None] | None = None,
    steps: Sequence = (),
    trained_on: Mapping[str, set] | None = None,
    num_samples: int = 1000,
    batch_size: int = 256,
    seed: int = 0,
    segmentation: tuple[str, Mapping] = DEFAULT_SEGMENTATION,
    num_features: int = 5,
    positive_only: bool = True,
    hide_color: float | None = None,
    explain_label: Literal["predicted", "true"] = "predicted",
    class_names: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Write a new dataset where each image is multiplied by its LIME mask.

    The mask of each image comes from a model that never saw it: ``model_for(row)`` returns
    ``(model_id, model)`` (e.g. :func:`kfold_model_for`: for fold k, the model trained on the
    other folds). With ``trained_on`` (model_id -> the groups it was trained on) an image whose
    group the model saw raises ``ValueError``. The mask is computed at the model's input size
    (``image_size`` after ``steps``) and applied, nearest-neighbour upsampled, to the ORIGINAL
    image, so the masked dataset can be resized / split / augmented as before.

    Args:
        manifest: DataFrame or CSV with ``path``, ``label``, ``group`` (relative paths resolve
            against the CSV's folder).
        out_dir: the new dataset folder (``<label>/<stem>.png`` + ``manifest.csv``); must not
            be inside the source folders (the source is only read).
        model_for: callable ``row -> (model_id, model_or_classifier_fn)`` or a mapping
            path -> ``(model_id, model)``.
        image_size: the models' input size.
        scale: the models' input scaling (e.g. ``spec.preprocess``): one callable for every
            model, or a mapping model_id -> callable; ``None`` = identity.
        steps: deterministic preprocessing steps before the models (``osteo_tf.pipeline``).
        trained_on: optional leakage guard, model_id -> set of training groups.
        num_samples, batch_size, seed, segmentation, num_features, positive_only, hide_color:
            see :func:`lime_explain` (``seed`` is the same for every image).
        explain_label: ``"predicted"`` (LIME explains the model's prediction) or ``"true"``
            (the image's label; needs ``class_names``).
        class_names: ordered classes of the models' outputs (for ``explain_label="true"``).

    Returns:
        ``(manifest, skipped)``: the new manifest (``path`` relative to ``out_dir``, ``label``,
        ``group``, ``source_path``, ``mask_model``, ``lime_label``, ``lime_score``,
        ``mask_fraction``), also written to ``out_dir/manifest.csv``; and ``(path, reason)`` of
        the images that could not be read (skipped).

    Raises:
        ValueError: missing columns, ``out_dir`` inside a source folder, leakage.
    """
    from osteo_tf.io import ImageLoadError, load_xray, save_png
    from osteo_tf.pipeline import preprocess_image

    base = Path(".")
    if not isinstance(manifest, pd.DataFrame):
        base = Path(manifest).parent
        manifest = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    missing = [c for c in ("path", "label", "group") if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}. Columns: {list(manifest.columns)}")
    if explain_label not in ("predicted", "true"):
        raise ValueError(f'explain_label must be "predicted" or "true". Received: {explain_label!r}')
    if explain_label == "true" and not class_names:
        raise ValueError("explain_label='true' needs class_names")
    out = Path(out_dir).resolve()
    sources = [(base / p).resolve() for p in manifest["path"].astype(str)]
    for parent in {s.parent for s in sources}:
        if out == parent or parent.is_relative_to(out) or out.is_relative_to(parent):
            raise ValueError(f"out_dir must be outside the source folders. Received: out_dir={str(out_dir)!r}")
    lookup = model_for if callable(model_for) else (lambda row: model_for[str(row["path"])])
    predictors: dict[str, Any] = {}
    rows, skipped, used = [], [], set()
    for (_, row), src in zip(manifest.iterrows(), sources):
        model_id, model = lookup(row)
        model_id = str(model_id)
        if trained_on is not None and str(row["group"]) in set(map(str, trained_on.get(model_id, ()))):
            raise ValueError(
                f"leakage: model {model_id!r} was trained on group {row['group']!r}, which holds "
                f"{row['path']!r}; masks must come from a model that never saw the image"
            )
        try:
            original = load_xray(src)
        except ImageLoadError as exc:
            skipped.append((str(row["path"]), exc.reason))
            log.warning("skipping %s", exc)
            continue
        if model_id not in predictors:
            model_scale = scale.get(model_id) if isinstance(scale, Mapping) else scale
            predictors[model_id] = (ModelPredictor(model, scale=model_scale, batch_size=batch_size)
                                    if hasattr(model, "inputs") else model)
        small = preprocess_image(original, image_size=image_size, steps=steps)
        label = None
        if explain_label == "true":
            label = list(class_names).index(str(row["label"]))
        res = lime_explain(predictors[model_id], small, num_samples=num_samples, batch_size=batch_size,
                           seed=seed, segmentation=segmentation, top_label=label,
                           num_features=num_features, positive_only=positive_only, hide_color=hide_color)
        mask = _resize_to(res.mask.astype(np.float64), original.shape, nearest=True) > 0.5
        stem, k, rel = src.stem, 1, f"{row['label']}/{src.stem}.png"
        while rel in used:
            rel, k = f"{row['label']}/{stem}_{k}.png", k + 1
        used.add(rel)
        save_png(np.where(mask, original, 0.0).astype(np.float32), out / rel)
        rows.append({"path": rel, "label": row["label"], "group": row["group"], "source_path": str(row["path"]),
                     "mask_model": model_id, "lime_label": res.label, "lime_score": res.score,
                     "mask_fraction": float(mask.mean())})
    result = pd.DataFrame(rows, columns=["path", "label", "group", "source_path", "mask_model", "lime_label",
                                         "lime_score", "mask_fraction"])
    out.mkdir(parents=True, exist_ok=True)
    result.to_csv(out / "manifest.csv", index=False, lineterminator="\n")
    (out / "lime_masking.json").write_text(json.dumps({
        "num_samples": num_samples, "batch_size": batch_size, "seed": seed,
        "segmentation": [segmentation[0], dict(segmentation[1])], "num_features": num_features,
        "positive_only": positive_only, "hide_color": hide_color, "explain_label": explain_label,
        "image_size": image_size, "steps": [s if isinstance(s, str) else [s[0], dict(s[1])] for s in steps],
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "masked_by": result.groupby("mask_model")["path"].count().to_dict() if len(result) else {},
    }, indent=2, default=str) + "\n")
    return result, skipped


# ---------------------------------------------------------------------------------------------
# saved models and the predict helper


def save_model(model: Any, path: str | os.PathLike, *, class_names: Sequence[str],
               image_size: int | tuple[int, int], steps: Sequence = (), scale_name: str | None = None) -> Path:
    """Save a classifier as ``.keras`` plus the sidecar ``<path>.osteo_tf.json``.

    The sidecar holds what inference needs and the ``.keras`` file does not: the class names
    (output order), the input size, the deterministic preprocessing steps, the input scaling
    (a name from ``osteo_tf.models.SCALINGS``, e.g. ``"tf"``; ``None`` = images in [0, 1]),
    the channel count and the Grad-CAM feature layer.

    Args:
        model: the classifier.
        path: destination ending in ``.keras``.
        class_names: one per output class (2 for a single sigmoid unit).
        image_size: int (square) or (height, width).
        steps: preprocessing steps (names or (name, params) pairs).
        scale_name: input scaling name.

    Returns:
        The ``.keras`` path.

    Raises:
        ValueError: wrong suffix, class count not matching the output, unknown scaling.
    """
    from osteo_tf.models.registry import SCALINGS

    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"path must end with .keras. Received: path={str(path)!r}")
    kind, n = _output_kind(model)
    class_names = [str(c) for c in class_names]
    if len(class_names) != n or len(set(class_names)) != n:
        raise ValueError(f"class_names must be {n} distinct names for this model's {kind} output. "
                         f"Received: class_names={class_names!r}")
    if scale_name is not None and scale_name not in SCALINGS:
        raise ValueError(f"scale_name must be None or one of {SCALINGS}. Received: scale_name={scale_name!r}")
    size = [int(image_size)] * 2 if isinstance(image_size, (int, np.integer)) else [int(v) for v in image_size]
    try:
        last_conv = last_conv_layer(model)
    except ValueError:
        last_conv = None
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    meta = {
        "format": SIDECAR_FORMAT, "class_names": class_names, "image_size": size,
        "steps": [s if isinstance(s, str) else [s[0], dict(s[1] or {})] for s in steps],
        "scale_name": scale_name, "channels": int(model.inputs[0].shape[-1]), "output": kind,
        "last_conv": last_conv,
    }
    Path(str(path) + SIDECAR_SUFFIX).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_model(path: str | os.PathLike) -> tuple[Any, dict]:
    """Load a ``.keras`` model safely (``safe_mode=True``, ``compile=False``) and its metadata.

    Returns:
        ``(model, meta)``: meta from the sidecar, or derived from the model when there is none
        (classes ``class_0``..``class_{C-1}``, input size from the model, no steps, no scaling;
        ``meta["sidecar"]`` False).

    Raises:
        FileNotFoundError: no such file.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found. Received: model_path={str(path)!r}")
    model = keras.models.load_model(path, safe_mode=True, compile=False)
    kind, n = _output_kind(model)
    side = Path(str(path) + SIDECAR_SUFFIX)
    if side.is_file():
        meta = json.loads(side.read_text())
        meta["sidecar"] = True
    else:
        h, w = model.inputs[0].shape[1:3]
        if h is None or w is None:
            raise ValueError(f"{path} has no fixed input size and no {SIDECAR_SUFFIX} sidecar")
        meta = {"class_names": [f"class_{i}" for i in range(n)], "image_size": [int(h), int(w)], "steps": [],
                "scale_name": None, "channels": int(model.inputs[0].shape[-1]), "output": kind,
                "last_conv": None, "sidecar": False}
        warnings.warn(
            f"{path.name} has no {SIDECAR_SUFFIX} sidecar: classes are numbered, and images are fed in "
            "[0, 1] without the model's input scaling or preprocessing steps. Save models with "
            "osteo_tf.explain.save_model to keep them.", stacklevel=2)
    meta["steps"] = [s if isinstance(s, str) else (s[0], s[1]) for s in meta.get("steps", [])]
    return model, meta


def predict_files(
    model_path: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    *,
    explain: str | None = None,
    out_dir: str | os.PathLike,
    batch_size: int = 32,
    lime_samples: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Predict (and optionally explain) image files with a saved model (``osteo-tf predict``).

    Args:
        model_path: a ``.keras`` file (sidecar used when present, see :func:`load_model`).
        images: image files (anything ``osteo_tf.io.load_xray`` reads).
        explain: ``None``, ``"gradcam"``, ``"gradcam++"`` or ``"lime"``: one overlay PNG per
            image, ``<stem>_<explain>.png``, drawn on the preprocessed model-size image.
        out_dir: where ``predictions.csv`` and the overlays go (created).
        batch_size: images per forward pass.
        lime_samples: LIME samples per image.
        seed: LIME seed.

    Returns:
        ``(predictions, skipped)``: one row per readable image (``path``, ``prob_<class>`` per
        class, ``predicted``, and ``overlay`` when explaining), also written to
        ``out_dir/predictions.csv``; ``(path, reason)`` of every unreadable image (skipped).

    Raises:
        ValueError: bad ``explain``.
        FileNotFoundError: no model file.
    """
    from osteo_tf.io import ImageLoadError, load_xray
    from osteo_tf.models.registry import scale_images
    from osteo_tf.pipeline import preprocess_image

    if explain not in EXPLAIN_KINDS:
        raise ValueError(f"explain must be one of {EXPLAIN_KINDS}. Received: explain={explain!r}")
    model, meta = load_model(model_path)
    classes = list(meta["class_names"])
    size = tuple(meta["image_size"])
    scale_name = meta.get("scale_name")
    scale = (lambda x: scale_images(x, scale_name)) if scale_name else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    good, grey, skipped = [], [], []
    for p in map(str, images):
        try:
            grey.append(preprocess_image(load_xray(p), image_size=size, steps=meta["steps"]))
            good.append(p)
        except ImageLoadError as exc:
            skipped.append((p, exc.reason))
            log.warning("skipping %s", exc)
    columns = ["path", *[f"prob_{c}" for c in classes], "predicted"] + (["overlay"] if explain else [])
    if not good:
        df = pd.DataFrame(columns=columns)
        df.to_csv(out / "predictions.csv", index=False, lineterminator="\n")
        return df, skipped
    predictor = ModelPredictor(model, scale=scale, batch_size=batch_size)
    stack = np.stack(grey)
    probs = predictor(stack[..., None])
    df = pd.DataFrame({"path": good})
    for i, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, i]
    df["predicted"] = [classes[i] for i in probs.argmax(axis=1)]
    if explain:
        names: list[str] = []
        taken: set[str] = set()
        for p in good:
            stem, k, name = Path(p).stem, 1, f"{Path(p).stem}_{explain}.png"
            while name in taken:
                name, k = f"{stem}_{k}_{explain}.png", k + 1
            taken.add(name)
            names.append(name)
        if explain in ("gradcam", "gradcam++"):
            x = np.repeat(stack[..., None], predictor.channels, axis=-1)
            x = np.asarray(scale(x) if scale else x, dtype=np.float32)
            cam = CamExplainer(model, penultimate_layer=meta.get("last_conv") or None)
            for i in range(0, len(x), batch_size):
                maps = cam.explain(x[i:i + batch_size], method=explain).maps
                for j, m in enumerate(maps):
                    save_overlay_png(stack[i + j], m, out / names[i + j])
        else:
            for i, img in enumerate(stack):
                res = lime_explain(predictor, img, num_samples=lime_samples, batch_size=256, seed=seed)
                save_overlay_png(img, res.mask, out / names[i], segments=res.segments)
        df["overlay"] = names
    df = df[columns]
    df.to_csv(out / "predictions.csv", index=False, lineterminator="\n")
    return df, skipped
