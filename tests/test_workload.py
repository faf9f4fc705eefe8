"""`osteo-tf run --strategy/--plan` and osteo_tf.workload: the full profile's steps and time."""

from __future__ import annotations

import json

import pytest

from osteo_tf import cli, reports, workload


def test_run_forwards_strategy_as_the_notebook_parameter(monkeypatch, tmp_path):
    seen = {}

    def fake_run_studies(studies, **kwargs):
        seen.update(kwargs, studies=studies)
        return []

    monkeypatch.setattr(reports, "run_studies", fake_run_studies)
    assert cli.main(["run", "02", "--profile", "full-smoke", "--strategy", "mirrored", "--out", str(tmp_path)]) == 0
    assert seen["params"] == {"strategy": "mirrored"} and seen["profile"] == "full-smoke"
    with pytest.raises(SystemExit):
        cli.main(["run", "02", "--strategy", "tpu"])


def test_plan_counts_the_full_profile_steps_from_the_recipes():
    t = workload.training_plan("study02", "full").iloc[0]
    # 400 patients x 2.5 images x 70% train = 700 images, batch 32 -> 22 steps x 30 epochs x 2 runs
    assert (t["model"], t["image_size"], t["batch_size"], t["train_images"], t["epochs"], t["runs"]) == (
        "resnet50", 224, 32, 700, 30, 2)
    assert t["steps"] == 2 * 30 * 22
    s1 = workload.training_plan("study01", "full")
    assert set(s1["model"]) == {"alexnet", "googlenet", "resnet50", "mobilenetv2", "inceptionv3", "study01_cnn"}
    assert workload.training_plan("study01", "full-smoke")["steps"].sum() < s1["steps"].sum() / 100
    with pytest.raises(ValueError, match="workflow must be one of"):
        workload.training_plan("dataset_card")


def test_plan_takes_step_times_from_a_full_smoke_run_else_times_them(monkeypatch, tmp_path, capsys):
    timed = []
    monkeypatch.setattr(workload, "time_steps", lambda m, size, batch: timed.append(m) or 2.0)
    study = tmp_path / "02-bm3d-resnet50"
    study.mkdir()
    (study / "metrics.json").write_text(json.dumps({"profile": "full-smoke", "results": [
        {"model": "resnet50", "image_size": 224, "seconds_per_step": 0.5},
        {"model": "resnet50", "image_size": 224, "seconds_per_step": 1.5}]}))
    plan = workload.plan_studies(["02"], out=tmp_path)[0]
    assert timed == [] and plan["table"]["s/step here"].tolist() == [1.0]  # the median of the run's steps
    assert plan["hours"] == round(1320 * 1.0 / 3600, 2) and "full-smoke run" in plan["source"]
    (study / "metrics.json").write_text(json.dumps({"profile": "quick", "results": []}))  # other sizes: not used
    plan = workload.plan_studies(["02"], out=tmp_path)[0]
    assert timed == ["resnet50"] and plan["table"]["s/step from"].tolist() == ["timing pass"]
    assert cli.main(["run", "02", "--profile", "full", "--plan", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "02-bm3d-resnet50 (full profile): 1320 training steps, 0.73 h on this machine" in out


def _fake_full_smoke(out, *, drop=None, status="ok", profile="full-smoke"):
    from osteo_tf.studies import STUDIES

    for name, st in STUDIES.items():
        if st.workflow not in workload.PLANNERS:
            continue
        (out / name).mkdir(parents=True)
        models = list(dict.fromkeys(workload.training_plan(st.workflow, "full")["model"]))
        names = [("mobilenetv3" if m.startswith("mobilenetv3") else m) for m in models if m != drop]
        (out / name / "status.json").write_text(json.dumps({"status": status, "error": None}))
        (out / name / "metrics.json").write_text(json.dumps({
            "profile": profile, "results": [{"model": m} for m in names],
            "runtime": {"strategy": "none", "replicas": 1, "precision": "mixed_bfloat16", "xla": False}}))


def test_check_full_smoke_names_each_missing_model_failed_study_and_wrong_profile(tmp_path):
    _fake_full_smoke(tmp_path / "complete")
    assert workload.check_full_smoke(tmp_path / "complete") == []
    _fake_full_smoke(tmp_path / "no_inception", drop="inceptionv3")
    assert workload.check_full_smoke(tmp_path / "no_inception") == [
        "01-calcaneus-augmentation: no result for inceptionv3 (recorded: ['alexnet', 'googlenet', 'mobilenetv2', "
        "'resnet50', 'study01_cnn'])"]
    _fake_full_smoke(tmp_path / "quick", profile="quick", status="failed")
    problems = workload.check_full_smoke(tmp_path / "quick")
    assert len(problems) == 10 and "02-bm3d-resnet50: status 'failed' (None)" in problems
    assert len(workload.check_full_smoke(tmp_path / "nothing")) == 5
