"""osteo_tf.workflows.study02: settings, steps, denoising benchmark, per-class CIs, loss turn (no notebook runs)."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from osteo_tf.workflows import study02


def test_every_profile_resolves_and_full_is_the_paper_protocol():
    for profile in study02.Settings.PROFILES:
        S = study02.Settings.for_profile(profile)
        assert S.model in ("resnet50", "compact_cnn")
    full = study02.Settings.for_profile("full")
    assert full.model == "resnet50" and full.image_size == 224 and full.epochs == 30
    assert full.denoise_size == study02.NATIVE, "the paper denoises before resizing"
    assert full.intensity == "none" and full.learning_rate == 1e-4, "the paper: min-max only, the recipe's lr"
    assert full.images_per_patient == study02.POISSON


def test_every_profile_sets_every_field_once():
    fields = set(study02.Settings.field_names()) - {"preset", "weights", "allow_random_init", "strategy", "classes",
                                                     "respect_source_split"}
    for profile, values in study02.Settings.PROFILES.items():
        assert set(values) == fields, profile


def test_settings_overrides_and_errors():
    S = study02.Settings.for_profile("smoke", noise_sigmas="0.02, 0.2", ablation=False, epochs=3, model=None)
    assert S.noise_sigmas == (0.02, 0.2) and S.ablation is False and S.epochs == 3
    assert S.model == study02.Settings.PROFILES["smoke"]["model"]
    with pytest.raises(ValueError, match=r"ablation must be bool. Received: ablation='maybe'"):
        study02.Settings.for_profile("smoke", ablation="maybe")
    with pytest.raises(ValueError, match="noise_sigmas"):
        study02.Settings.for_profile("smoke", noise_sigmas="1.5")
    with pytest.raises(ValueError, match="freeze"):
        study02.Settings.for_profile("smoke", freeze="half")
    with pytest.raises(ValueError, match="denoisers"):
        study02.Settings.for_profile("smoke", denoisers="wiener")
    with pytest.raises(ValueError, match="no_such_model"):
        study02.Settings.for_profile("smoke", model="no_such_model")
    with pytest.raises(ValueError, match="intensity"):
        study02.Settings.for_profile("smoke", intensity="gamma")
    with pytest.raises(ValueError, match="learning_rate"):
        study02.Settings.for_profile("smoke", learning_rate=1.5)
    assert study02.Settings.for_profile("smoke", learning_rate=0.01).learning_rate == 0.01
    with pytest.raises(ValueError, match="Unknown setting"):
        study02.Settings.for_profile("smoke", momentum=0.9)
    with pytest.raises(ValueError, match="denoise_size must be a positive integer or 'native'"):
        study02.Settings.for_profile("smoke", denoise_size=0)
    assert study02.Settings.for_profile("smoke", denoise_size="native").denoise_size == "native"


def test_pipeline_steps_follow_study_steps_and_ablation_only_drops_bm3d():
    full = study02.Settings.for_profile("full")
    assert study02.pipeline_steps(full) == [tuple(s) for s in study02.STEPS]
    assert [n for n, _ in study02.pipeline_steps(full, denoise=False)] == ["minmax_scale"]
    smoke = study02.Settings.for_profile("smoke")
    steps = study02.pipeline_steps(smoke)
    assert steps[0] == ("resize", {"size": smoke.denoise_size})
    assert [n for n, _ in steps[1:]] == ["bm3d_denoise", "minmax_scale", "standardize"]
    plain = study02.pipeline_steps(smoke, denoise=False)
    assert plain == [s for s in steps if s[0] != "bm3d_denoise"]


def test_paper_frozen_layers():
    assert study02.paper_frozen_layers("resnet50", 174) == 143
    assert study02.paper_frozen_layers("mobilenetv2", 153) == round(143 / 174 * 153)


def _manifest(tmp_path, n_per_class=3, size=40):
    from PIL import Image

    rows = []
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for c, label in enumerate(("normal", "osteopenia", "osteoporosis")):
        for i in range(n_per_class):
            img = 0.5 + 0.3 * np.sin(xx / (3 + c) + i) * np.cos(yy / 5)
            img = np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)
            p = tmp_path / f"{label}_{i}.png"
            Image.fromarray((img * 255).astype(np.uint8)).save(p)
            rows.append({"path": str(p), "label": label, "group": f"{label}-p{i}"})
    return pd.DataFrame(rows)


def test_pick_images_spreads_over_classes(tmp_path):
    m = _manifest(tmp_path)
    pick = study02.pick_images(m, 4, seed=1)
    assert len(pick) == 4 and pick["label"].nunique() == 3
    assert pick["group"].is_unique


def test_denoising_benchmark_cheap_denoisers_improve_on_noise(tmp_path):
    m = _manifest(tmp_path)
    res = study02.denoising_benchmark(m, sigmas=[0.1], n_images=2, size=32, denoisers=["gaussian", "median"], seed=0)
    t = res.table.set_index("method")
    assert list(t.index) == ["noisy (no denoising)", "gaussian", "median"]
    assert (t["images"] == 2).all()
    assert t.loc["gaussian", "psnr_db"] > t.loc["noisy (no denoising)", "psnr_db"]
    assert 18 < t.loc["noisy (no denoising)", "psnr_db"] < 24  # sigma 0.1 -> ~20 dB
    assert set(res.example) == {"clean", "noisy", "gaussian", "median"}
    vs = study02.denoising_vs_paper(res, method="gaussian")
    assert vs["source"].str.startswith("paper").sum() == 1 and len(vs) == 2
    fig = study02.denoising_figure(res)
    assert len(fig.axes) == 4
    # deterministic: same seed, same numbers (timings aside)
    again = study02.denoising_benchmark(m, sigmas=[0.1], n_images=2, size=32, denoisers=["gaussian", "median"], seed=0)
    pd.testing.assert_series_equal(res.table["psnr_db"], again.table["psnr_db"])


def test_precompute_without_expensive_steps_is_a_noop(tmp_path):
    m = _manifest(tmp_path)
    rep = study02.precompute(m, [("minmax_scale", {})], n_jobs=1)
    assert rep.images == len(m) and rep.cache_misses == 0 and rep.seconds == 0.0


def test_precompute_caches_bm3d(tmp_path):
    from osteo_tf.cache import DiskCache

    m = _manifest(tmp_path, n_per_class=1)
    cache = DiskCache(tmp_path / "cache")
    steps = [("resize", {"size": 32}), ("bm3d_denoise", {"profile": "lc", "sigma": 0.05}), ("minmax_scale", {})]
    first = study02.precompute(m, steps, n_jobs=1, cache=cache)
    assert first.cache_misses == 3 and first.unreadable == 0
    again = study02.precompute(m, steps, n_jobs=1, cache=DiskCache(tmp_path / "cache"))
    assert again.cache_hits == 3 and again.cache_misses == 0


def _fit(y_true, y_pred, groups=None, c=3):
    from osteo_tf import evaluation

    y_prob = np.full((len(y_true), c), 0.1)
    y_prob[np.arange(len(y_true)), y_pred] = 0.8
    rec = evaluation.result_record(experiment="bm3d", model="resnet50", protocol="clean", y_true=np.array(y_true),
                                   y_prob=y_prob, groups=groups, class_names=["normal", "osteopenia", "osteoporosis"],
                                   n_boot=50)
    return SimpleNamespace(record=rec, y_true=np.array(y_true), y_prob=y_prob,
                           groups=np.array(groups) if groups is not None else None)


def test_per_class_table_matches_record_and_has_cis():
    y = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    p = [0, 0, 1, 1, 1, 2, 2, 2, 2, 0]
    fit = _fit(y, p, groups=[f"g{i}" for i in range(10)])
    t = study02.per_class_table(fit, ["normal", "osteopenia", "osteoporosis"],
                                paper=study02.paper_row()["per_class"], n_boot=200)
    assert len(t) == 9
    row = t[(t["class"] == "normal") & (t["metric"] == "recall")].iloc[0]
    assert row["ours"] == pytest.approx(2 / 3, abs=1e-3)
    assert row["ci_lo"] <= row["ours"] <= row["ci_hi"]
    assert row["paper"] == pytest.approx(0.941)
    assert t["paper_in_ci"].notna().all()


def test_per_class_bootstrap_perfect_predictions_are_one():
    y = np.array([0, 1, 2, 0, 1, 2])
    prob = np.eye(3)[y]
    reps = study02.per_class_bootstrap(y, prob, np.array(["a", "a", "b", "b", "c", "c"]), 3, n_boot=100)
    for v in reps.values():
        vals = v[~np.isnan(v)]
        assert vals.size and np.allclose(vals, 1.0)


def test_val_loss_turn():
    rising = pd.DataFrame({"val_loss": [1.0, 0.8, 0.7, 0.75, 0.9, 1.1], "accuracy": [.4, .6, .7, .8, .9, .95],
                           "val_accuracy": [.4, .5, .6, .6, .6, .6]})
    out = study02.val_loss_turn(rising)
    assert out["best_epoch"] == 3 and out["rises"] and "after epoch 3" in out["sentence"]
    assert out["train_val_acc_gap"] == pytest.approx(0.35)
    falling = pd.DataFrame({"val_loss": [1.0, 0.9, 0.8]})
    out = study02.val_loss_turn(falling)
    assert out["best_epoch"] == 3 and not out["rises"] and "no overfitting" in out["sentence"]
    assert "one epoch" in study02.val_loss_turn(pd.DataFrame({"val_loss": [1.0]}))["sentence"]
    assert "No validation" in study02.val_loss_turn(pd.DataFrame({"loss": [1.0]}))["sentence"]


def test_ablation_table():
    a = {"experiment": "bm3d", "accuracy": 0.8, "f1": 0.7, "auc": 0.9,
         "ci95": {"accuracy": [0.7, 0.9], "f1": [0.6, 0.8], "auc": [0.85, 0.95]}}
    b = {"experiment": "no-denoise", "accuracy": 0.6, "f1": 0.5, "auc": 0.7,
         "ci95": {"accuracy": [0.5, 0.65], "f1": [0.4, 0.62], "auc": [0.6, 0.8]}}
    t = study02.ablation_table([a, b]).set_index("metric")
    assert t.loc["accuracy", "difference (points)"] == pytest.approx(20.0)
    assert t.loc["accuracy", "CIs overlap"] is False or t.loc["accuracy", "CIs overlap"] == False  # noqa: E712
    assert bool(t.loc["f1", "CIs overlap"])
    assert study02.ablation_table([a]).empty


def test_resnet50_backbone_layer_count_matches_constant():
    from osteo_tf import models

    m = models.build("resnet50", input_shape=(32, 32, 1), num_classes=3, weights=None)
    assert len(models.backbone_layers(m)) == study02.RESNET50_BACKBONE_LAYERS


def test_resolve_freeze_trains_all_layers_of_a_backbone_without_imagenet_weights():
    ctx = SimpleNamespace(weights="imagenet")
    plan = study02.resolve_freeze(ctx, "resnet18", "auto")
    assert plan.trainable == "all" and plan.frozen_layers == 0 and "random" in plan.weights
    assert study02.resolve_freeze(ctx, "resnet18", "all").trainable == "all"
    with pytest.raises(ValueError, match="mode"):
        study02.resolve_freeze(ctx, "resnet18", "some")
    rec = study02.recipe(study02.Settings.for_profile("smoke"), plan)
    assert rec.trainable == "all" and rec.optimizer == "adam" and rec.epochs == 1


def test_backbone_note_names_the_substitute():
    assert "substitutes **resnet18**" in study02.backbone_note(study02.Settings.for_profile("smoke", model="resnet18"))
    assert "as in the paper" in study02.backbone_note(study02.Settings.for_profile("smoke", model="resnet50"))
