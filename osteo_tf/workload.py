"""How much a profile will train, and how long that takes here: ``osteo-tf run --plan``.

For each study the training runs its notebook will make under a profile (model, input size,
global batch, expected training images, epochs) and their training steps
(``epochs x ceil(images / batch)``: early stopping may end a run sooner), beside the measured
seconds per training step of each model on this machine. The seconds come, in this order, from

* a ``full-smoke`` run's ``metrics.json`` in the output folder (the same models, input sizes,
  batch sizes, precision and compilation as ``full``; the median step after the first, which
  traces the graph), or
* a short timing pass (:func:`time_steps`: the model built with random weights, three steps
  on random images at the recipe's batch, the first one discarded).

Expected image counts follow each study's split fractions and synthetic defaults (one image per
patient in studies 01, 04 and 05; 1 + Poisson(1.5) where the generator draws them; study 04
before its offline minority copies); with ``--data`` the real counts differ.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

POISSON_MEAN_IMAGES = 2.5
"""Mean images per patient of the synthetic generator's 1 + Poisson(1.5) (``images_per_patient=None``)."""

STUDY01_SET_FACTOR = {"N": 1, "A": 4, "B": 8, "C": 9}
"""Images per source image in study 01's offline sets (``osteo_tf.augment.OFFLINE_SETS``)."""


def _row(what: str, model: str, size: int, batch: int, images: float, epochs: int, runs: int = 1) -> dict:
    images = max(1, int(round(images)))
    steps_per_epoch = math.ceil(images / batch)
    return {"training": what, "model": model, "image_size": int(size), "batch_size": int(batch),
            "train_images": images, "epochs": int(epochs), "runs": int(runs),
            "steps": int(runs * epochs * steps_per_epoch)}


def _study01(S) -> list[dict]:
    rows = []
    train = 0.8 * S.patients  # 80/20 split, one ROI per patient
    for set_name in S.sets:
        f = STUDY01_SET_FACTOR[set_name]
        for m in S.models:
            rows.append(_row(f"set {set_name}, paper + clean protocol", m, S.image_size, S.batch_size, train * f,
                             S.epochs, runs=2))
    last = "C" if "C" in S.sets else S.sets[-1]
    for m in S.kfold_models:
        rows.append(_row(f"E7 {S.kfold}-fold on set {last}, both protocols", m, S.image_size, S.batch_size,
                         S.patients * STUDY01_SET_FACTOR[last] * (S.kfold - 1) / S.kfold, S.epochs, runs=2 * S.kfold))
    return rows


def _study02(S) -> list[dict]:
    from osteo_tf.workflows import study02

    per = POISSON_MEAN_IMAGES if S.images_per_patient == study02.POISSON else S.images_per_patient
    train = S.patients * per * (1 - study02.SPLIT["val"] - study02.SPLIT["test"])
    return [_row("BM3D" + (" and the no-denoise ablation" if S.ablation else ""), S.model, S.image_size,
                 S.batch_size, train, S.epochs, runs=2 if S.ablation else 1)]


def _study03(S) -> list[dict]:
    rows = [_row("phase 1 rotation pretext (4 rotations, 90% of patients)", "study03_multibranch", S.image_size,
                 S.batch_size, S.unlabeled_patients * POISSON_MEAN_IMAGES * 0.9 * 4, S.pretrain_epochs)]
    for key, patients in (("A", S.patients_a), ("B", S.patients_b)):
        train = patients * POISSON_MEAN_IMAGES * (0.75 - S.val)
        rows.append(_row(f"dataset {key}: from scratch + pretrained", "study03_multibranch", S.image_size,
                         S.batch_size, train, S.epochs, runs=2))
        for m in getattr(S, f"baselines_{key.lower()}"):
            rows.append(_row(f"dataset {key}: ImageNet baseline", m, S.baseline_size, S.batch_size, train, S.epochs))
    return rows


def _study04(S) -> list[dict]:
    from osteo_tf.workflows import study04

    train = S.patients * (1 - S.val - S.test)  # one scan per patient; before the offline minority copies
    rows = []
    for approach in [a for a in ("approach1", "approach2") if a in S.approaches]:
        for m in S.transfer_models:
            rec = study04.recipe_for(S, approach, m)
            what = approach + (" (head on cached features; backbone forward pass once)" if approach == "approach2" else "")
            rows.append(_row(what, m, S.image_size, rec.batch_size, train, rec.epochs))
    if "approach3" in S.approaches:
        for m in S.small_models:
            rec = study04.recipe_for(S, "approach3", m)
            rows.append(_row("approach3", m, S.image_size, rec.batch_size, train, rec.epochs))
        if S.tuner_trials:
            batch = study04.recipe_for(S, "approach3", "study04_model1").batch_size
            rows.append(_row(f"approach3 tuner ({S.tuner_trials} trials)", "study04_tuned", S.image_size, batch, train,
                             S.tuner_epochs, runs=S.tuner_trials))
            rows.append(_row("approach3 tuned model", "study04_tuned", S.image_size, batch, train, S.small_epochs))
    return rows


def _study05(S) -> list[dict]:
    from osteo_tf.workflows import study05

    images = S.patients * S.images_per_patient
    train = images * (1 - study05.SPLIT["val"] - study05.SPLIT["test"])
    rows = [_row("original", m, S.image_size, S.batch_size, train, S.epochs) for m in S.models]
    for m in S.mask_models:
        rows.append(_row(f"LIME masks: {S.kfold}-fold over train + val", m, S.image_size, S.batch_size,
                         images * (1 - study05.SPLIT["test"]) * (S.kfold - 1) / S.kfold, S.mask_epochs, runs=S.kfold))
        rows.append(_row("LIME-masked retraining", m, S.image_size, S.batch_size, train, S.epochs))
    return rows


PLANNERS = {"study01": _study01, "study02": _study02, "study03": _study03, "study04": _study04, "study05": _study05}
"""The studies that train paper models, by workflow module name."""


def training_plan(workflow: str, profile: str = "full") -> pd.DataFrame:
    """The training runs of one study under ``profile`` (one row per model and kind of run).

    Raises:
        ValueError: a workflow without paper trainings, or an unknown profile.
    """
    if workflow not in PLANNERS:
        raise ValueError(f"workflow must be one of {sorted(PLANNERS)}. Received: workflow={workflow!r}")
    S = importlib.import_module(f"osteo_tf.workflows.{workflow}").Settings.for_profile(profile)
    return pd.DataFrame(PLANNERS[workflow](S))


def measured_step_seconds(metrics_json: str | Path) -> dict[tuple[str, int], float]:
    """Median seconds per training step by (model, image size) from a run's ``metrics.json``."""
    doc = json.loads(Path(metrics_json).read_text())
    found: dict[tuple[str, int], list[float]] = {}
    for r in doc.get("results", []):
        if r.get("seconds_per_step") and r.get("image_size"):
            found.setdefault((str(r["model"]), int(r["image_size"])), []).append(float(r["seconds_per_step"]))
    return {k: float(pd.Series(v).median()) for k, v in found.items()}


def time_steps(model: str, image_size: int, batch_size: int, *, steps: int = 3) -> float:
    """Seconds per training step of registry ``model`` here (random weights and images, the
    ``full`` profiles' precision policy and compilation; the first step, which traces, discarded)."""
    import keras
    import numpy as np

    from osteo_tf import config, models, training

    training.configure_precision("auto")
    spec = models.get_spec(model)
    size = max(int(image_size), spec.min_input_size)
    m = models.build(model, input_shape=(size, size, 1), num_classes=2, weights=None)
    rec = training.Recipe(batch_size=int(batch_size),
                          loss="binary_crossentropy" if m.output_shape[-1] == 1 else "categorical_crossentropy")
    training.compile_model(m, rec, jit_compile=config.get_profile("full").xla)
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, size, size, 1), dtype=np.float32)  # grey: the model repeats the channel
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, batch_size)]
    if m.output_shape[-1] == 1:
        y = y[:, 1:]
    m.train_on_batch(x, y)  # traces
    t0 = time.perf_counter()
    for _ in range(steps - 1):
        m.train_on_batch(x, y)
    seconds = (time.perf_counter() - t0) / max(1, steps - 1)
    keras.backend.clear_session()
    return seconds


def plan_studies(studies: Sequence[str], *, profile: str = "full", out: str | Path = "reports",
                 measure: bool = True) -> list[dict[str, Any]]:
    """The plan of each study: its training table with seconds per step and expected hours.

    Args:
        studies: names or numbers, or ``["all"]`` (studies without paper trainings are skipped).
        profile: the profile whose trainings are counted (``full`` for a GPU run).
        out: where a ``full-smoke`` run's ``<study>/metrics.json`` supplies measured step times.
        measure: run :func:`time_steps` for a model without a measured step time (else blank).

    Returns:
        One dict per study: ``study``, ``table`` (DataFrame), ``steps``, ``hours`` (None when a
        step time is missing) and ``source`` (where the seconds per step come from).
    """
    from osteo_tf.studies import get_study, study_names

    names = study_names() if list(studies) == ["all"] else [get_study(n).name for n in studies]
    plans = []
    for name in names:
        st = get_study(name)
        if st.workflow not in PLANNERS:
            continue
        table = training_plan(st.workflow, profile)
        metrics = Path(out) / name / "metrics.json"
        measured, timed = {}, set()
        if metrics.exists() and json.loads(metrics.read_text()).get("profile") == "full-smoke":
            measured = measured_step_seconds(metrics)
        secs, sources = [], []
        for _, r in table.iterrows():
            key = (r["model"], int(r["image_size"]))
            s = measured.get(key)
            if s is None and measure and r["model"] != "study04_tuned":
                s = time_steps(r["model"], r["image_size"], r["batch_size"])
                measured[key] = s
                timed.add(key)
            if s is None and r["model"] == "study04_tuned":
                s = measured.get(("study04_model1", int(r["image_size"])))  # the tuner searches Model 1's family
            secs.append(None if s is None else round(float(s), 4))
            sources.append("not measured" if s is None else "timing pass" if key in timed else "full-smoke run")
        table["s/step here"] = secs
        table["s/step from"] = sources
        source = (f"full-smoke run {metrics} (median step after the first)" if "full-smoke run" in sources else "")
        if "timing pass" in sources:
            source += ("; " if source else "") + "timing pass now (osteo_tf.workload.time_steps: steps 2-3 of 3)"
        table["hours here"] = [None if s is None else round(s * n / 3600, 2) for s, n in zip(secs, table["steps"])]
        missing = any(s is None for s in secs)
        plans.append({"study": name, "profile": profile, "table": table, "steps": int(table["steps"].sum()),
                      "hours": None if missing else round(float(table["hours here"].sum()), 2), "source": source})
    return plans


def format_plan(plans: Sequence[dict]) -> str:
    """The plans as text for the terminal."""
    lines = []
    for p in plans:
        hours = "unknown (a step time is missing)" if p["hours"] is None else f"{p['hours']} h on this machine"
        lines.append(f"{p['study']} ({p['profile']} profile): {p['steps']} training steps, {hours}")
        lines.append(f"  seconds per step from: {p['source']}")
        lines += ["  " + ln for ln in p["table"].to_string(index=False).splitlines()]
        lines.append("")
    total_steps = sum(p["steps"] for p in plans)
    known = [p["hours"] for p in plans if p["hours"] is not None]
    lines.append(f"total: {total_steps} training steps" + (f", {round(sum(known), 2)} h on this machine" if known else "")
                 + " (a GPU is typically 10-50x faster per step; early stopping may end runs sooner)")
    return "\n".join(lines)


def report_table(settings, records: Sequence[dict], *, measure_missing: bool = True) -> pd.DataFrame:
    """For a study report: the ``full`` profile's trainings with the seconds per step measured in
    this run (``records``: its metrics.json results), when this run is a ``full-smoke`` run (the
    same models, sizes, batches, precision and compilation); a model with a single step here
    (nothing to time after the tracing step) gets a :func:`time_steps` pass when
    ``measure_missing``. Other profiles get the steps only.

    Args:
        settings: this run's study ``Settings``.
        records: the run's result records (``ctx.results``).
        measure_missing: time the models this run could not.
    """
    workflow = type(settings).__module__.rsplit(".", 1)[-1]
    table = training_plan(workflow, "full")
    measured: dict[tuple[str, int], list[float]] = {}
    for r in records:
        if r.get("seconds_per_step") and r.get("image_size"):
            measured.setdefault((str(r["model"]), int(r["image_size"])), []).append(float(r["seconds_per_step"]))
    same = settings.profile == "full-smoke"
    secs, sources, timed = [], [], {}
    for _, r in table.iterrows():
        key = (r["model"], int(r["image_size"]))
        # a record may name the paper's model (study 05: "mobilenetv3" for mobilenetv3large)
        found = [v for (m, size), v in measured.items() if size == key[1] and (m == key[0] or key[0].startswith(m))]
        if not same:
            secs.append(None)
            sources.append(f"not measured ({settings.profile} profile: other models or sizes)")
        elif found:
            secs.append(round(float(pd.Series(found[0]).median()), 4))
            sources.append("this run (median step after the first)")
        elif measure_missing and r["model"] != "study04_tuned":
            if key not in timed:
                timed[key] = round(time_steps(r["model"], r["image_size"], r["batch_size"]), 4)
            secs.append(timed[key])
            sources.append("timing pass after this run (one step here)")
        else:
            secs.append(None)
            sources.append("not measured")
    table["s/step here"] = secs
    table["hours here"] = [None if s is None else round(s * n / 3600, 2) for s, n in zip(secs, table["steps"])]
    table["s/step from"] = sources
    return table


def check_full_smoke(out: str | Path, studies: Sequence[str] | None = None) -> list[str]:
    """What a ``full-smoke`` run in ``out`` is missing: for every study with paper trainings (of
    ``studies``, names as ``osteo_tf.studies`` registers them; ``None``: all), a
    ``status.json`` that says ok, a ``metrics.json`` of the ``full-smoke`` profile that records its
    ``runtime`` (strategy, replicas, precision, XLA), and a result for every model the ``full``
    profile trains (:func:`training_plan`; a record may name the paper's model, e.g. study 05's
    ``mobilenetv3`` for ``mobilenetv3large``). Returns one line per problem (empty: complete)."""
    from osteo_tf.studies import STUDIES

    problems = []
    for name, st in STUDIES.items():
        if st.workflow not in PLANNERS or (studies is not None and name not in studies):
            continue
        folder = Path(out) / name
        try:
            status = json.loads((folder / "status.json").read_text())
            metrics = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"{name}: no readable status.json and metrics.json ({exc})")
            continue
        if status.get("status") != "ok":
            problems.append(f"{name}: status {status.get('status')!r} ({status.get('error')})")
        if metrics.get("profile") != "full-smoke":
            problems.append(f"{name}: metrics.json is of profile {metrics.get('profile')!r}, not 'full-smoke'")
        runtime = metrics.get("runtime") or {}
        absent = [k for k in ("strategy", "replicas", "precision", "xla") if k not in runtime]
        if absent:
            problems.append(f"{name}: metrics.json runtime lacks {absent}")
        recorded = {str(r.get("model")) for r in metrics.get("results", [])}
        for model in dict.fromkeys(training_plan(st.workflow, "full")["model"]):
            if not any(model == m or model.startswith(m) for m in recorded):
                problems.append(f"{name}: no result for {model} (recorded: {sorted(recorded)})")
    return problems


__all__ = ["training_plan", "check_full_smoke", "measured_step_seconds", "time_steps", "plan_studies", "format_plan", "report_table",
           "PLANNERS", "POISSON_MEAN_IMAGES", "STUDY01_SET_FACTOR"]
