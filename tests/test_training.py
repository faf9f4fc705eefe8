import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")
import tensorflow as tf  # noqa: E402

from osteo_tf import training  # noqa: E402
from osteo_tf.config import seed_everything  # noqa: E402


def tiny_model(num_classes=2):
    inp = keras.Input((16, 16, 3), name="input")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="head_gap")(x)
    x = keras.layers.Dropout(0.1, name="head_dropout")(x)
    out = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out, name="tiny")


def tiny_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(0, 0.1, (n, 16, 16, 3)).astype("float32") + y[:, None, None, None] * 0.5
    return tf.data.Dataset.from_tensor_slices((x, np.eye(2, dtype="float32")[y])).batch(8)


REC = training.Recipe("adam", 1e-2, 0.0, 32, 3, None, "val_loss", "all")


def test_study_recipes_live_with_the_studies_and_overrides_are_checked():
    from dataclasses import replace

    from osteo_tf.workflows import study01, study02, study03, study04, study05

    r = study04.RECIPES["model4"]
    assert (r.batch_size, r.learning_rate, r.momentum, r.patience) == (48, 1e-4, 0.9, 15)
    assert replace(study01.RECIPES["transfer"], epochs=2).epochs == 2
    for module in (study01, study02, study03, study04, study05):
        assert module.RECIPES and all(isinstance(v, training.Recipe) and v.source for v in module.RECIPES.values())
    assert not hasattr(training, "RECIPES"), "study facts live with the studies"
    with pytest.raises(TypeError, match="epoch"):
        replace(study01.RECIPES["transfer"], epoch=2)


def test_train_writes_run_folder(tmp_path):
    seed_everything(0)
    model, res = training.train(tiny_model(), tiny_data(), tiny_data(seed=1), rec=REC, run_dir=tmp_path)
    assert res.epochs_run == 3 and len(res.epoch_seconds) == 3
    assert (tmp_path / "best.keras").exists() and (tmp_path / "config.json").exists()
    hist = (tmp_path / "history.csv").read_text().splitlines()
    assert hist[0].startswith("epoch") and len(hist) == 4
    assert json.loads((tmp_path / "result.json").read_text())["epochs_run"] == 3
    assert res.seconds_per_10_epochs > 0



def _event_files(folder):
    return sorted(folder.rglob("events.out.tfevents.*"))


def _scalar_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return set(acc.Tags()["scalars"]) | set(acc.Tags()["tensors"])


def test_train_writes_tensorboard_logs_into_the_run_folder(tmp_path):
    seed_everything(0)
    training.train(tiny_model(), tiny_data(), tiny_data(seed=1), rec=REC, run_dir=tmp_path)
    logs = tmp_path / training.TENSORBOARD_DIR
    assert _event_files(logs / "train") and _event_files(logs / "validation")
    assert {"epoch_loss", "epoch_accuracy", "epoch_epoch_seconds", "epoch_learning_rate"} <= _scalar_tags(logs / "train")
    assert "epoch_loss" in _scalar_tags(logs / "validation")
    # a fresh run in the same folder replaces the logs; no graph, histograms or profile are written
    first = _event_files(logs)
    training.train(tiny_model(), tiny_data(), tiny_data(seed=1), rec=REC, run_dir=tmp_path)
    assert len(_event_files(logs)) == len(first) == 2
    assert not list(logs.rglob("*.pb")) and not (logs / "plugins").exists()


def test_tensorboard_logs_do_not_change_the_weights(tmp_path):
    seed_everything(3)
    with_logs, _ = training.train(tiny_model(), tiny_data(), rec=REC, run_dir=tmp_path / "a")
    seed_everything(3)
    model = tiny_model()
    training.compile_model(model, REC)
    model.fit(tiny_data(), epochs=REC.epochs, verbose=0, shuffle=False)
    assert all(np.array_equal(x, y) for x, y in zip(with_logs.get_weights(), model.get_weights()))

def test_misspelled_monitor_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="val_acuracy"):
        training.train(tiny_model(), tiny_data(), tiny_data(), rec=REC, run_dir=tmp_path, monitor="val_acuracy")
    assert not (tmp_path / "history.csv").exists()


def test_nan_loss_raises_and_keeps_backup(tmp_path):
    # first epoch is healthy (a backup is written), the second diverges
    model = tiny_model()
    training.compile_model(model, REC)

    class Poison(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                w = self.model.get_layer("predictions").get_weights()
                self.model.get_layer("predictions").set_weights([np.full_like(a, np.nan) for a in w])

    orig_fit = model.fit
    model.fit = lambda *a, **k: orig_fit(*a, **{**k, "callbacks": k["callbacks"] + [Poison()]})
    with pytest.raises(training.TrainingDivergedError, match="backup"):
        training.train(model, tiny_data(), rec=REC, run_dir=tmp_path)
    assert any((tmp_path / "backup").iterdir())


class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_from_backup(tmp_path):
    seed_everything(0)
    model = tiny_model()
    training.compile_model(model, REC)

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise _Interrupt()

    cb = [keras.callbacks.BackupAndRestore(str(tmp_path / "backup")), Crash()]
    with pytest.raises(_Interrupt):
        model.fit(tiny_data(), epochs=4, callbacks=cb, verbose=0)
    # train() picks up the backup: epochs 2 and 3 remain
    _, res = training.train(tiny_model(), tiny_data(), rec=REC, run_dir=tmp_path, epochs=4)
    assert res.epochs_run == 2


def test_same_seed_gives_identical_weights(tmp_path):
    def run(d):
        seed_everything(7)
        m, _ = training.train(tiny_model(), tiny_data(), rec=REC, run_dir=d)
        return m.get_weights()

    a, b = run(tmp_path / "a"), run(tmp_path / "b")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_head_only_training_trains_head_and_freezes_backbone():
    seed_everything(0)
    model = tiny_model()
    conv_before = model.get_layer("conv1").get_weights()[0].copy()
    head_before = model.get_layer("predictions").get_weights()[0].copy()
    out = training.train_head_on_features(model, tiny_data(), tiny_data(seed=1), rec=REC, epochs=3)
    assert len(out["epoch_seconds"]) == 3
    np.testing.assert_array_equal(model.get_layer("conv1").get_weights()[0], conv_before)
    assert not np.array_equal(model.get_layer("predictions").get_weights()[0], head_before)
    with pytest.raises(ValueError, match="on-the-fly augmentation"):
        training.train_head_on_features(model, tiny_data(), rec=REC, augmented_on_the_fly=True)


def test_head_only_training_writes_tensorboard_logs_when_given_a_run_folder(tmp_path):
    seed_everything(0)
    out = training.train_head_on_features(tiny_model(), tiny_data(), tiny_data(seed=1), rec=REC, epochs=2,
                                          run_dir=tmp_path / "run")
    assert len(out["epoch_seconds"]) == 2
    logs = tmp_path / "run" / training.TENSORBOARD_DIR
    assert _event_files(logs / "train") and _event_files(logs / "validation")
    training.train_head_on_features(tiny_model(), tiny_data(), rec=REC, epochs=1, run_dir=tmp_path / "run")
    assert len(_event_files(logs)) == 1, "a new fit replaces the folder's logs"


def test_split_head_requires_named_layer():
    inp = keras.Input((4,))
    m = keras.Model(inp, keras.layers.Dense(2)(inp))
    with pytest.raises(ValueError, match="head_gap"):
        training.split_head(m)


def test_rotation_pretext_and_weight_transfer():
    imgs = np.arange(2 * 4 * 4, dtype="float32").reshape(2, 4, 4)
    x, y = training.rotation_pretext(imgs, seed=0)
    assert x.shape == (8, 4, 4) and y.shape == (8, 4)
    k = y.argmax(1)
    for xi, ki in zip(x, k):
        assert any(np.array_equal(xi, np.rot90(im, ki)) for im in imgs)
    src, dst = tiny_model(4), tiny_model(2)
    copied = training.transfer_weights(src, dst)
    assert copied == ["conv1"]
    np.testing.assert_array_equal(dst.get_layer("conv1").get_weights()[0], src.get_layer("conv1").get_weights()[0])


def test_training_under_two_device_strategy():
    code = textwrap.dedent("""
        import numpy as np, tensorflow as tf, keras, tempfile
        from osteo_tf import training
        strategy = training.cpu_strategy(2)
        assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
        def build():
            inp = keras.Input((8, 8, 3))
            x = keras.layers.GlobalAveragePooling2D(name="head_gap")(inp)
            return keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="predictions")(x))
        x = np.random.default_rng(0).random((16, 8, 8, 3), dtype=np.float32)
        y = np.eye(2, dtype="float32")[np.arange(16) % 2]
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        rec = training.Recipe("adam", 1e-3, 0.0, 32, 2, None, "val_loss", "all")
        with tempfile.TemporaryDirectory() as d:
            m, res = training.train(build, ds, rec=rec, run_dir=d, strategy=strategy)
        assert res.epochs_run == 2
        print("REPLICAS", strategy.num_replicas_in_sync)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "REPLICAS 2" in out.stdout


def test_strategy_requires_builder(tmp_path):
    with pytest.raises(TypeError, match="strategy.scope"):
        training.train(tiny_model(), tiny_data(), rec=REC, run_dir=tmp_path, strategy=tf.distribute.get_strategy())


def test_configure_precision_rejects_unknown_policy():
    with pytest.raises(ValueError, match="Received: policy='half'"):
        training.configure_precision("half")
    assert training.configure_precision(None) == "float32"


def test_split_head_of_a_paper_head_without_pooling_cuts_after_the_backbone():
    # full-smoke found it: study 04 approach 2 with AlexNet's paper head (fc6, fc7, new predictions)
    from osteo_tf import models

    m = models.build("alexnet", input_shape=(64, 64, 1), num_classes=2, weights=None, head="paper",
                     dropout=0.4)
    features, head = training.split_head(m)
    assert features.output.shape[-1] == 4096 and features.layers[-1].name == "fc7"
    assert [layer.name for layer in head.layers[1:]] == ["head_dropout", "predictions"]
    assert head.get_layer("predictions") is m.get_layer("predictions")  # training the head trains m


def _bn_net(frozen_second: bool = False):
    import keras

    inp = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(4, 3, name="c2")(x)
    bn2 = keras.layers.BatchNormalization(name="bn2")
    x = bn2(x)
    bn2.trainable = not frozen_second
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x))


def test_recalibrated_batchnorm_holds_the_statistics_inference_feeds_each_layer():
    import keras

    seed_everything(0)
    net = _bn_net()
    x = np.random.default_rng(0).random((40, 16, 16, 1)).astype(np.float32) * 3 + 1
    for bn in (net.get_layer("bn1"), net.get_layer("bn2")):  # stale running averages
        bn.moving_mean.assign(np.full(4, 5.0, np.float32))
        bn.moving_variance.assign(np.full(4, 0.01, np.float32))
    out = training.recalibrate_batchnorm(net, x)
    assert out == {"recalibrated_layers": 2, "images": 40, "skipped": None}
    for name in ("bn1", "bn2"):  # bn2's input computed with bn1 already recalibrated, in inference mode
        a = keras.Model(net.inputs, net.get_layer(name).input).predict(x, verbose=0).astype(np.float64)
        np.testing.assert_allclose(net.get_layer(name).moving_mean.numpy(), a.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(net.get_layer(name).moving_variance.numpy(), a.var(axis=(0, 1, 2)), rtol=1e-4)
    # on the calibration images, inference now normalizes as training mode does with the whole set as one batch
    np.testing.assert_allclose(net(x, training=False).numpy(), net(x, training=True).numpy(), atol=2e-4)


def test_recalibration_leaves_frozen_layers_and_large_models_alone():
    seed_everything(0)
    net = _bn_net(frozen_second=True)
    before = net.get_layer("bn2").moving_mean.numpy().copy()
    x = np.random.default_rng(1).random((8, 16, 16, 1)).astype(np.float32)
    assert training.recalibrate_batchnorm(net, x)["recalibrated_layers"] == 1
    np.testing.assert_array_equal(net.get_layer("bn2").moving_mean.numpy(), before)
    skipped = training.recalibrate_batchnorm(_bn_net(), x, max_layers=1)
    assert skipped["recalibrated_layers"] == 0 and "2 trainable BatchNormalization layers (> 1)" in skipped["skipped"]


def _dropout_bn_net():
    import keras

    inp = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Dropout(0.5, name="early_dropout")(keras.layers.ReLU()(x))  # before bn2
    x = keras.layers.Conv2D(4, 3, name="c2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x))


def test_precise_batchnorm_in_one_chunk_equals_the_layerwise_recalibration_and_restores_the_layers():
    import keras

    seed_everything(0)
    x = np.random.default_rng(2).random((40, 16, 16, 1)).astype(np.float32) * 3 + 1
    flat = _dropout_bn_net()
    ref = keras.models.clone_model(flat)
    ref.set_weights(flat.get_weights())
    for bn in (flat.get_layer("bn1"), flat.get_layer("bn2")):
        bn.momentum = 0.9
    assert training.precise_batchnorm(flat, x, batch_size=64) == 2
    training.recalibrate_batchnorm(ref, x)  # inference mode, layer by layer: no dropout
    for name in ("bn1", "bn2"):  # bn2 equal too: dropout was off for the pass
        np.testing.assert_allclose(flat.get_layer(name).moving_mean.numpy(), ref.get_layer(name).moving_mean.numpy(),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(flat.get_layer(name).moving_variance.numpy(),
                                   ref.get_layer(name).moving_variance.numpy(), rtol=1e-3, atol=1e-5)
        assert flat.get_layer(name).momentum == 0.9  # restored after the pass
    assert flat.get_layer("early_dropout").rate == 0.5
    # several chunks average the chunk statistics: bn1's mean stays that of the whole set
    chunked = keras.models.clone_model(flat)
    chunked.set_weights(flat.get_weights())
    assert training.precise_batchnorm(chunked, x, batch_size=10) == 2
    np.testing.assert_allclose(chunked.get_layer("bn1").moving_mean.numpy(), flat.get_layer("bn1").moving_mean.numpy(),
                               rtol=1e-4, atol=1e-5)
    assert training.precise_batchnorm(_bn_net(), x, max_layers=1) == 0
    assert training.precise_batchnorm(_bn_net(), x[:0]) == 0


def test_precise_batchnorm_runs_before_each_validation_and_leaves_the_statistics_of_the_weights(tmp_path):
    import keras

    rng = np.random.default_rng(0)
    y = np.arange(48) % 2
    x = (rng.random((48, 16, 16, 1)) + y[:, None, None, None]).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.eye(2, dtype="float32")[y])).batch(8)

    def fitted(bn_images, run):
        seed_everything(0)
        net = _bn_net()
        rec = training.Recipe("adam", 1e-2, 0.0, 8, 2, None, "val_loss", "all")
        net, _ = training.train(net, ds, ds.take(2), rec=rec, run_dir=tmp_path / run, bn_images=bn_images)
        cfg = json.loads((tmp_path / run / "config.json").read_text())
        return net, cfg["precise_bn_images"]

    net, recorded = fitted(x[:32], "precise")
    assert recorded == 32
    kept = [net.get_layer(n).moving_mean.numpy().copy() for n in ("bn1", "bn2")]
    training.precise_batchnorm(net, x[:32])  # the best epoch was saved with the statistics of its weights
    for n, k in zip(("bn1", "bn2"), kept):
        np.testing.assert_allclose(net.get_layer(n).moving_mean.numpy(), k, rtol=1e-4, atol=1e-5)
    plain, recorded = fitted(None, "running")
    assert recorded == 0
    _, cfg = training.train(tiny_model(), tiny_data(), tiny_data(8), rec=REC, epochs=1, run_dir=tmp_path / "no-bn",
                            bn_images=np.zeros((4, 16, 16, 3), np.float32))
    assert json.loads((tmp_path / "no-bn" / "config.json").read_text())["precise_bn_images"] == 0  # nothing to set
    before = plain.get_layer("bn2").moving_mean.numpy().copy()
    training.precise_batchnorm(plain, x[:32])  # running averages of 12 steps differ from the statistics
    assert not np.allclose(plain.get_layer("bn2").moving_mean.numpy(), before, rtol=1e-3, atol=1e-3)


def test_precise_batchnorm_chunks_large_inputs_by_pixels(monkeypatch):
    calls = []
    net = _bn_net()
    real_call = type(net).__call__

    def spy(self, x, *a, **kw):
        calls.append(len(x))
        return real_call(self, x, *a, **kw)

    monkeypatch.setattr(type(net), "__call__", spy)
    monkeypatch.setattr(training, "PRECISE_BN_CHUNK_PIXELS", 16 * 16 * 5)  # 5 images of 16 px per chunk
    x = np.random.default_rng(0).random((12, 16, 16, 1)).astype(np.float32)
    assert training.precise_batchnorm(net, x) == 2
    assert calls == [5, 5, 2]
