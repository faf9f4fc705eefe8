"""Study 03 workflow helpers: settings, steps, ROI check, parameter count, pretext transfer."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from osteo_tf.workflows import study03


def test_profiles_set_every_field_and_full_is_the_paper():
    fields = set(study03.Settings.field_names()) - {"preset", "weights", "allow_random_init", "strategy", "classes",
                                                     "respect_source_split"}
    assert all(set(v) == fields for v in study03.Settings.PROFILES.values())
    full = study03.Settings.for_profile("full")
    assert full.image_size == 224 and full.block_pooling is False
    assert set(full.baselines_a) == set(full.baselines_b) == {"alexnet", "vgg16", "resnet50", "xception"}


def test_preprocessing_steps_follow_the_shared_pipeline():
    smudged = [tuple(s) for s in study03.STEPS] + [("smudge", {"size": 15})]
    assert study03.preprocessing_steps(smudge_size=15) == smudged
    assert study03.preprocessing_steps() == [tuple(s) for s in study03.STEPS]
    assert study03.preprocessing_steps(smudge_size=31)[-1] == ("smudge", {"size": 31})
    assert study03.preprocessing_steps(smudge_size=15, intensity="standardize")[-2:] == [
        ("smudge", {"size": 15}), ("standardize", {})]
    assert study03.preprocessing_steps(intensity="standardize")[-1] == ("standardize", {})
    with pytest.raises(ValueError, match="intensity must be one of"):
        study03.preprocessing_steps(intensity="zscore")


def test_full_profile_keeps_the_paper_recipe_and_cpu_profiles_state_theirs():
    full, quick = study03.Settings.for_profile("full"), study03.Settings.for_profile("quick")
    assert (full.learning_rate, full.intensity, full.smudge, full.smudge_size) == (1e-4, "none", True, 15)
    assert (quick.learning_rate, quick.intensity, quick.smudge) == (1e-3, "standardize", False)
    assert study03.steps(full)[-1] == ("smudge", {"size": 15})
    no_smudge = study03.Settings.for_profile("full", smudge=False)
    assert no_smudge.smudge is False and "smudge" not in [n for n, _ in study03.steps(no_smudge)]
    assert study03.Settings.for_profile("quick", smudge=True, smudge_size=7).smudge_size == 7
    assert study03.Settings.for_profile("quick", learning_rate=None).learning_rate == 1e-3  # None keeps the profile's


@pytest.mark.parametrize("overrides,match", [
    ({"intensity": "zscore"}, "intensity must be one of"),
    ({"learning_rate": 2.0}, "learning_rate must be in"),
    ({"smudge_size": 8}, "smudge_size must be an odd window"),
    ({"epochs": -1}, "epochs must be positive. Received: epochs=-1"),
    ({"baselines_a": "alexnet,nosuchnet"}, "nosuchnet"),
    ({"patients": 10}, "Unknown setting"),
])
def test_settings_reject_bad_values_naming_them(overrides, match):
    with pytest.raises(ValueError, match=match):
        study03.Settings.for_profile("quick", **overrides)


def _write(path, array):
    Image.fromarray((array * 255).astype(np.uint8)).save(path)


def test_roi_check_measures_containment_of_the_generator_box(tmp_path):
    img = np.full((64, 64), 0.05, np.float32)
    img[10:50, 20:40] = 0.9  # the "bone"
    img[12:48, 22:38] += np.random.default_rng(0).uniform(-0.05, 0.05, (36, 16)).astype(np.float32)
    p = tmp_path / "a.png"
    _write(p, np.clip(img, 0, 1))
    m = pd.DataFrame({"path": [str(p), str(p)], "label": ["normal", "normal"], "image_id": ["a", "b"],
                      # x0,y0,x1,y1: inside the bone, then half outside it
                      "roi_bbox": ["25,20,35,30", "30,20,50,30"]})
    check = study03.roi_check(m)
    assert check["containment"].iloc[0] == pytest.approx(1.0)
    assert check["containment"].iloc[1] == pytest.approx(0.5, abs=0.06)
    assert 0 < check["iou"].iloc[0] < 1
    summary = study03.roi_summary(check)
    assert summary["images"].iloc[0] == 2


def test_roi_check_skips_data_without_generator_boxes():
    check = study03.roi_check(pd.DataFrame({"path": [], "label": []}))
    assert check.empty
    assert "skipped" in study03.roi_summary(check)["note"].iloc[0]


def test_branch_table_explains_the_parameter_count():
    branches = study03.branch_param_table()
    params = study03.param_table(16, block_pooling=True, classes=(2,))
    real = int(params["trainable params"].iloc[0])
    # conv weights + BN gammas/betas + the dense head
    bn = 2 * (16 + 8 * 4 + 32 * 5 + 64 * 4)
    head = 256 * 2 + 2
    assert branches["conv weights + bias"].sum() + bn + head == real
    assert real > 20 * study03.PAPER_PARAMS
    assert set(params["block_pooling"]) == {False, True}
    assert params.groupby("classes")["trainable params"].nunique().eq(1).all(), "pooling adds no parameters"


def test_pretrained_builder_copies_every_layer_but_the_classifier():
    from osteo_tf import models

    pretext = models.build(study03.MODEL, input_shape=(16, 16, 1), num_classes=4, block_pooling=True)
    builder = study03.pretrained_builder(pretext, image_size=16, num_classes=3, block_pooling=True)
    model = builder()
    assert "predictions" not in builder.copied and len(builder.copied) == 30
    w_src = pretext.get_layer("block3_branch4_conv").get_weights()[0]
    np.testing.assert_array_equal(model.get_layer("block3_branch4_conv").get_weights()[0], w_src)
    assert model.output_shape[-1] == 3


def test_scratch_vs_pretrained_table():
    recs = [{"experiment": "A (2 classes)", "model": study03.MODEL, "accuracy": 0.7, "ci95": {"accuracy": [0.6, 0.8]}},
            {"experiment": "A (2 classes)", "model": study03.PRETRAINED, "accuracy": 0.75,
             "ci95": {"accuracy": [0.65, 0.85]}}]
    t = study03.scratch_vs_pretrained(recs)
    assert len(t) == 1 and t["gain (points)"].iloc[0] == 5.0
    assert "0.700 [0.60, 0.80]" == t["from scratch"].iloc[0]


def _folder(root, classes, n=4):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            rng = np.random.default_rng(hash((c, i)) % 2**32)
            _write(root / c / f"{c}{i}.png", rng.uniform(0, 1, (32, 32)).astype(np.float32))


def test_user_data_with_three_classes_gives_a_and_b(tmp_path):
    _folder(tmp_path / "d", ["normal", "osteopenia", "osteoporosis"])
    ctx = study03.setup(study03.Settings.for_profile("smoke"), data_dir=tmp_path / "d", out_dir=tmp_path / "out")
    ctxs, note = ctx.subsets, ctx.extra["data_note"]
    assert ctxs["B"].class_names == ["normal", "osteopenia", "osteoporosis"]
    assert ctxs["A"].class_names == ["normal", "osteoporosis"]
    assert "dataset B" in note


def test_user_data_with_two_classes_skips_b_and_merge_keeps_a(tmp_path):
    _folder(tmp_path / "d", ["normal", "osteoporosis"])
    ctx = study03.setup(study03.Settings.for_profile("smoke"), data_dir=tmp_path / "d", out_dir=tmp_path / "out")
    ctxs, note = ctx.subsets, ctx.extra["data_note"]
    assert ctxs["B"] is None and "skipped" in note
    ctxs["A"].results.append({"experiment": "A (2 classes)", "model": study03.MODEL, "accuracy": 0.5})
    run = study03.merge(ctxs, extra={"x": 1})
    assert len(run.results) == 1 and run.extra["x"] == 1 and list(run.extra["datasets"]) == ["A (2 classes)"]


def test_paper_split_keeps_its_test_share_and_carves_validation_from_training(tmp_path):
    _folder(tmp_path / "d", ["normal", "osteoporosis"], n=20)
    ctxs = study03.setup(study03.Settings.for_profile("smoke"), data_dir=tmp_path / "d", out_dir=tmp_path / "out").subsets
    paper = study03.paper_split(ctxs["A"])
    ours = study03.paper_split(ctxs["A"], val=0.15)
    assert set(paper["split"]) == {"train", "test"}
    assert set(ours["split"]) == {"train", "val", "test"}
    assert (ours["split"] == "test").sum() == (paper["split"] == "test").sum() == 10
    groups = {s: set(ours.loc[ours["split"] == s, "group"]) for s in ("train", "val", "test")}
    assert not (groups["train"] & groups["val"]) and not (groups["val"] & groups["test"])
    with pytest.raises(ValueError, match="val must be in"):
        study03.paper_split(ctxs["A"], val=0.8)
