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
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from osteo_tf import _kernel
from osteo_tf.config import PROJECT_ROOT, get_profile
from osteo_tf.evaluation import format_estimate
from osteo_tf.studies import STUDIES, get_study

log = logging.getLogger(__name__)

KERNEL_NAME = _kernel.KERNEL_NAME
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
    """Make sure the project's named kernel exists and starts through ``osteo_tf._kernel``.

    A missing kernelspec, or one that runs another interpreter or plain ``ipykernel_launcher`` or
    lacks the logging environment (an older install), is (re)written in this environment
    (:func:`osteo_tf._kernel.install_kernel`).
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
        argv, env = spec.argv, spec.env
    except NoSuchKernel:
        argv, env = [], {}
    stale = not argv or argv[0] != sys.executable or _kernel.LAUNCHER not in argv
    if stale or any(env.get(k) != v for k, v in _kernel.KERNEL_ENV.items()):
        path = _kernel.install_kernel(sys.prefix, name=name)
        log.info("registered Jupyter kernel %r in %s", name, path)
    return name


_NATIVE_LOG = _kernel.NATIVE_LOG


def strip_native_logs(nb) -> int:
    """Remove TensorFlow's C++ start-up log lines (absl ``I0000 ...`` lines) from stderr outputs.

    The kernel (``osteo_tf._kernel``) keeps them from being printed; this removes any that still
    reach a notebook (a kernel started another way, an older kernelspec). Python warnings and
    errors are kept.

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


CLAIM_TAG = "claim"
"""Cells tagged so (the study's claim: the paper's comparison as paired effects, and the floor)
open the HTML report, right after the title cell, although they run at the end of the notebook
(they need every result)."""


def claim_first(nb) -> int:
    """Move the cells tagged :data:`CLAIM_TAG`, in their order, to right after the first cell.

    Returns:
        The number of cells moved.
    """
    claim = [c for c in nb.cells if CLAIM_TAG in c.get("metadata", {}).get("tags", [])]
    if not claim or not nb.cells:
        return 0
    rest = [c for c in nb.cells if CLAIM_TAG not in c.get("metadata", {}).get("tags", [])]
    nb.cells = rest[:1] + claim + rest[1:]
    return len(claim)


def export_html(ipynb: str | Path, html_path: str | Path, *, hide_code: bool = True) -> Path:
    """Convert an executed notebook to ONE self-contained HTML file (images embedded).

    Code cells are hidden (the report is for readers; the .ipynb beside it keeps everything),
    TensorFlow's native start-up log lines are dropped from the report, and the claim's cells
    (tagged :data:`CLAIM_TAG`) open the report (:func:`claim_first`).
    """
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(ipynb), as_version=4)
    strip_native_logs(nb)
    claim_first(nb)
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
    position: tuple[int, int] = (1, 1),
    batch_start: float | None = None,
    progress_bar: bool = True,
) -> StudyRun:
    """Execute one study notebook with papermill and export its HTML report.

    Writes ``OUT/<study>/<study>.ipynb``, ``.html``, ``metrics.json`` (by the notebook) and
    ``status.json``. While the notebook runs, papermill's cell bar shows on the terminal (none
    without a TTY; it is removed when the study ends); then ``progress`` gets ONE line, e.g.
    ``[2/7] 02-bm3d-resnet50 ok in 19 s (total 1 min 14 s)``.

    Args:
        name: the study (a registered name or its number).
        profile, data_dir, out, params: see ``osteo-tf run``.
        kernel: the Jupyter kernel (registered if missing, :func:`ensure_kernel`).
        progress: receives the study's line.
        position: ``(i, n)``: this is study ``i`` of ``n`` in the batch (the line's ``[i/n]``).
        batch_start: ``time.perf_counter()`` when the batch started; the line then ends with the
            batch's elapsed time.
        progress_bar: show papermill's cell bar (off when several studies run at once).

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
    tag = f"[{position[0]}/{position[1]}] {study.name}"
    t0 = time.perf_counter()
    error = None
    try:
        papermill.execute_notebook(
            str(study.notebook), str(ipynb), parameters=params, kernel_name=ensure_kernel(kernel),
            cwd=str(PROJECT_ROOT), log_output=False, request_save_on_cell_execute=True,
            progress_bar={"desc": tag, "leave": False, "disable": None if progress_bar else True},
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
    total = f" (total {format_duration(time.perf_counter() - batch_start)})" if batch_start is not None else ""
    progress(f"{tag} {status} in {format_duration(seconds)}{total}" + (f": {error}" if error else ""))
    return StudyRun(study.name, status, seconds, folder, error)


def run_studies(
    names: Sequence[str],
    *,
    profile: str = "quick",
    data_dir: str | None = None,
    out: str | Path = "reports",
    params: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] = print,
    jobs: int = 1,
) -> list[StudyRun]:
    """Run several studies (``["all"]`` = every registered one), then rebuild the index.

    Parameters are validated for every study before the first one starts. ``progress`` gets one
    line naming the output folder, then one line per study as it ends (:func:`run_study`).

    Args:
        jobs: studies run at once, each in its own kernel process (studies share nothing but the
            content-addressed disk caches, whose writes are atomic). A study notebook's small
            CPU models keep about one core busy (graph tracing and Python are single-threaded),
            so on a 2-core machine ``jobs=2`` nearly halves the batch; on a GPU keep 1 (the
            studies would share its memory). With ``jobs > 1`` the longest studies start first
            (by the ``seconds`` of a previous run's ``status.json`` in ``out``, else
            :data:`TYPICAL_SECONDS`), and the results
            are the same as one at a time (each study seeds its own process).

    Returns:
        One :class:`StudyRun` per study, in the order of ``names``.

    Raises:
        ValueError: an unknown study or parameter, or ``jobs < 1``.
    """
    from concurrent.futures import ThreadPoolExecutor

    from osteo_tf.studies import study_names

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer. Received: jobs={jobs!r}")
    names = study_names() if list(names) in (["all"], []) else [get_study(n).name for n in names]
    for n in names:  # fail before running anything
        declared = notebook_parameters(get_study(n).notebook)
        unknown = sorted(set(params or {}) - set(declared))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} for {n}. Declared: {sorted(declared)}")
    count = f"{len(names)} stud{'y' if len(names) == 1 else 'ies'}"
    jobs = min(jobs, len(names)) or 1
    at_once = f", {jobs} at a time" if jobs > 1 else ""
    progress(f"running {count} ({profile} profile{at_once}) -> {Path(out).resolve()}")
    start = time.perf_counter()
    if jobs == 1:
        runs = []
        for i, n in enumerate(names, 1):
            runs.append(run_study(n, profile=profile, data_dir=data_dir, out=out, params=params, progress=progress,
                                  position=(i, len(names)), batch_start=start if len(names) > 1 else None))
            write_index(out)
        return runs
    ensure_kernel()  # once, before the threads start kernels
    lock = threading.Lock()

    def one(i: int) -> StudyRun:
        def say(msg: str) -> None:
            with lock:
                progress(msg)

        run = run_study(names[i], profile=profile, data_dir=data_dir, out=out, params=params, progress=say,
                        position=(i + 1, len(names)), batch_start=start, progress_bar=False)
        with lock:
            write_index(out)
        return run

    order = sorted(range(len(names)), key=lambda i: -(_previous_seconds(Path(out) / names[i])
                                                      or TYPICAL_SECONDS.get(profile, {}).get(names[i], 0.0)))
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="osteo-tf-study") as pool:
        futures = {i: pool.submit(one, i) for i in order}
        return [futures[i].result() for i in range(len(names))]


TYPICAL_SECONDS = {
    "quick": {"00-dataset-card": 22, "01-calcaneus-augmentation": 212, "02-bm3d-resnet50": 472,
              "03-knee-same-domain-transfer": 540, "04-dxa-tbs": 364, "05-knee-explanations": 261,
              "06-leakage-audit": 178},
    "full-smoke": {"00-dataset-card": 13, "01-calcaneus-augmentation": 395, "02-bm3d-resnet50": 238,
                   "03-knee-same-domain-transfer": 700, "04-dxa-tbs": 262, "05-knee-explanations": 518,
                   "06-leakage-audit": 112},
}
"""Seconds each study took two at a time on a 2-core CPU (quick: 2026-12-02, full-smoke:
2026-12-01): the start order of :func:`run_studies` with ``jobs > 1`` when ``out`` holds no
previous ``status.json``."""


def _previous_seconds(folder: Path) -> float:
    """The ``seconds`` of a previous run's ``status.json`` in ``folder`` (0 when none)."""
    try:
        return float(json.loads((folder / "status.json").read_text()).get("seconds") or 0.0)
    except (OSError, ValueError, AttributeError):
        return 0.0


def format_duration(seconds: float) -> str:
    """``19 s``, ``1 min 14 s``, ``2 h 05 min``: a duration for a progress line."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


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


BAR_AUC_CI_LOW = 0.65
"""The quality bar: the lower end of the primary result's 95% AUC interval must reach this."""
BAR_ABOVE_CHANCE = 0.15
"""The quality bar: balanced accuracy (at the operating point) at least chance (1/k) plus this."""


def quality_bar(study, results: list[dict]) -> list[dict]:
    """Whether a study's primary clean-protocol result learned (``Study.primary``): AUC 95% CI
    lower end >= :data:`BAR_AUC_CI_LOW` and balanced accuracy >= 1/k + :data:`BAR_ABOVE_CHANCE`.

    The records of exactly the primary (experiment, model), or, when the run trained another
    model for that experiment (a CPU profile's stand-in), each clean record of the experiment.
    Returns one dict per record: ``experiment``, ``model``, ``auc``, ``auc_ci_low``,
    ``balanced_accuracy``, ``chance``, ``meets`` and a one-line ``verdict``. Empty when the study
    has no primary result or the run has none of its records.
    """
    if study is None or not study.primary:
        return []
    exp, model = study.primary
    clean = [r for r in results if r.get("experiment") == exp and r.get("protocol") in (None, "clean")]
    chosen = [r for r in clean if r.get("model") == model] or clean
    rows = []
    for r in chosen:
        k = len(r.get("class_names") or ()) or study.classes
        lo = ((r.get("ci95") or {}).get("auc") or [None])[0]
        bal = r.get("balanced_accuracy")
        need = 1.0 / k + BAR_ABOVE_CHANCE
        meets = lo is not None and bal is not None and lo >= BAR_AUC_CI_LOW and bal >= need
        verdict = (f"{'meets' if meets else 'below'} the bar: AUC CI low {_fmt(lo)} (needs >= {BAR_AUC_CI_LOW}), "
                   f"balanced accuracy {_fmt(bal)} (needs >= {need:.3f}: chance {1 / k:.3f} + {BAR_ABOVE_CHANCE})")
        rows.append({"experiment": exp, "model": r.get("model"), "auc": r.get("auc"), "auc_ci_low": lo,
                     "balanced_accuracy": bal, "chance": 1.0 / k, "meets": bool(meets), "verdict": verdict})
    return rows


def _fmt(value) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def forest_rows(study, metrics: Mapping[str, Any], *, keys: Sequence[str] = ("accuracy", "auc")) -> tuple[list, list]:
    """The rows of a study's forest plot (:func:`osteo_tf.plots.study_forest`) from its metrics.json:
    each headline record's ``keys`` with CIs beside the paper's figure for the headline model, and
    each claim's primary paired effect beside the paper's difference."""
    headline = []
    for res, paper, paper_model in headline_records(study, metrics.get("results", [])):
        other = f" vs paper's {paper_model}" if paper and paper_model != res.get("model") else ""
        for k in keys:
            if res.get(k) is None:
                continue
            headline.append({"label": f"{res.get('experiment')} {res.get('model')} ({res.get('protocol', '')}){other}",
                             "metric": k, "value": res.get(k), "ci": (res.get("ci95") or {}).get(k),
                             "paper": paper.get(k) if paper else None})
    claims = [c for c in metrics.get("claims", []) if c.get("primary", True) and c.get("effect") is not None]
    return headline, claims


def _figure_html(fig) -> str:
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"<img alt='forest plot' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def study_figure(folder: Path) -> str:
    """The forest plot of one study run as an embedded ``<img>``, or "" when it has no results."""
    from osteo_tf import plots

    path = folder / "metrics.json"
    if not path.exists():
        return ""
    metrics = json.loads(path.read_text())
    headline, claims = forest_rows(STUDIES.get(folder.name), metrics)
    if not headline and not claims:
        return ""
    classes = (metrics.get("data") or {}).get("classes") or {}
    fig = plots.study_forest(headline, claims, chance=1 / len(classes) if classes else None)
    return _figure_html(fig)


def write_index(out: str | Path) -> Path:
    """Write ``OUT/index.html``: per study a forest plot (headline with CIs beside the paper's figure,
    and the claim's paired effects beside the paper's differences), then every study run with
    status, headline metrics + CIs and paper values."""
    out = Path(out)
    rows, figures = [], []
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
        bar = "<br>".join(f"{html.escape(str(b['model']))}: <span class='{'meets' if b['meets'] else 'below'}'>"
                          f"{html.escape(b['verdict'])}</span>"
                          for b in quality_bar(study, metrics.get("results", [])))
        link = f"{folder.name}/{folder.name}.html"
        figure = study_figure(folder)
        if figure:
            figures.append(f"<h2><a href='{html.escape(link)}'>{html.escape(folder.name)}</a></h2>{figure}")
        rows.append(
            f"<tr><td><a href='{html.escape(link)}'>{html.escape(folder.name)}</a></td>"
            f"<td class='{status.get('status', 'unknown')}'>{status.get('status', 'unknown')}</td><td>{status.get('profile', '')}</td>"
            f"<td>{status.get('seconds', 0):.0f} s</td>"
            f"<td>{'<br>'.join(headline) or html.escape(status.get('error') or '')}</td><td>{bar}</td></tr>"
        )
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>osteo_tf reports</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
.ok{{color:#070}}.failed{{color:#b00;font-weight:bold}}.meets{{color:#070}}.below{{color:#b00}}</style></head><body>
<h1>osteo_tf study reports</h1>
<p>Each row is one notebook run (papermill) with its HTML report. Headline metrics are on the held-out test split with
patient-level bootstrap 95% CIs; the paper's figure is shown beside ours. Synthetic data says nothing clinical.</p>
<p>Forest plots: blue, our estimate with its 95% CI; red diamond, the paper's figure (for the paper's headline model
when this run trained a lighter one); right panel, the paper's comparison as a paired, patient-level bootstrap effect
(b minus a, same test patients) beside the paper's difference (none where the paper reports no such comparison).</p>
{''.join(figures)}
<h2>All runs</h2>
<p>Learned? The primary clean-protocol result of each study against the bar: the lower end of its AUC 95% CI at
least {BAR_AUC_CI_LOW} and its balanced accuracy (mean of per-class recalls, at the operating point) at least chance
plus {BAR_ABOVE_CHANCE}.</p>
<table><tr><th>study</th><th>status</th><th>profile</th><th>time</th><th>headline (ours vs paper)</th><th>learned? (primary result)</th></tr>
{''.join(rows)}
</table></body></html>
"""
    path = out / "index.html"
    path.write_text(doc, encoding="utf-8")
    return path
