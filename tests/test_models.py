"""osteo_tf.models: registry, builders, heads, trainable modes, weights, parameter counts.

weights=None and tiny inputs throughout (each model at about its minimum input size).
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest

from osteo_tf import models
from osteo_tf.models import WeightsUnavailableError

EXPECTED_NAMES = [
    "resnet50", "inceptionv3", "mobilenetv2", "mobilenetv3small", "mobilenetv3large",
    "efficientnetb0", "densenet121", "vgg16", "xception", "alexnet", "googlenet", "squeezenet",
    "resnet18", "study01_cnn", "compact_cnn", "study03_multibranch",
    "study04_model1", "study04_model2", "study04_model3", "study04_model4",
]


def small_shape(name: str, channels: int = 1) -> tuple[int, int, int]:
    size = max(models.get_spec(name).min_input_size, 32)
    return (size, size, channels)


@functools.lru_cache(maxsize=None)
def built(name: str) -> keras.Model:
    """One small model per name, shared by the read-only tests (building is the slow part)."""
    spec = models.get_spec(name)
    classes = 2 if spec.output == "sigmoid" else 3
    return models.build(name, input_shape=small_shape(name), num_classes=classes)


def test_names_are_the_registry_in_order():
    assert models.names() == EXPECTED_NAMES


def test_names_are_the_family_specs_in_the_stated_order():
    from osteo_tf.models import applications, classic, studies

    families = applications.SPECS + classic.SPECS + studies.SPECS
    assert models.names() == [spec.name for spec in families]
    assert models.SPECS == families


def _osteo_tf_imports(path) -> set[str]:
    """The osteo_tf modules ``path`` imports, at any depth (function-level imports included)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m == "osteo_tf" or m.startswith("osteo_tf.")}


def test_models_modules_import_one_way():
    from pathlib import Path

    package = Path(models.__file__).parent
    modules = {p.stem for p in package.glob("*.py")} - {"__init__"}
    graph = {
        m: {i.split(".")[2] for i in _osteo_tf_imports(package / f"{m}.py") if i.count(".") >= 2} & modules
        for m in modules
    }
    assert _osteo_tf_imports(package / "spec.py") == set()  # the leaf
    for family in ("applications", "classic", "studies"):
        assert graph[family] == {"spec"}, family
        assert all(i.startswith("osteo_tf.models.spec") for i in _osteo_tf_imports(package / f"{family}.py"))
    order = []  # topological order: fails (no progress) on a cycle
    while len(order) < len(graph):
        ready = [m for m in graph if m not in order and graph[m] <= set(order)]
        assert ready, f"import cycle among {sorted(set(graph) - set(order))}"
        order += ready
    assert order[0] == "spec" and order[-1] == "registry"


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_every_model_predicts_probabilities(name):
    model = built(name)
    x = np.random.default_rng(0).random((2, *small_shape(name)), dtype=np.float32)
    probs = keras.ops.convert_to_numpy(model(x, training=False))  # grey in [0, 1]: the model scales
    if models.get_spec(name).output == "sigmoid":
        assert probs.shape == (2, 1)
        assert np.all((probs >= 0) & (probs <= 1))
    else:
        assert probs.shape == (2, 3)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_graph_is_flat_with_unique_names_and_a_4d_last_conv(name):
    model = built(name)
    layer_names = [layer.name for layer in model.layers]
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    assert len(layer_names) == len(set(layer_names))
    last = model.get_layer(models.get_spec(name).last_conv)
    assert len(last.output.shape) == 4


def test_layer_names_do_not_depend_on_what_was_built_before():
    first = [layer.name for layer in models.build("inceptionv3", input_shape=(75, 75, 1), num_classes=2).layers]
    keras.layers.Conv2D(1, 1)  # bump Keras' automatic name counters
    again = [layer.name for layer in models.build("inceptionv3", input_shape=(75, 75, 1), num_classes=2).layers]
    assert first == again
    assert first[:5] == ["input", "grey_to_rgb", "input_scaling", "conv2d", "batch_normalization"]


def test_saved_model_reloads_in_safe_mode_with_the_same_predictions(tmp_path):
    model = built("mobilenetv3small")
    path = tmp_path / "model.keras"
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(2).random((1, 32, 32, 1), dtype=np.float32)
    np.testing.assert_allclose(again(x, training=False), model(x, training=False), rtol=1e-5, atol=1e-6)
    assert [layer.name for layer in again.layers] == [layer.name for layer in model.layers]


def test_every_model_takes_one_grey_channel_and_repeats_it_in_its_graph():
    model = models.build("study01_cnn", input_shape=(32, 32, 1), num_classes=2)
    assert model.input_shape == (None, 32, 32, 1)
    assert model.predict(np.ones((2, 32, 32, 1), np.float32), verbose=0).shape == (2, 2)
    assert [layer.name for layer in model.layers[:3]] == ["input", "grey_to_rgb", "conv1_conv"]
    assert models.build_info(model)["input_layers"] == ["grey_to_rgb"]
    assert "grey_to_rgb" not in [layer.name for layer in models.backbone_layers(model)]


def test_softmax_head_layers_and_names():
    model = models.build("resnet18", input_shape=(32, 32, 1), num_classes=2, dropout=0.4, dense_units=16)
    info = models.build_info(model)
    assert info["head_layers"] == ["head_gap", "head_dense", "head_dropout", "predictions"]
    assert [layer.name for layer in model.layers[-4:]] == info["head_layers"]
    assert model.get_layer("head_dropout").rate == 0.4
    assert model.get_layer("head_dense").units == 16


def test_paper_heads():
    vgg = models.build("vgg16", input_shape=(32, 32, 1), num_classes=2, head="paper")
    assert vgg.get_layer("fc2").output.shape[-1] == 4096
    alex = models.build("alexnet", input_shape=(63, 63, 1), num_classes=2, head="softmax")
    assert "fc6" not in [layer.name for layer in alex.layers]
    mnv3 = models.build("mobilenetv3small", input_shape=(32, 32, 1), num_classes=2, head="paper")
    assert mnv3.get_layer("head_dense").units == 1024  # study 05's head
    squeeze = models.build("squeezenet", input_shape=(35, 35, 1), num_classes=2, head="paper")
    assert squeeze.layers[-1].name == "predictions"
    assert squeeze.get_layer("head_conv10").filters == 2


def test_study04_models_return_one_sigmoid_unit():
    spec = models.get_spec("study04_model3")
    model = built("study04_model3")
    assert spec.output == "sigmoid"
    assert model.output_shape == (None, 1)
    assert model.get_layer("predictions").activation is keras.activations.sigmoid
    assert models.build_info(model)["output_units"] == 1


@pytest.mark.parametrize(
    "name, shape",
    [("resnet18", (32, 32, 1)), ("study01_cnn", (32, 32, 1)), ("study04_model3", (32, 32, 1)), ("mobilenetv2", (32, 32, 1))],
)
def test_training_lowers_the_loss(name, shape):
    keras.utils.set_random_seed(0)
    spec = models.get_spec(name)
    model = models.build(name, input_shape=shape, num_classes=2)
    rng = np.random.default_rng(0)
    x = rng.random((2, *shape), dtype=np.float32)
    y = np.array([0, 1])
    if spec.output == "sigmoid":
        loss = "binary_crossentropy"
        y = y[:, None].astype("float32")
    else:
        loss = "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, run_eagerly=True)  # eager: faster than tracing for 6 tiny steps
    # training-mode losses: the first is computed before the first update; BatchNorm moving
    # statistics barely move in 6 steps, so inference-mode losses would not show the learning
    history = model.fit(x, y, epochs=6, batch_size=2, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_random_init_batchnorm_sets_every_batchnorm_momentum():
    model = models.build("study04_model3", input_shape=(32, 32, 1), num_classes=2)
    bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert [layer.momentum for layer in bn] == [0.99] * 3  # Keras' default until the rule is applied
    assert models.set_random_init_batchnorm(model) == 3
    assert [layer.momentum for layer in bn] == [models.RANDOM_INIT_BN_MOMENTUM] * 3 == [0.9] * 3
    with pytest.raises(ValueError, match="Received: momentum=1.5"):
        models.set_random_init_batchnorm(model, momentum=1.5)


def test_trainable_head_leaves_only_head_weights_trainable():
    model = models.build("resnet18", input_shape=(32, 32, 1), num_classes=2, trainable="head")
    trainable = {v.path.split("/")[0] for v in model.trainable_weights}
    assert trainable == {"predictions"}
    assert models.build_info(model)["trainable_params"] == 512 * 2 + 2
    assert all(not layer.trainable for layer in models.backbone_layers(model))


def test_trainable_int_freezes_exactly_the_first_n_backbone_layers():
    model = models.build("study04_model3", input_shape=(32, 32, 1), num_classes=2, trainable=5)
    backbone = models.backbone_layers(model)
    assert [layer.trainable for layer in backbone] == [False] * 5 + [True] * (len(backbone) - 5)
    assert [layer.name for layer in backbone[:5]] == [
        "block1_conv", "block1_bn", "block1_relu", "block1_pool", "block2_conv"
    ]
    frozen = 3 * 3 * 3 * 8 + 8 + 2 * 8 + 3 * 3 * 8 * 16 + 16  # block1 conv + bn gamma/beta + block2 conv
    everything = models.build_info(built("study04_model3"))["trainable_params"]
    assert models.build_info(model)["trainable_params"] == everything - frozen


def test_trainable_larger_than_backbone_is_an_error():
    with pytest.raises(ValueError, match="trainable=999"):
        models.build("study04_model3", input_shape=(32, 32, 1), num_classes=2, trainable=999)


@pytest.fixture
def offline(monkeypatch):
    """Make Keras' downloader fail the way it does without network, deterministically."""
    from keras.src.utils import file_utils

    def fail(fname, origin=None, *args, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", fail)


def test_imagenet_offline_raises_with_the_file_to_place(offline):
    with pytest.raises(WeightsUnavailableError, match=r"~/\.keras/models") as info:
        models.build("mobilenetv2", input_shape=(32, 32, 1), num_classes=2, weights="imagenet")
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5" in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_imagenet_offline_with_random_init_allowed_warns_and_records_it(offline):
    with pytest.warns(UserWarning, match="random weights"):
        model = models.build(
            "mobilenetv2", input_shape=(32, 32, 1), num_classes=2, weights="imagenet", allow_random_init=True
        )
    info = models.build_info(model)
    assert info["weights"] == "random (imagenet unavailable)"
    assert info["total_params"] == model.count_params()


def test_classic_nets_have_no_keras_imagenet_weights():
    with pytest.raises(WeightsUnavailableError, match="no ImageNet weights for resnet18"):
        models.build("resnet18", input_shape=(32, 32, 1), num_classes=2, weights="imagenet")


def test_expected_weights_file_names():
    assert models.expected_weights_file("resnet50", (224, 224, 3)) == "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert models.expected_weights_file("vgg16", (224, 224, 3), "paper") == "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    assert models.expected_weights_file("alexnet", (227, 227, 3)) is None


def test_weights_file_loads_by_layer_name_and_skips_the_new_head(tmp_path):
    source = models.build("study01_cnn", input_shape=(32, 32, 1), num_classes=3)
    path = tmp_path / "pretrained.weights.h5"
    source.save_weights(path)
    model = models.build("study01_cnn", input_shape=(32, 32, 1), num_classes=2, weights=str(path))
    np.testing.assert_array_equal(model.get_layer("conv1_conv").kernel.numpy(), source.get_layer("conv1_conv").kernel.numpy())
    assert models.build_info(model)["weights"] == f"file:{path}"


@pytest.mark.parametrize("name, reference", [
    ("resnet50", keras.applications.resnet50.preprocess_input),
    ("densenet121", keras.applications.densenet.preprocess_input),
    ("mobilenetv2", keras.applications.mobilenet_v2.preprocess_input),
    ("efficientnetb0", lambda x: x),  # EfficientNet normalises inside: fed [0, 255]
    ("vgg16", keras.applications.vgg16.preprocess_input),
])
def test_in_graph_scaling_matches_keras_applications_preprocess_input(name, reference):
    """The model's own input layers give what keras.applications' preprocess_input gives the
    grey image repeated to RGB in [0, 255] (and the NumPy reference scale_images agrees)."""
    model = built(name)
    trunk = keras.Model(model.input, model.get_layer("input_scaling").output)
    x = np.random.default_rng(1).random((2, *small_shape(name)), dtype=np.float32)
    rgb = np.repeat(x, 3, axis=-1)
    want = reference(rgb * 255.0)
    np.testing.assert_allclose(np.asarray(trunk(x)), want, rtol=1e-5, atol=1e-3)
    spec = models.get_spec(name)
    np.testing.assert_allclose(models.scale_images(rgb, spec.input_scaling), want, rtol=1e-5, atol=1e-3)
    assert spec.input_steps[-1].startswith("layer input_scaling")


# Exact trainable counts at 224x224x3, 2 classes, pinned so an accidental change fails.
# Paper: study 04 Table II 3.400e6 / 1.087e7 / 2.169e6 / 2.434e7 (truncated to 4 digits: ours
# agree); study 03 says "40.7k" but its own Table 1 builds 963,466.
PINNED_TRAINABLE = {
    "study04_model1": 3_400_081,
    "study04_model2": 10_872_845,
    "study04_model3": 2_169_545,
    "study04_model4": 24_349_521,
    "study03_multibranch": 963_466,
}


@pytest.mark.parametrize("name", sorted(PINNED_TRAINABLE))
def test_study_parameter_counts_are_pinned(name):
    model = models.build(name, input_shape=(224, 224, 1), num_classes=2)
    ours = models.build_info(model)["trainable_params"]
    assert ours == PINNED_TRAINABLE[name]
    paper = models.get_spec(name).paper_params[0].params
    if name.startswith("study04"):
        assert int(ours / 10 ** (len(str(ours)) - 4)) == int(round(paper / 10 ** (len(str(ours)) - 4)))
    else:
        assert ours / paper > 20  # the paper's 40.7k cannot be Table 1's network


def test_param_table_on_two_small_models():
    table = models.param_table(32, names=["study01_cnn", "study04_model3"])
    assert list(table["name"]) == ["study01_cnn", "study04_model3"]
    row = table.set_index("name").loc["study04_model3"]
    assert row["paper_params"] == 2.169e6
    assert row["trainable_params"] == models.build_info(built("study04_model3"))["trainable_params"]
    assert np.isnan(table.set_index("name").loc["study01_cnn", "paper_params"])


def test_study04_tunable_builds_with_default_hyperparameters():
    keras_tuner = pytest.importorskip("keras_tuner")
    hp = keras_tuner.HyperParameters()
    model = models.study04_tunable(hp, input_shape=(32, 32, 1))
    assert model.output_shape == (None, 1)
    assert hp.values["conv_blocks"] == 3
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-4)
    assert model.predict(np.zeros((2, 32, 32, 1), np.float32), verbose=0).shape == (2, 1)


def test_unknown_name_lists_the_names():
    with pytest.raises(ValueError, match="resnet18") as info:
        models.build("resnet19", input_shape=(32, 32, 1), num_classes=2)
    assert "Received: name='resnet19'" in str(info.value)


@pytest.mark.parametrize("num_classes", [1, 0, 2.0, True])
def test_num_classes_must_be_an_int_of_at_least_two(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        models.build("study01_cnn", input_shape=(32, 32, 1), num_classes=num_classes)


def test_sigmoid_models_need_two_classes():
    with pytest.raises(ValueError, match="one sigmoid output"):
        models.build("study04_model3", input_shape=(32, 32, 1), num_classes=3)


@pytest.mark.parametrize("shape", [(32, 32), (32, 32, 3, 1), (0, 32, 3), (32.0, 32, 3), "32"])
def test_malformed_input_shape_is_an_error(shape):
    with pytest.raises(ValueError, match="input_shape"):
        models.build("resnet18", input_shape=shape, num_classes=2)


@pytest.mark.parametrize("name", ["resnet18", "study01_cnn"])
def test_models_refuse_three_channel_input(name):
    with pytest.raises(ValueError, match="1 channel"):
        models.build(name, input_shape=(32, 32, 3), num_classes=2)


def test_too_small_input_names_the_minimum():
    with pytest.raises(ValueError, match=">= 75 px"):
        models.build("inceptionv3", input_shape=(64, 64, 1), num_classes=2)


def test_unknown_head_and_option_are_errors():
    with pytest.raises(ValueError, match="head must be one of"):
        models.build("resnet18", input_shape=(32, 32, 1), num_classes=2, head="mlp")
    with pytest.raises(TypeError, match="widen"):
        models.build("resnet18", input_shape=(32, 32, 1), num_classes=2, widen=2)


def test_an_option_the_builder_does_not_take_is_a_type_error():
    with pytest.raises(TypeError, match="dense_units"):
        models.build("study01_cnn", input_shape=(32, 32, 1), num_classes=2, dense_units=16)
    with pytest.raises(ValueError, match="Received: dense_units=0"):
        models.build("resnet18", input_shape=(32, 32, 1), num_classes=2, dense_units=0)


def test_build_info_rejects_foreign_models():
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="not built by osteo_tf"):
        models.build_info(plain)
