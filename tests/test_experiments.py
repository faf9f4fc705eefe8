"""experiments: kept test predictions, the claim's paired effects and the texture floor."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from osteo_tf import evaluation, experiments
from osteo_tf.config import get_profile
from osteo_tf.workflows import study02


def _context(tmp_path, class_names=("normal", "osteoporosis")):
    return experiments.Context(
        study="02-bm3d-resnet50", profile=get_profile("smoke"), seed=0, manifest=pd.DataFrame(),
        class_names=list(class_names), data={}, out_dir=tmp_path, image_size=32, epochs=1,
        settings=study02.Settings.for_profile("smoke"))


def _keep(ctx, experiment, model, y, prob, groups, **kw):
    record = {"experiment": experiment, "model": model, "protocol": "clean", "threshold": kw.pop("threshold", 0.5)}
    return experiments.keep_predictions(ctx, record, y, prob, groups, **kw)


def test_claim_compares_kept_predictions_pairs_them_and_says_whether_the_run_supports_it(tmp_path):
    ctx = _context(tmp_path)
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    groups = np.array([f"p{i}" for i in range(60)])
    good = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.15, 60), 0, 1)
    weak = np.clip(0.5 + rng.normal(0, 0.2, 60), 0, 1)
    a = _keep(ctx, "no-denoise", "m", y, weak, groups)
    b = _keep(ctx, "bm3d", "m", y, good, groups)
    comps = [experiments.Comparison("bm3d vs none", a, b, paper=0.05, paper_note="made up."),
             experiments.Comparison("none vs none", a, a, extra_metrics=()),
             experiments.Comparison("missing", a, ("bm3d", "other", "clean"))]
    table = experiments.claim(ctx, comps, n_boot=1000)
    rows = ctx.extra["claims"]
    assert [(r["claim"], r["metric"]) for r in rows] == [
        ("bm3d vs none", "accuracy"), ("bm3d vs none", "auc"), ("none vs none", "accuracy"),
        ("missing", "accuracy"), ("missing", "auc")]
    first = rows[0]
    ref = evaluation.paired_effect({"y_true": y, "y_prob": weak, "groups": groups},
                                   {"y_true": y, "y_prob": good, "groups": groups}, metric="accuracy",
                                   n_boot=1000, seed=0)
    assert first["effect"] == pytest.approx(ref["effect"]) and first["ci95"] == pytest.approx(ref["ci95"])
    assert first["primary"] and not rows[1]["primary"] and rows[1]["paper"] is None
    assert first["verdict"].startswith("Supported: bm3d m beats no-denoise m in accuracy")
    assert "paper's difference (+0.050) is outside" in first["verdict"]
    assert rows[2]["effect"] == 0.0 and rows[2]["verdict"].startswith("Not shown")
    assert rows[3]["verdict"].startswith("Not run in this profile") and rows[3]["effect"] is None
    assert list(table.columns) == ["comparison", "metric", "b", "a", "ours (b - a) [95% CI]", "paper (b - a)", "patients"]
    assert table["paper (b - a)"].tolist()[:2] == ["+0.050", "-"]
    summary = experiments.claim_summary(ctx).splitlines()
    assert len(summary) == 3 and summary[0].startswith("- **bm3d vs none**: Supported") and summary[0].endswith("made up.")


def test_verdict_refuses_to_judge_a_handful_of_patients():
    out = experiments.verdict(0.3, [0.1, 0.5], b="B", a="A", metric="auc", n_groups=4)
    assert out.startswith("Not testable: 4 test patients")
    assert experiments.verdict(-0.2, [-0.3, -0.1], b="B", a="A", metric="auc", n_groups=40).startswith("Contradicted")


def _texture_images(folder, n_per_class=24, size=48, seed=0):
    """Class 0: smooth (blurred) noise; class 1: rough (white) noise; one image per patient."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    rows = []
    for label, sigma in (("normal", 3.0), ("osteoporosis", 0.0)):
        for i in range(n_per_class):
            img = rng.random((size, size))
            img = gaussian_filter(img, sigma) if sigma else img
            img = (img - img.min()) / (np.ptp(img) + 1e-9)
            path = folder / f"{label}{i}.png"
            Image.fromarray((img * 255).astype(np.uint8)).save(path)
            rows.append({"path": str(path), "label": label, "group": f"{label}{i}"})
    m = pd.DataFrame(rows)
    m["split"] = np.where(np.arange(len(m)) % 3 == 0, "test", "train")
    return m


def test_texture_floor_fits_on_the_results_own_split_and_feeds_the_claim(tmp_path):
    ctx = _context(tmp_path)
    split = _texture_images(tmp_path)
    test = split[split["split"] == "test"]
    y = (test["label"] == "osteoporosis").to_numpy().astype(int)
    coin = np.full((len(test), 2), 0.5)
    key = _keep(ctx, "bm3d", "m", y, coin, test["group"].to_numpy(), split=split, image_size=48)
    floor = experiments.texture_floor(ctx, key)
    assert floor["experiment"] == "floor" and floor["model"] == experiments.FLOOR_MODEL
    assert floor["floor_of"] == list(key) and floor["n_test_groups"] == len(test)
    assert floor["auc"] > 0.9, "rough vs smooth texture is what the floor's features measure"
    assert ctx.extra["floor"] == [floor]
    fkey = tuple(floor["key"])
    assert np.array_equal(ctx.predictions[fkey].groups, test["group"].to_numpy())
    experiments.claim(ctx, [experiments.Comparison("m vs floor", fkey, key)], n_boot=500)
    assert ctx.extra["claims"][0]["verdict"].startswith("Contradicted: bm3d m is worse than the texture floor")
    ctx.results.append({"experiment": "bm3d", "model": "m", "protocol": "clean", "accuracy": 0.5, "auc": 0.5,
                        "balanced_accuracy": 0.5, "ci95": {}, "n_test_groups": len(test)})
    table = experiments.floor_table(ctx)
    assert table["model"].tolist() == ["bm3d m", "texture floor (logistic regression)"]
    with pytest.raises(KeyError, match="no kept predictions"):
        experiments.texture_floor(ctx, ("nope", "m", "clean"))


def test_results_table_shows_balanced_accuracy():
    rec = {"experiment": "E1", "model": "m", "protocol": "clean", "accuracy": 0.5, "balanced_accuracy": 0.62,
           "ci95": {"balanced_accuracy": [0.5, 0.7]}}
    table = experiments.results_table([rec])
    assert table.loc[0, "balanced_accuracy"].startswith("0.620 [0.50, 0.70]")


def _bn_case(tmp_path):
    import keras

    from osteo_tf import io, pipeline
    from osteo_tf.config import seed_everything

    seed_everything(0)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        label = ("normal", "osteoporosis")[i % 2]
        img = np.clip(rng.random((16, 16)) * 0.5 + 0.4 * (i % 2), 0, 1).astype(np.float32)
        io.save_png(img, tmp_path / label / f"{i}.png")
        rows.append({"path": str(tmp_path / label / f"{i}.png"), "label": label, "group": f"p{i}",
                     "split": "train" if i < 16 else "val"})
    m = pd.DataFrame(rows)
    inp = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3)(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    net = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x))
    common = dict(class_names=["normal", "osteoporosis"], image_size=16, batch_size=8, label_mode="categorical")
    ctx = type("Ctx", (), {"seed": 0, "class_names": ["normal", "osteoporosis"]})()
    val = m[m.split == "val"]
    return net, m[m.split == "train"], val, pipeline.make_dataset(val, **common), common, ctx


def test_batchnorm_recalibration_is_kept_only_when_it_lowers_the_validation_loss(tmp_path, monkeypatch):
    from osteo_tf import training

    net, train, val, val_ds, common, ctx = _bn_case(tmp_path)
    bn = net.get_layer("bn")
    bn.moving_mean.assign(np.full(4, 3.0, np.float32))  # stale running averages
    bn.moving_variance.assign(np.full(4, 1e-3, np.float32))
    out, p_val = experiments.recalibrate_on_train(ctx, net, train, common, val_ds, val)
    assert out["recalibrated_layers"] == 1 and out["images"] == 16
    assert out["kept"] and out["val_loss_after"] < out["val_loss_before"]
    # the probabilities returned are those of the model as left, for the operating point
    np.testing.assert_allclose(p_val, training.predict_proba(net, val_ds), rtol=1e-5, atol=1e-6)
    assert not np.allclose(bn.moving_mean.numpy(), 3.0)
    kept = bn.moving_mean.numpy().copy()

    def worse(model, x, **kw):  # a recalibration that hurts on validation is undone
        model.get_layer("bn").moving_mean.assign(np.full(4, -50.0, np.float32))
        return {"recalibrated_layers": 1, "images": len(x), "skipped": None}

    monkeypatch.setattr(training, "recalibrate_batchnorm", worse)
    out, p_val = experiments.recalibrate_on_train(ctx, net, train, common, val_ds, val)
    np.testing.assert_allclose(p_val, training.predict_proba(net, val_ds), rtol=1e-5, atol=1e-6)
    assert out["kept"] is False and out["val_loss_after"] > out["val_loss_before"]
    np.testing.assert_array_equal(bn.moving_mean.numpy(), kept)
    no_val, p_none = experiments.recalibrate_on_train(ctx, net, train, common, None, val.iloc[:0])
    assert p_none is None and no_val["recalibrated_layers"] == 0 and "no validation split" in no_val["skipped"]
    np.testing.assert_array_equal(bn.moving_mean.numpy(), kept)
