"""Tests of the ``osteo-tf`` command line as a whole: --version, ``python -m osteo_tf``, help texts,
``run --help`` and ``run STUDY --params``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import nbformat
import pytest

import osteo_tf
from osteo_tf import reports
from osteo_tf.cli import build_parser, main
from osteo_tf.studies import STUDIES

# Parameters every notebook declares besides its workflow's Settings fields.
RUN_PARAMETERS = {"profile", "data_dir", "out_dir", "seed"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"osteo-tf {osteo_tf.__version__}\n"


def test_python_m_osteo_tf_runs_the_command_line():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-m", "osteo_tf", "--version"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"osteo-tf {osteo_tf.__version__}\n"
    done = subprocess.run([sys.executable, "-m", "osteo_tf", "inspect", "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: osteo-tf inspect")
    done = subprocess.run([sys.executable, "-m", "osteo_tf", "no-such-command"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    commands = _subparsers(parser)
    assert set(commands) == {"synth", "inspect", "bench", "run", "predict", "evaluate", "export", "list"}
    choice_help = {a.dest: a.help for a in
                   next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))._choices_actions}
    missing = [name for name in commands if not choice_help.get(name)]
    for prog, p in [("osteo-tf", parser), *((f"osteo-tf {n}", c) for n, c in commands.items())]:
        for action in p._actions:
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_run_help_lists_every_study_with_its_title_and_an_example(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name, study in STUDIES.items():
        assert f"  {name}" in out
        assert study.title in out  # the raw formatter keeps each title on its line
    assert "osteo-tf run 01 --profile smoke -p models=study01_cnn" in out
    assert "osteo-tf run 01 --params" in out
    assert "--params" in out.split("studies (")[0]


def test_every_study_names_the_workflow_its_notebook_calls():
    for name, study in STUDIES.items():
        assert study.workflow, f"{name}: no workflow"
        code = "\n".join(c.source for c in nbformat.read(str(study.notebook), as_version=4).cells
                         if c.cell_type == "code")
        assert f"from osteo_tf.workflows import {study.workflow}\n" in code, name


@pytest.mark.parametrize("name", list(STUDIES))
def test_notebook_parameters_are_settings_fields(name):
    import importlib

    study = STUDIES[name]
    settings = importlib.import_module(f"osteo_tf.workflows.{study.workflow}").Settings
    declared = set(reports.notebook_parameters(study.notebook))
    assert RUN_PARAMETERS <= declared
    assert declared - RUN_PARAMETERS <= set(settings.field_names())


def test_run_params_lists_the_notebook_parameters_and_runs_nothing(capsys, tmp_path):
    out_dir = tmp_path / "reports"
    assert main(["run", "01", "--params", "--profile", "smoke", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert not out_dir.exists()
    study = STUDIES["01-calcaneus-augmentation"]
    assert out.startswith(f"{study.name}: {study.title}\n")
    lines = out.splitlines()
    header = lines[1].split()
    assert header == ["parameter", "type", "default", "smoke", "profile", "help"]
    rows = {line.split()[0]: line for line in lines[2:] if line.startswith("  ")}
    declared = reports.notebook_parameters(study.notebook)
    assert list(rows) == list(declared)
    for pname, p in declared.items():
        assert p["help"] and rows[pname].endswith(p["help"])
        assert rows[pname].split()[1:3] == [p["inferred_type_name"], p["default"]]
    from osteo_tf.workflows import study01

    smoke = study01.Settings.for_profile("smoke")
    assert rows["models"].split()[3] == ",".join(smoke.models)
    assert rows["epochs"].split()[3] == str(smoke.epochs)
    assert rows["profile"].split()[3] == "smoke"
    assert rows["seed"].split()[3] == declared["seed"]["help"].split()[0]  # no profile value: help follows
    assert "-p KEY=VALUE" in lines[-1]


def test_run_params_all_lists_every_study(capsys):
    assert main(["run", "all", "--params"]) == 0
    out = capsys.readouterr().out
    for name, study in STUDIES.items():
        assert f"{name}: {study.title}\n" in out
    assert "quick profile" in out


def test_run_params_rejects_an_unknown_study(capsys):
    assert main(["run", "99", "--params"]) == 2
    assert "unknown study '99'" in capsys.readouterr().err


def test_list_names_every_study(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name, study in STUDIES.items():
        assert f"  {name:<32} {study.title}\n" in out
    assert "no notebooks in" not in out


def test_list_says_where_notebooks_are_missing(capsys, monkeypatch, tmp_path):
    """An installed package (``pip install .``) has no notebooks: ``list`` says so once."""
    import osteo_tf.studies

    monkeypatch.setattr(osteo_tf.studies, "NOTEBOOK_DIR", tmp_path)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert f"(no notebooks in {tmp_path}: `osteo-tf run` needs a clone of the repository)" in out
    assert "not yet written" not in out
