"""LIME on grey radiographs: batched, seeded and silent.

:func:`lime_explain` runs ``lime.lime_image.LimeImageExplainer(random_state=seed)`` with an
explicit segmentation (SLIC or quickshift with fixed parameters), an explicit grey -> RGB
conversion, and our own neighbourhood sampler (``_BatchedLimeImageExplainer``): the same random
draws as lime's, perturbations built vectorized, predictions in large batches and no tqdm
progress bar (lime 0.2.0.1 has no ``progress_bar`` switch: its bar is unconditional).
:class:`ModelPredictor` is the ``classifier_fn`` for a Keras model: one compiled forward
function (``training.compiled_forward``: traced once per model, whatever the batch size) that
repeats the grey channel and applies the model's input scaling inside the graph.

This module is ``osteo_tf.explain.lime``; ``import lime`` inside it is an absolute import and
resolves to the third-party ``lime`` package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from osteo_tf import training
from osteo_tf.explain._common import probabilities

SEGMENTATIONS = ("slic", "quickshift")
DEFAULT_SEGMENTATION: tuple[str, dict] = (
    "slic",
    {"n_segments": 50, "compactness": 0.1, "sigma": 1.0, "start_label": 0},
)
"""SLIC on the grey image (``channel_axis=None``). Compactness 0.1 suits intensities in [0, 1]
(scikit-image's 10 is meant for Lab colour, where it makes a plain grid on a grey radiograph)."""
QUICKSHIFT_DEFAULTS = {"kernel_size": 4, "max_dist": 200, "ratio": 0.2, "sigma": 0.0}
"""lime's own quickshift parameters (used on the explicitly converted RGB image)."""


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


class ModelPredictor:
    """A lime ``classifier_fn`` (and batch predictor) for a Keras model.

    Takes (n, H, W, 3) RGB batches whose channels are identical (lime converts grey to RGB) or
    (n, H, W, 1) grey batches, keeps ONE channel (the grey image in [0, 1]), and predicts in
    chunks of ``batch_size`` with one compiled ``tf.function`` (traced once per model)
    that repeats the channel to the model's channel count and applies ``scale`` (the model's
    input scaling outside the model, if any; registry models scale inside and need none). Returns (n, C) probabilities
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
        self._forward = training.compiled_forward(model, grey_input=True, scale=scale)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        grey = np.asarray(rgb, dtype=np.float32)
        grey = grey[..., :1] if grey.ndim == 4 else grey[..., None]
        out = [np.asarray(self._forward(grey[i:i + self.batch_size])) for i in range(0, len(grey), self.batch_size)]
        return probabilities(np.concatenate(out, axis=0))


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
