"""Small models and images shared by the explanation, plot and inference tests."""

from __future__ import annotations

import numpy as np


def tiny_cnn(size=32, channels=1, output="softmax", num_classes=2, seed=0):
    """Three convs (the last one ``last_conv``), GAP, a softmax or single-sigmoid ``predictions``."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, channels), name="input")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    h = keras.layers.MaxPooling2D(name="pool1")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.MaxPooling2D(name="pool2")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="last_conv")(h)
    h = keras.layers.GlobalAveragePooling2D(name="head_gap")(h)
    if output == "sigmoid":
        out = keras.layers.Dense(1, activation="sigmoid", name="predictions")(h)
    else:
        out = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(h)
    return keras.Model(inp, out, name=f"tiny_{output}")


def images(n, size, channels, seed=0):
    """(n, size, size, channels) float32 uniform noise in [0, 1)."""
    return np.random.default_rng(seed).random((n, size, size, channels)).astype(np.float32)


def check_maps(maps, n, size):
    """Maps are (n, size, size) float32, finite, in [0, 1]."""
    assert maps.shape == (n, size, size)
    assert maps.dtype == np.float32
    assert np.all(np.isfinite(maps))
    assert maps.min() >= 0.0 and maps.max() <= 1.0


def grey(size=32, seed=0):
    """A smooth grey test image in [0, 1] with a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    return np.clip(0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy) + 0.05 * rng.standard_normal((size, size)), 0, 1)
