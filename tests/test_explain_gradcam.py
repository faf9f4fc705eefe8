"""Tests of osteo_tf.explain.gradcam: the tf-keras-vis adapter on every registry model, its fallback."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from _explain_helpers import check_maps, images, tiny_cnn  # noqa: E402

from osteo_tf import explain, models  # noqa: E402


def _feature_hw(model, layer):
    shape = model.get_layer(layer).output.shape
    return int(shape[1]), int(shape[2])


@pytest.mark.slow
@pytest.mark.parametrize("name", models.names())
def test_gradcam_every_registry_model(name, record_property):
    spec = models.get_spec(name)
    size = max(32, spec.min_input_size)
    keras.utils.set_random_seed(0)
    model = models.build(name, input_shape=(size, size, 1), num_classes=2)
    x = images(2, size, 1)  # grey in [0, 1]: the model repeats and scales it in its flat graph
    before = np.asarray(model(x, training=False))
    act_before = model.layers[-1].activation
    cam = explain.CamExplainer(model)
    assert cam.penultimate_layer == spec.last_conv
    assert cam.output_kind == spec.output
    # Grad-CAM for the predicted classes, Grad-CAM++ for an explicit class per image (both
    # classes, for softmax and single-sigmoid outputs alike)
    results = [cam.explain(x, method="gradcam"), cam.explain(x, method="gradcam++", class_index=[1, 0])]
    assert results[1].class_index.tolist() == [1, 0]
    for res in results:
        check_maps(res.maps, 2, size)
        # what runs on our stack (TF 2.21 / Keras 3.15): the library, never the fallback
        assert res.backend == "tf-keras-vis", res.fallback_reason
        assert res.fallback_reason is None
    record_property("gradcam_backend", results[0].backend)
    if _feature_hw(model, spec.last_conv) != (1, 1):
        # a spatial feature map gives a spatial explanation somewhere
        assert max(np.ptp(m) for res in results for m in res.maps) > 0
    after = np.asarray(model(x, training=False))
    assert np.array_equal(before, after)  # bitwise: the caller's model is untouched
    assert model.layers[-1].activation is act_before
    assert model.layers[-1].activation.__name__ == spec.output


def test_gradcam_sigmoid_class0_is_negative_logit():
    model = tiny_cnn(output="sigmoid")
    x = images(3, 32, 1)
    cam = explain.CamExplainer(model)
    assert cam.output_kind == "sigmoid" and cam.num_classes == 2
    m1 = cam.explain(x, class_index=1).maps
    m0 = cam.explain(x, class_index=0).maps
    check_maps(m1, 3, 32)
    check_maps(m0, 3, 32)
    # Grad-CAM weights of class 0 are the negated weights of class 1: the (ReLU-ed) maps
    # highlight complementary regions, never the same map
    assert not np.array_equal(m0, m1)
    assert model.layers[-1].activation.__name__ == "sigmoid"  # the caller's head is untouched


@pytest.mark.parametrize("method", explain.CAM_METHODS)
@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_fallback_matches_tf_keras_vis(method, output):
    model = tiny_cnn(output=output)
    x = images(3, 32, 1, seed=1)
    lib = explain.gradcam_result(model, x, method=method, backend="tf-keras-vis")
    tf_ = explain.gradcam_result(model, x, method=method, backend="tf")
    assert lib.backend == "tf-keras-vis" and tf_.backend == "tf"
    np.testing.assert_array_equal(lib.class_index, tf_.class_index)
    np.testing.assert_allclose(lib.maps, tf_.maps, atol=1e-4)


def test_auto_falls_back_when_tf_keras_vis_raises(monkeypatch):
    model = tiny_cnn()
    x = images(2, 32, 1)
    before = np.asarray(model(x, training=False))

    def broken(self, *args, **kwargs):
        raise AttributeError("'Functional' object has no attribute 'output_names'")

    monkeypatch.setattr(explain.CamExplainer, "_tkv_cams", broken)
    res = explain.gradcam_result(model, x, method="gradcam++")
    assert res.backend == "tf"
    assert "output_names" in res.fallback_reason
    check_maps(res.maps, 2, 32)
    assert np.array_equal(before, np.asarray(model(x, training=False)))
    with pytest.raises(AttributeError):
        explain.gradcam(model, x, backend="tf-keras-vis")


def test_gradcam_validates_arguments():
    model = tiny_cnn()
    x = images(1, 32, 1)
    with pytest.raises(ValueError, match="method"):
        explain.gradcam(model, x, method="scorecam")
    with pytest.raises(ValueError, match="class_index"):
        explain.gradcam(model, x, class_index=2)
    with pytest.raises(ValueError, match="penultimate_layer"):
        explain.gradcam(model, x, penultimate_layer="nope")
    with pytest.raises(ValueError, match="4-D"):
        explain.gradcam(model, x, penultimate_layer="head_gap")
    with pytest.raises(ValueError, match="backend"):
        explain.gradcam(model, x, backend="torch")


def test_last_conv_layer_auto_and_spec():
    assert explain.last_conv_layer(tiny_cnn()) == "last_conv"
    built = models.build("study04_model3", input_shape=(32, 32, 1), num_classes=2)
    assert explain.last_conv_layer(built) == models.get_spec("study04_model3").last_conv


def test_normalize_maps_constant_and_nan_become_zeros():
    maps = np.stack([np.full((3, 3), 2.0), np.arange(9.0).reshape(3, 3), np.full((3, 3), np.nan)])
    out = explain.normalize_maps(maps)
    assert np.array_equal(out[0], np.zeros((3, 3)))
    np.testing.assert_allclose(out[1], np.arange(9.0).reshape(3, 3) / 8.0, rtol=1e-6)
    assert np.array_equal(out[2], np.zeros((3, 3)))
