"""Grad-CAM and Grad-CAM++ through tf-keras-vis, with a pure-TensorFlow fallback.

:class:`CamExplainer` clones the caller's model ONCE (``keras.models.clone_model`` +
``set_weights``), replaces the output activation of the CLONE by a linear one
(``ReplaceToLinear``) and hands the clone to tf-keras-vis ``Gradcam`` / ``GradcamPlusPlus`` with
an explicit ``penultimate_layer`` and ``seek_penultimate_conv_layer=False``. The caller's model
is never modified. Should tf-keras-vis raise (or return non-finite maps), the same maps are
computed by a ``GradientTape`` implementation with the same contract; :attr:`CamResult.backend`
says which path ran.

Scores: for a softmax output the score of class ``c`` is its logit; for a single-sigmoid output
(study 04) the score of class 1 is the logit and the score of class 0 its negative, so "class 0"
maps show what argues AGAINST class 1.

Maps are (N, H, W) float32, finite, in [0, 1] (each map min-max normalised; a constant map
becomes zeros), upsampled (bilinear, corners aligned) to the input size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from osteo_tf.explain._common import check_batch, output_kind, probabilities

log = logging.getLogger(__name__)

CAM_METHODS = ("gradcam", "gradcam++")
CAM_BACKENDS = ("auto", "tf-keras-vis", "tf")


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
        self.output_kind, self.num_classes = output_kind(model)
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
        x = check_batch(images)
        probs = probabilities(np.asarray(self.model(x, training=False)))
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
        x = check_batch(images)
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
