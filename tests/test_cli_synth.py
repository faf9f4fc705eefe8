"""`osteo-tf synth`: exit status, folder layout, relative paths, determinism."""

from __future__ import annotations

import pandas as pd

from osteo_tf import cli

ARGS = ["synth", "--mode", "knee", "--patients", "6", "--size", "96", "--seed", "1"]


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_writes_class_folders_and_relative_metadata(tmp_path, capsys):
    out = tmp_path / "ds"
    assert cli.main([*ARGS, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    meta = pd.read_csv(out / "metadata.csv", keep_default_na=False)
    assert {"image_id", "patient_id", "label", "path"} <= set(meta.columns)
    assert len(meta) >= 6 and meta["patient_id"].nunique() == 6
    for path, label, image_id in zip(meta["path"], meta["label"], meta["image_id"]):
        assert path == f"{label}/{image_id}.png"  # relative, POSIX
        assert (out / path).is_file()
    pngs = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert pngs == set(meta["path"])


def test_synth_is_deterministic(tmp_path):
    assert cli.main([*ARGS, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*ARGS, "--out", str(tmp_path / "b")]) == 0
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_synth_refuses_a_foreign_non_empty_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    assert cli.main([*ARGS, "--out", str(tmp_path)]) == 2
    assert "out" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"
