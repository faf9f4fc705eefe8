"""Shared pytest setup: quiet TensorFlow, isolated cache and data folders."""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Tests never read or write the user's cache/data folders.
_TMP = tempfile.mkdtemp(prefix="osteo_tf_tests_")
os.environ.setdefault("OSTEO_TF_CACHE", os.path.join(_TMP, "cache"))
os.environ.setdefault("OSTEO_TF_DATA", os.path.join(_TMP, "data"))
