"""Every study notebook: static rules, then a real papermill run in the smoke profile with HTML export."""

import ast
import json
import re
from pathlib import Path

import nbformat
import pytest

from osteo_tf import cli, reports
from osteo_tf.studies import STUDIES, study_names

NOTEBOOKS = sorted(Path(__file__).resolve().parent.parent.joinpath("notebooks").glob("*.ipynb"))


def test_every_registered_study_has_a_notebook():
    assert [s.notebook for s in STUDIES.values() if s.notebook.exists()] == [
        s.notebook for s in STUDIES.values()]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_valid_nbformat_with_unique_cell_ids(path):
    """nbformat 4.5 wants an id on every cell (papermill and nbconvert warn and invent one otherwise)."""
    raw = json.loads(path.read_text())
    ids = [c.get("id") for c in raw["cells"]]
    assert None not in ids, f"{path.name}: cells {[i for i, v in enumerate(ids) if v is None]} have no id"
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate cell ids"
    nbformat.validate(nbformat.reads(path.read_text(), as_version=4))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_one_parameters_cell_and_no_logic(path):
    nb = nbformat.read(str(path), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))]
        assert not defs, f"{path.name}: logic belongs in osteo_tf, found {type(defs[0]).__name__} in:\n{cell.source[:200]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_are_annotated_literals_with_help(path):
    nb = nbformat.read(str(path), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    lines = [ln for ln in cell.source.splitlines() if ln.strip()]
    names = []
    for ln in lines:
        assert re.match(r"^\w+: \w+ = .+  # .+", ln), f"{path.name}: parameter without type or help: {ln!r}"
        names.append(ln.split(":")[0])
    for common in reports.COMMON_PARAMETERS:
        assert common in names, f"{path.name} lacks the common parameter {common!r}"
    # papermill must parse every one (it silently skips a line with a second '=' in its help)
    assert sorted(reports.notebook_parameters(path)) == sorted(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_second_cell_builds_settings_then_setup_and_parameters_are_settings(path):
    import importlib

    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    second = code[1].source
    workflow = re.search(r"from osteo_tf\.workflows import (\w+)", second)
    assert workflow, f"{path.name}: the second cell imports its workflow"
    name = workflow.group(1)
    assert re.search(rf"^S = {name}\.Settings\.for_profile\(profile\b", second, re.M), second
    assert re.search(rf"^ctx = {name}\.setup\(S, data_dir=data_dir, out_dir=out_dir, seed=seed\)", second, re.M), second
    fields = set(importlib.import_module(f"osteo_tf.workflows.{name}").Settings.field_names())
    declared = reports.notebook_parameters(path)
    for key, info in declared.items():
        if key in ("profile", "seed"):
            continue
        assert info["default"] == "None", f"{path.name}: {key} should default to None (the profile's value)"
        if key not in reports.COMMON_PARAMETERS:
            assert key in fields, f"{path.name}: parameter {key} is not a field of {name}.Settings"
            assert re.search(rf"\b{key}={key}\b", second), f"{path.name}: {key} is not passed to Settings.for_profile"


def test_unknown_parameter_is_rejected_before_running(tmp_path, capsys):
    code = cli.main(["run", "01", "--profile", "smoke", "--out", str(tmp_path), "-p", "epochz=3"])
    assert code == 2
    assert "epochz" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def smoke_reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    code = cli.main(["run", "all", "--profile", "smoke", "--out", str(out), "--jobs", "2"])  # two kernels at once
    return out, code


def test_all_studies_run_in_smoke_profile(smoke_reports):
    out, code = smoke_reports
    statuses = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/status.json")}
    failed = {k: v["error"] for k, v in statuses.items() if v["status"] != "ok"}
    assert not failed, failed
    assert code == 0
    assert sorted(statuses) == sorted(study_names())


@pytest.mark.parametrize("study", study_names())
def test_html_report_is_self_contained_and_complete(smoke_reports, study):
    out, _ = smoke_reports
    html = (out / study / f"{study}.html").read_text(encoding="utf-8")
    assert "Traceback" not in html
    srcs = re.findall(r"<img[^>]+src=[\"']([^\"']+)", html)
    assert srcs, "the report should contain figures"
    assert all(s.startswith("data:image/") for s in srcs), [s[:40] for s in srcs if not s.startswith("data:")]
    assert "profile" in html and "smoke" in html, "parameters are printed"
    assert "version tensorflow" in html
    assert "why it differs" in html, "the paper comparison table is shown"
    metrics = json.loads((out / study / "metrics.json").read_text())
    assert metrics["study"] == study and metrics["profile"] == "smoke"
    assert metrics["results"], "at least one result"
    for r in metrics["results"]:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert 0.0 <= r["balanced_accuracy"] <= 1.0
    if study[:2] in ("01", "02", "03", "04", "05"):
        assert html.index("The claim") < html.index("Parameters, versions and data provenance"), "opens with its claim"
        assert metrics["claims"] and all(c["verdict"] for c in metrics["claims"])
        assert metrics["floor"] and all(f["model"] == "logistic regression (texture + intensity)" for f in metrics["floor"])


@pytest.mark.parametrize("study", study_names())
def test_reports_hold_no_tensorflow_warning_native_log_line_or_progress_bar(smoke_reports, study):
    out, _ = smoke_reports
    nb = nbformat.read(str(out / study / f"{study}.ipynb"), as_version=4)
    streams = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                      if o.get("output_type") == "stream")
    assert "WARNING:tensorflow" not in streams
    assert not [ln for ln in streams.splitlines() if reports._NATIVE_LOG.match(ln)]
    assert "LIME masks" not in streams and "image/s" not in streams and "cell/s" not in streams
    html = (out / study / f"{study}.html").read_text(encoding="utf-8")
    assert "WARNING:tensorflow" not in html and "retracing" not in html


def test_every_training_run_folder_holds_tensorboard_event_files(smoke_reports):
    out, _ = smoke_reports
    runs = [d for d in sorted(out.glob("*/runs/*")) if d.is_dir()]
    assert len(runs) >= 10, [str(d) for d in runs]  # every study but the dataset card trains
    missing = [str(d.relative_to(out)) for d in runs if not any(d.rglob("events.out.tfevents.*"))]
    assert not missing, missing


def test_index_lists_every_study_with_status(smoke_reports):
    out, _ = smoke_reports
    index = (out / "index.html").read_text()
    for study in study_names():
        assert f"{study}/{study}.html" in index
    assert "failed" not in re.findall(r"class='(\w+)'", index)


def test_index_headline_falls_back_to_the_profile_model_beside_the_paper_figure():
    study = STUDIES["02-bm3d-resnet50"]  # headline (bm3d, resnet50); the CPU profiles train compact_cnn
    records = [{"experiment": "bm3d", "model": "compact_cnn", "accuracy": 0.5},
               {"experiment": "no-denoise", "model": "compact_cnn", "accuracy": 0.4}]
    rows = reports.headline_records(study, records)
    assert [(r["model"], m) for r, _, m in rows] == [("compact_cnn", "resnet50")]
    assert rows[0][1]["accuracy"] == next(p["accuracy"] for p in study.paper
                                          if (p["experiment"], p["model"]) == ("bm3d", "resnet50"))
    exact = reports.headline_records(study, records + [{"experiment": "bm3d", "model": "resnet50", "accuracy": 0.6}])
    assert [r["model"] for r, _, _ in exact] == ["resnet50"]  # the paper's model wins when it ran
    assert reports.headline_records(None, records) == []


def test_quality_bar_judges_the_primary_clean_result_against_chance_and_the_auc_interval():
    study = STUDIES["02-bm3d-resnet50"]  # primary (bm3d, resnet50), 3 classes: balanced accuracy >= 1/3 + 0.15

    def rec(model, bal, lo, protocol="clean"):
        return {"experiment": "bm3d", "model": model, "protocol": protocol, "auc": 0.8, "balanced_accuracy": bal,
                "ci95": {"auc": [lo, 0.9]}, "class_names": ["normal", "osteopenia", "osteoporosis"]}

    standin = reports.quality_bar(study, [rec("compact_cnn", 0.50, 0.70), rec("compact_cnn", 0.1, 0.1, "paper")])
    assert [(b["model"], b["meets"]) for b in standin] == [("compact_cnn", True)]
    assert standin[0]["verdict"].startswith("meets the bar: AUC CI low 0.700 (needs >= 0.65), balanced accuracy 0.500 (needs >= 0.483")
    assert not reports.quality_bar(study, [rec("compact_cnn", 0.48, 0.70)])[0]["meets"]  # 0.48 < 1/3 + 0.15
    assert not reports.quality_bar(study, [rec("compact_cnn", 0.60, 0.64)])[0]["meets"]
    exact = reports.quality_bar(study, [rec("compact_cnn", 0.9, 0.9), rec("resnet50", 0.2, 0.5)])
    assert [(b["model"], b["meets"]) for b in exact] == [("resnet50", False)]  # the paper's model when it ran
    assert reports.quality_bar(STUDIES["00-dataset-card"], [rec("x", 1, 1)]) == []


def test_failing_study_keeps_partial_report_and_fails_the_run(tmp_path):
    code = cli.main(["run", "01", "--profile", "smoke", "--out", str(tmp_path), "-p", "models=no_such_model"])
    assert code == 1
    status = json.loads((tmp_path / "01-calcaneus-augmentation" / "status.json").read_text())
    assert status["status"] == "failed" and "no_such_model" in status["error"]
    html = (tmp_path / "01-calcaneus-augmentation" / "01-calcaneus-augmentation.html").read_text()
    assert "no_such_model" in html  # the error is shown in the partial report
    assert "class='failed'" in (tmp_path / "index.html").read_text()


def test_native_tensorflow_logs_are_stripped_but_warnings_kept():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=(
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1795308968.346441   19178 port.cc:153] oneDNN custom operations are on.\n"
        "/x.py:3: UserWarning: keep me\n")),
        nbformat.v4.new_output("stream", name="stderr", text="E0000 00:00:17.1   19 cuda_platform.cc:52] failed\n")]
    nb.cells.append(cell)
    assert reports.strip_native_logs(nb) == 3
    assert [o["text"] for o in nb.cells[0].outputs] == ["/x.py:3: UserWarning: keep me\n"]


def test_every_result_record_carries_its_threshold_and_every_report_shows_it(smoke_reports):
    out, _ = smoke_reports
    for path in sorted(out.glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        for r in metrics["results"]:
            assert "threshold" in r and r.get("threshold_rule"), (path.parent.name, r["experiment"], r["model"])
        if metrics["results"] and path.parent.name != "00-dataset-card":
            html = (path.parent / f"{path.parent.name}.html").read_text(encoding="utf-8")
            assert "threshold" in html, path.parent.name


def test_predict_and_evaluate_run_on_a_bundle_of_the_smoke_study(smoke_reports, tmp_path, capsys):
    import pandas as pd

    out, _ = smoke_reports
    metrics = json.loads((out / "02-bm3d-resnet50" / "metrics.json").read_text())
    record = next(r for r in metrics["results"] if r.get("bundle"))
    bundle = out / "02-bm3d-resnet50" / record["bundle"]
    side = json.loads((bundle.parent / (bundle.name + ".osteo_tf.json")).read_text())
    assert side["class_names"] == list(metrics["data"]["classes"]) and side["threshold"] == record["threshold"]
    assert side["test_metrics"]["accuracy"] == record["accuracy"] and side["versions"]["keras"]
    # an external set for the model: fresh synthetic knee images of another seed
    ext = tmp_path / "external"
    assert cli.main(["synth", "--mode", "knee", "--classes", "3", "--patients", "9", "--size", "96",
                     "--seed", "7", "--out", str(ext)]) == 0
    files = sorted(str(p) for p in ext.rglob("*.png"))[:3]
    capsys.readouterr()
    assert cli.main(["predict", "--model", str(bundle), *files, "--out", str(tmp_path / "pred")]) == 0
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert [c for c in table.columns if c.startswith("prob_")] == [f"prob_{c}" for c in side["class_names"]]
    assert set(table["predicted"]) <= set(side["class_names"]) and len(table) == 3
    assert cli.main(["evaluate", "--model", str(bundle), "--data", str(ext), "--out", str(tmp_path / "ev"),
                     "--json", str(tmp_path / "ev.json"), "--n-boot", "200"]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["record"]["threshold_rule"] == "argmax" and ev["record"]["ci95"]["accuracy"]
    assert ev["record"]["n_test_images"] == len(list(ext.rglob("*.png")))
    assert (tmp_path / "ev" / "predictions.csv").is_file() and ev["reliability"]
    assert "accuracy" in capsys.readouterr().out


def test_claim_cells_open_the_report_in_their_order():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), nbformat.v4.new_code_cell("setup"),
                nbformat.v4.new_code_cell("train"), nbformat.v4.new_markdown_cell("## The claim"),
                nbformat.v4.new_code_cell("claims"), nbformat.v4.new_code_cell("finish")]
    for c in nb.cells[3:5]:
        c.metadata["tags"] = [reports.CLAIM_TAG]
    assert reports.claim_first(nb) == 2
    assert [c.source for c in nb.cells] == ["# title", "## The claim", "claims", "setup", "train", "finish"]
    assert reports.claim_first(nbformat.v4.new_notebook()) == 0


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem[:2] in ("01", "02", "03", "04", "05")],
                         ids=lambda p: p.stem)
def test_study_notebooks_compute_their_claim_before_metrics_are_written(path):
    nb = nbformat.read(str(path), as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if reports.CLAIM_TAG in c.metadata.get("tags", [])]
    assert len(tagged) == 2 and nb.cells[tagged[0]].cell_type == "markdown"
    assert "experiments.claim(" in nb.cells[tagged[1]].source and "floor_table" in nb.cells[tagged[1]].source
    finish = next(i for i, c in enumerate(nb.cells) if "experiments.finish(" in c.source)
    assert tagged[1] < finish, "metrics.json records the claims and the floor"


def test_index_shows_a_forest_plot_per_study_before_the_table(tmp_path):
    folder = tmp_path / "05-knee-explanations"
    folder.mkdir()
    (folder / "status.json").write_text(json.dumps({"status": "ok", "profile": "quick", "seconds": 3}))
    rec = {"experiment": "original", "model": "compact_cnn", "protocol": "clean", "accuracy": 0.7, "auc": 0.8,
           "ci95": {"accuracy": [0.6, 0.8], "auc": [0.7, 0.9]}}
    claim = {"claim": "masked vs original", "metric": "accuracy", "primary": True, "effect": 0.05,
             "ci95": [-0.05, 0.15], "paper": 0.149}
    (folder / "metrics.json").write_text(json.dumps({"results": [rec], "claims": [claim, {**claim, "primary": False}],
                                                     "data": {"classes": {"normal": 1, "osteoporosis": 1}}}))
    headline, claims = reports.forest_rows(STUDIES["05-knee-explanations"], json.loads((folder / "metrics.json").read_text()))
    assert [(h["metric"], h["value"], h["paper"]) for h in headline] == [("accuracy", 0.7, 0.77), ("auc", 0.8, None)]
    assert "vs paper's efficientnetb0" in headline[0]["label"]
    assert claims == [claim]
    index = reports.write_index(tmp_path).read_text()
    assert index.count("<img alt='forest plot' src='data:image/png;base64,") == 1
    assert index.index("forest plot") < index.index("<table>")
