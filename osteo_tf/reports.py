"""Batch execution of the study notebooks (papermill) and their HTML reports (nbconvert).

``run_studies`` executes each notebook with the project's named Jupyter kernel and a fixed
working directory, injects the parameters (unknown keys are an error, not papermill's warning),
exports a self-contained HTML report (plots embedded, code hidden), and rebuilds
``OUT/index.html``. A failing study keeps its partial report with the error shown; the other
studies still run; the caller gets a non-zero status.
"""

from __future__ import annotations

import html
import json
import re
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from osteo_tf.config import PROJECT_ROOT, get_profile
from osteo_tf.evaluation import format_estimate
from osteo_tf.studies import STUDIES, get_study

log = logging.getLogger(__name__)

KERNEL_NAME = "osteo-tf"
#: Parameters every study notebook declares and ``osteo-tf run`` fills in.
COMMON_PARAMETERS = ("profile", "data_dir", "out_dir", "seed")


def notebook_parameters(path: str | Path) -> dict[str, dict]:
    """The parameters a notebook declares in its ``parameters`` cell (papermill's inspection).

    Raises:
        ValueError: when the notebook has no cell tagged ``parameters``.
    """
    import nbformat
    import papermill

    nb = nbformat.read(str(path), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{path}: expected exactly one cell tagged 'parameters', found {len(tagged)}")
    return dict(papermill.inspect_notebook(str(path)))


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["epochs=3", "models=['resnet50']"]`` -> dict; values parsed as Python literals when possible."""
    import ast

    out: dict[str, Any] = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise ValueError(f"-p expects KEY=VALUE. Received: {pair!r}")
        key, value = pair.split("=", 1)
        key = key.strip()
        if not key.isidentifier():
            raise ValueError(f"-p key must be a Python identifier. Received: {key!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """Make sure the project's named kernel exists (register it in this environment if not)."""
    from jupyter_client.kernelspec import KernelSpecManager

    if name not in KernelSpecManager().find_kernel_specs():
        from ipykernel.kernelspec import install

        install(kernel_name=name, display_name="Python (osteo-tf)", prefix=sys.prefix)
        log.info("registered Jupyter kernel %r in %s", name, sys.prefix)
    return name


_NATIVE_LOG = re.compile(
    r"^(?:[IWE]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] .*"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.)$"
)


def strip_native_logs(nb) -> int:
    """Remove TensorFlow's C++ start-up log lines (absl ``I0000 ...`` lines) from stderr outputs.

    They cannot be silenced by ``TF_CPP_MIN_LOG_LEVEL`` (they are printed before absl logging is
    initialised) and say nothing about the study. Python warnings and errors are kept.

    Returns:
        The number of lines removed.
    """
    removed = 0
    for cell in nb.cells:
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                lines = out["text"].splitlines(keepends=True)
                clean = [ln for ln in lines if not _NATIVE_LOG.match(ln.rstrip("\n"))]
                removed += len(lines) - len(clean)
                if not "".join(clean).strip():
                    continue
                out["text"] = "".join(clean)
            kept.append(out)
        if "outputs" in cell:
            cell["outputs"] = kept
    return removed


def export_html(ipynb: str | Path, html_path: str | Path, *, hide_code: bool = True) -> Path:
    """Convert an executed notebook to ONE self-contained HTML file (images embedded).

    Code cells are hidden (the report is for readers; the .ipynb beside it keeps everything),
    TensorFlow's native start-up log lines are dropped from the report.
    """
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(ipynb), as_version=4)
    strip_native_logs(nb)
    exporter = HTMLExporter(embed_images=True, exclude_input=hide_code, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    Path(html_path).write_text(body, encoding="utf-8")
    return Path(html_path)


@dataclass
class StudyRun:
    """Outcome of one study run."""

    study: str
    status: str  # "ok" | "failed"
    seconds: float
    folder: Path
    error: str | None = None


def run_study(
    name: str,
    *,
    profile: str = "quick",
    data_dir: str | None = None,
    out: str | Path = "reports",
    params: Mapping[str, Any] | None = None,
    kernel: str = KERNEL_NAME,
    progress: Callable[[str], None] = print,
) -> StudyRun:
    """Execute one study notebook with papermill and export its HTML report.

    Writes ``OUT/<study>/<study>.ipynb``, ``.html``, ``metrics.json`` (by the notebook) and
    ``status.json``.

    Raises:
        ValueError: unknown study, profile or parameter key (before anything runs).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    study = get_study(name)
    get_profile(profile)
    declared = notebook_parameters(study.notebook)
    params = dict(params or {})
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {study.name}. Declared: {sorted(declared)}")
    folder = Path(out).resolve() / study.name
    folder.mkdir(parents=True, exist_ok=True)
    if data_dir is not None:
        data_dir = str(Path(data_dir).resolve())
        if not Path(data_dir).exists():
            raise ValueError(f"--data folder does not exist. Received: data_dir={data_dir!r}")
    params.update({"profile": profile, "out_dir": str(folder)})
    if data_dir is not None:
        params["data_dir"] = data_dir
    ipynb = folder / f"{study.name}.ipynb"
    progress(f"[{study.name}] running ({profile} profile) -> {folder}")
    t0 = time.perf_counter()
    error = None
    try:
        papermill.execute_notebook(
            str(study.notebook), str(ipynb), parameters=params, kernel_name=ensure_kernel(kernel),
            cwd=str(PROJECT_ROOT), progress_bar=True, log_output=False, request_save_on_cell_execute=True,
        )
    except PapermillExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue} (cell {exc.exec_count})"
    except Exception as exc:  # kernel death, timeout...: keep going with the other studies
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - t0
    if ipynb.exists():
        export_html(ipynb, folder / f"{study.name}.html")
    status = "ok" if error is None else "failed"
    (folder / "status.json").write_text(json.dumps(
        {"study": study.name, "status": status, "seconds": round(seconds, 1), "error": error,
         "profile": profile, "data_dir": data_dir}, indent=2) + "\n")
    progress(f"[{study.name}] {status} in {seconds:.0f} s" + (f": {error}" if error else ""))
    return StudyRun(study.name, status, seconds, folder, error)


def run_studies(
    names: Sequence[str],
    *,
    profile: str = "quick",
    data_dir: str | None = None,
    out: str | Path = "reports",
    params: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] = print,
) -> list[StudyRun]:
    """Run several studies (``["all"]`` = every registered one), then rebuild the index.

    Parameters are validated for every study before the first one starts.
    """
    from osteo_tf.studies import study_names

    names = study_names() if list(names) in (["all"], []) else [get_study(n).name for n in names]
    for n in names:  # fail before running anything
        declared = notebook_parameters(get_study(n).notebook)
        unknown = sorted(set(params or {}) - set(declared))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} for {n}. Declared: {sorted(declared)}")
    runs = []
    for i, n in enumerate(names, 1):
        progress(f"study {i}/{len(names)}")
        runs.append(run_study(n, profile=profile, data_dir=data_dir, out=out, params=params, progress=progress))
        write_index(out)
    return runs


def headline_records(study, results: list[dict]) -> list[tuple[dict, dict, str | None]]:
    """The records a study's index row shows, each with the paper record it is compared with.

    For each ``(experiment, model)`` of ``study.headline``: the records of exactly that pair, or,
    when the run used another model for that experiment (a CPU profile's lighter model), every
    record of the experiment, still beside the paper's figure for the headline model. A study
    without a headline shows all its records (no paper figure). Returns
    ``(record, paper record or {}, paper model or None)`` tuples.
    """
    if study is None:
        return []
    if not study.headline:
        return [(r, {}, None) for r in results]
    out = []
    for exp, model in study.headline:
        exact = [r for r in results if (r.get("experiment"), r.get("model")) == (exp, model)]
        paper = next((p for p in study.paper if (p["experiment"], p["model"]) == (exp, model)), {})
        out += [(r, paper, model) for r in exact or [r for r in results if r.get("experiment") == exp]]
    return out


def write_index(out: str | Path) -> Path:
    """Write ``OUT/index.html``: every study run with status, headline metrics + CIs, paper values."""
    out = Path(out)
    rows = []
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        status_file = folder / "status.json"
        if not status_file.exists():
            continue
        status = json.loads(status_file.read_text())
        metrics = {}
        if (folder / "metrics.json").exists():
            metrics = json.loads((folder / "metrics.json").read_text())
        study = STUDIES.get(folder.name)
        headline = []
        for res, paper, paper_model in headline_records(study, metrics.get("results", [])):
            key = (res.get("experiment"), res.get("model"))
            ci = (res.get("ci95") or {}).get("accuracy")
            other = f" ({html.escape(str(paper_model))})" if paper and paper_model != key[1] else ""
            headline.append(
                f"{html.escape(str(key[0]))} / {html.escape(str(key[1]))} ({html.escape(str(res.get('protocol', '')))}): "
                f"acc {format_estimate(res.get('accuracy'), ci, ci_digits=3)}, "
                f"AUC {format_estimate(res.get('auc'), (res.get('ci95') or {}).get('auc'), ci_digits=3)}"
                f"; paper acc {format_estimate(paper.get('accuracy'))}{other}"
            )
        link = f"{folder.name}/{folder.name}.html"
        rows.append(
            f"<tr><td><a href='{html.escape(link)}'>{html.escape(folder.name)}</a></td>"
            f"<td class='{status['status']}'>{status['status']}</td><td>{status.get('profile', '')}</td>"
            f"<td>{status.get('seconds', 0):.0f} s</td>"
            f"<td>{'<br>'.join(headline) or html.escape(status.get('error') or '')}</td></tr>"
        )
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>osteo_tf reports</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
.ok{{color:#070}}.failed{{color:#b00;font-weight:bold}}</style></head><body>
<h1>osteo_tf study reports</h1>
<p>Each row is one notebook run (papermill) with its HTML report. Headline metrics are on the held-out test split with
patient-level bootstrap 95% CIs; the paper's figure is shown beside ours. Synthetic data says nothing clinical.</p>
<table><tr><th>study</th><th>status</th><th>profile</th><th>time</th><th>headline (ours vs paper)</th></tr>
{''.join(rows)}
</table></body></html>
"""
    path = out / "index.html"
    path.write_text(doc, encoding="utf-8")
    return path
