"""Mixed precision: the output layer computes in float32, and Grad-CAM and LIME stay finite in [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from _explain_helpers import check_maps, grey  # noqa: E402

from osteo_tf import explain, models, training  # noqa: E402


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def policy(request):
    before = keras.mixed_precision.global_policy().name
    training.configure_precision(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy(before)


@pytest.mark.parametrize("name,options", [("compact_cnn", {"filters": (4, 8, 8, 8)}),
                                          ("squeezenet", {}),
                                          ("study04_model3", {})])
def test_output_layer_is_float32_under_mixed_precision(policy, name, options):
    model = models.build(name, input_shape=(48, 48, 1), num_classes=2, weights=None, **options)
    out = model.get_layer("predictions")
    assert out.dtype_policy.compute_dtype == "float32", out.dtype_policy
    assert model.get_layer(models.build_info(model)["last_conv"] or model.layers[1].name).compute_dtype != "float32"
    p = np.asarray(model(np.random.default_rng(0).random((4, 48, 48, 1), dtype=np.float32)))
    assert p.dtype == np.float32 and np.all(np.isfinite(p))
    if p.shape[1] > 1:
        assert np.allclose(p.sum(1), 1.0, atol=1e-6)  # a float16 softmax sums to 1 within 1e-3 only


def test_gradcam_and_lime_give_finite_maps_in_0_1_under_mixed_precision(policy):
    size = 32
    model = models.build("compact_cnn", input_shape=(size, size, 1), num_classes=2, weights=None,
                         filters=(4, 8, 8, 8))
    img = grey(size, seed=1).astype(np.float32)
    batch = img[None, :, :, None]  # grey: the model repeats the channel
    before = np.asarray(model(batch))
    for method in ("gradcam", "gradcam++"):
        maps = explain.gradcam(model, batch, method=method, class_index=1)
        check_maps(maps, 1, size)
    res = explain.lime_explain(model, img, num_samples=60, seed=0, top_label=1)
    assert np.all(np.isfinite(res.weights)) and np.all(np.isfinite(res.probabilities))
    assert np.all((res.probabilities >= 0) & (res.probabilities <= 1))
    lime_map = explain.normalize_maps(np.abs(res.weights)[res.segments][None].astype(np.float32))
    check_maps(lime_map, 1, size)
    assert np.array_equal(np.asarray(model(batch)), before)  # explaining left the model untouched
