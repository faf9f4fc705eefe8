"""Paths, the profiles' runtime switches and seeding, shared by every module."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The repository root (the folder holding ``osteo_tf/``)."""


def data_dir() -> Path:
    """Where generated synthetic datasets live (``$OSTEO_TF_DATA`` or ``<root>/data``)."""
    return Path(os.environ.get("OSTEO_TF_DATA", PROJECT_ROOT / "data"))


def cache_dir() -> Path:
    """Where expensive preprocessing results are cached (``$OSTEO_TF_CACHE`` or ``<root>/cache``)."""
    return Path(os.environ.get("OSTEO_TF_CACHE", PROJECT_ROOT / "cache"))


def reports_dir() -> Path:
    """Default output folder of ``osteo-tf run`` (``<root>/reports``)."""
    return PROJECT_ROOT / "reports"


@dataclass(frozen=True)
class Profile:
    """How a study run executes: the runtime switches every study of a profile shares.

    What a profile means for one study (patients, image sizes, epochs, models) is written once,
    beside that study's ``Settings`` (``osteo_tf.workflows.studyNN.Settings.PROFILES``).

    Attributes:
        name: ``smoke``, ``quick``, ``full`` or ``full-smoke``.
        description: one line for reports and ``osteo-tf list``.
        mixed_precision: whether training switches on a mixed-precision policy.
        xla: the ``jit_compile`` value passed to ``Model.compile``: ``False`` or ``"auto"``.
            ``"auto"`` lets Keras decide, and Keras compiles with XLA only on a machine with a
            GPU, without a ``tf.distribute`` strategy, and with op determinism OFF. Every run
            here enables op determinism (:func:`seed_everything`), so XLA stays off: there is no
            deterministic XLA kernel for max-pool gradients on a GPU (tensorflow issue 69417,
            keras PR 20315), and most models of studies 01, 02 and 04 max-pool. Reproducibility
            (same seed, same numbers) is chosen over XLA's speed, by design (:data:`XLA_DECISION`).
        run_eagerly: train without tracing a graph (faster for a handful of tiny steps: tracing a
            MobileNetV2 step takes tens of seconds on 2 CPU cores).
    """

    name: str
    description: str
    mixed_precision: bool = False
    xla: bool | str = False
    run_eagerly: bool = False


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        "smoke",
        "tiny synthetic data, a few steps: proves the plumbing, not the science (CI)",
        run_eagerly=True,
    ),
    "quick": Profile(
        "quick",
        "synthetic data big enough to learn, small images and light models: all studies in ~20 min on 2 CPU cores",
    ),
    "full": Profile(
        "full",
        "the paper protocols (image sizes, epochs, batch sizes, all models); meant for a GPU",
        mixed_precision=True,
        xla="auto",
    ),
    "full-smoke": Profile(
        "full-smoke",
        "the full profile's models, image sizes, heads, recipes, precision and compilation on a handful of "
        "synthetic patients for one epoch: proves the paper protocol's code path on a CPU (CI)",
        mixed_precision=True,
        xla="auto",
    ),
}

XLA_DECISION = (
    "op determinism is on in every run (same seed, same numbers), and jit_compile='auto' lets Keras turn "
    "XLA off under determinism: GPU max-pool gradients have no deterministic XLA kernel (tensorflow "
    "issue 69417, keras PR 20315); Keras 3.15 drops jit_compile=True under determinism with a warning"
)
"""Why the ``full`` profiles compile with ``jit_compile="auto"`` (recorded in metrics.json ``runtime``)."""


def get_profile(name: str) -> Profile:
    """Return the profile called ``name``.

    Raises:
        ValueError: if ``name`` is not one of ``PROFILES``.
    """
    if name not in PROFILES:
        raise ValueError(
            f"Unknown profile. Expected one of {sorted(PROFILES)}. Received: profile={name!r}"
        )
    return PROFILES[name]


def seed_everything(seed: int, *, deterministic_ops: bool = True) -> None:
    """Seed Python, NumPy, TensorFlow and Keras; optionally enable deterministic TF ops.

    Same seed, same data, same CPU and same library versions then give identical weights and
    metrics. ``PYTHONHASHSEED`` is only effective when set before the interpreter starts (the
    Makefile sets it).

    Args:
        seed: a non-negative integer.
        deterministic_ops: call ``tf.config.experimental.enable_op_determinism()``.

    Raises:
        ValueError: if ``seed`` is not a non-negative int.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer. Received: seed={seed!r}")
    seed = int(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import keras
        import tensorflow as tf
    except ImportError:  # pragma: no cover - TF is a hard dependency, kept importable for tools
        return
    keras.utils.set_random_seed(seed)
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()
