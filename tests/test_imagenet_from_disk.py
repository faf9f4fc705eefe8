"""weights="imagenet" with the weights file already on disk, where the README tells users to put it.

The file is made here from the same architecture with random values (no network) and saved under
the exact name Keras would download, in ``$KERAS_HOME/models`` of a temporary KERAS_HOME: a fresh
interpreter then builds the registry model with ``weights="imagenet"`` and no random fallback.
The real ``~/.keras`` is never touched.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

MAKE_AND_LOAD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import h5py, numpy as np, keras
    from keras.src.legacy.saving import legacy_h5_format
    from osteo_tf import experiments, models

    home = Path(sys.argv[1])
    name = models.expected_weights_file("mobilenetv2", (96, 96, 1))
    (home / "models").mkdir(parents=True)
    keras.utils.set_random_seed(123)
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3))
    rng = np.random.default_rng(7)  # values no initialiser would produce: a load cannot pass by chance
    for layer in base.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0.5, 0.1, w.shape).astype(w.dtype) for w in layer.get_weights()])
    with h5py.File(home / "models" / name, "w") as f:  # the legacy .h5 layout of Keras' downloads
        legacy_h5_format.save_weights_to_hdf5_group(f, base)

    keras.utils.set_random_seed(0)
    model = models.build("mobilenetv2", input_shape=(96, 96, 1), num_classes=2, weights="imagenet",
                         allow_random_init=False)
    info = models.build_info(model)
    compared = 0
    for layer in base.layers:
        if not layer.weights:
            continue
        ours = model.get_layer(layer.name).get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(ours, layer.get_weights())), layer.name
        compared += 1
    json.dump({"file": name, "weights": info["weights"], "weights_file": info["weights_file"],
               "compared": compared}, open(home / "result.json", "w"))
""")


def test_imagenet_weights_are_loaded_from_keras_home_models(tmp_path):
    home = tmp_path / "keras_home"
    script = tmp_path / "load.py"
    script.write_text(MAKE_AND_LOAD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2",
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(script), str(home)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((home / "result.json").read_text())
    assert out["file"] == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
    assert out["weights"] == "imagenet"  # what the reports print: ImageNet, not random
    assert out["weights_file"] == str(home / "models" / out["file"])
    assert out["compared"] > 50  # every backbone layer with weights


def test_without_the_file_the_error_says_where_to_put_it(tmp_path, monkeypatch):
    from osteo_tf.models import applications

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_home"))
    assert applications.keras_models_dir() == tmp_path / "empty_home" / "models"
    assert applications.local_weights_file("resnet50", (224, 224, 3), "softmax") is None
    msg = applications.missing_weights_message("resnet50", (224, 224, 3), "softmax", "offline")
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg and str(tmp_path / "empty_home") in msg
