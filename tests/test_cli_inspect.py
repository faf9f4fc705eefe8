"""Tests of ``osteo-tf inspect`` (its command-line contract: JSON keys, exit codes, read-only)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteo_tf.cli import main

CONTRACT_KEYS = {"n_images", "n_groups", "classes", "unreadable", "duplicates"}


def _img(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(((np.arange(20).reshape(4, 5) + value) % 256).astype(np.uint8)).save(path)


@pytest.fixture
def two_classes(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _img(root / "Normal" / "a.png", 1)
    _img(root / "Normal" / "b.png", 2)
    _img(root / "OP" / "c.png", 3)
    shutil.copy(root / "Normal" / "a.png", root / "OP" / "dup.png")
    (root / "OP" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


@pytest.fixture
def one_readable_class(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _img(root / "normal" / "a.png", 1)
    (root / "osteoporosis").mkdir()
    (root / "osteoporosis" / "broken.png").write_bytes(b"")
    return root


def test_inspect_json_follows_the_contract(two_classes, capsys):
    assert main(["inspect", str(two_classes), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert CONTRACT_KEYS <= set(out)
    assert out["n_images"] == 2 and out["n_groups"] == 2  # a.png and its twin dup.png are a label conflict
    assert out["classes"] == {"normal": 1, "osteoporosis": 1}
    assert out["conflicts"] == [["Normal/a.png", "OP/dup.png"]] and out["near_duplicates"] == out["conflicts"]
    assert out["source_splits"] == {}
    assert out["unreadable"] == [{"path": "OP/bad.png", "reason": out["unreadable"][0]["reason"]}]
    assert out["unreadable"][0]["reason"]
    assert out["duplicates"] == [["Normal/a.png", "OP/dup.png"]]


def test_inspect_text_output_names_bad_files(two_classes, capsys):
    assert main(["inspect", str(two_classes)]) == 0
    text = capsys.readouterr().out
    assert "OP/bad.png:" in text and "normal" in text and "osteoporosis" in text


def test_inspect_exits_2_with_one_readable_class(one_readable_class, capsys):
    assert main(["inspect", str(one_readable_class), "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["classes"] == {"normal": 1, "osteoporosis": 0}
    err_lines = captured.err.strip().splitlines()
    assert len(err_lines) == 1
    assert "two classes" in err_lines[0]


def test_inspect_missing_folder_exits_2_with_reason(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing"), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "dataset folder not found" in captured.err


def test_inspect_never_writes_into_the_folder(two_classes, capsys):
    def snapshot() -> list[tuple[str, int, int]]:
        return sorted(
            (str(p.relative_to(two_classes)), p.stat().st_size, p.stat().st_mtime_ns) for p in two_classes.rglob("*")
        )

    before = snapshot()
    main(["inspect", str(two_classes), "--json"])
    capsys.readouterr()
    assert snapshot() == before


def _console_script() -> str:
    local = Path(sys.executable).parent / "osteo-tf"
    found = str(local) if local.exists() else shutil.which("osteo-tf")
    assert found, "the osteo-tf console script is not installed (pip install -e .)"
    return found


def test_console_script_inspect_runs_end_to_end(two_classes):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(
        [_console_script(), "inspect", str(two_classes), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert CONTRACT_KEYS <= set(json.loads(proc.stdout))
