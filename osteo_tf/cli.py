"""The ``osteo-tf`` command line (contract in the README and design notes).

Every subcommand imports its module lazily, so ``osteo-tf --help`` is instant and
``osteo-tf inspect`` does not pay for importing TensorFlow. ``python -m osteo_tf`` runs the same
command line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Sequence


def _cmd_synth(args: argparse.Namespace) -> int:
    from osteo_tf import synthetic

    meta = synthetic.write_dataset(
        args.out,
        mode=args.mode,
        classes=args.classes,
        patients=args.patients,
        preset=args.preset,
        size=args.size,
        seed=args.seed,
    )
    counts = meta["label"].value_counts().sort_index().to_dict()
    print(
        f"wrote {len(meta)} images of {meta['patient_id'].nunique()} patients to {args.out} "
        f"(mode={args.mode}, preset={args.preset}, classes={counts})"
    )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from osteo_tf import datasets

    try:
        ds = datasets.find_dataset(args.dir)
    except datasets.DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = ds.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(datasets.format_summary(summary))
    readable = [c for c, n in summary["classes"].items() if n > 0]
    if len(readable) < 2:
        print(
            f"error: {args.dir}: need at least two classes with readable images, found {len(readable)} ({readable})",
            file=sys.stderr,
        )
        return 2
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from osteo_tf import bench

    records = bench.run(args.only or None)
    if args.json:
        bench.write_json(records, args.json)
        print(f"wrote {len(records)} record(s) to {args.json}")
    return 0 if all(r["meets_target"] for r in records) else 1


def _format_value(value: object) -> str:
    """A parameter value as ``-p KEY=VALUE`` accepts it (tuples as comma-separated names)."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _print_params(names: Sequence[str], profile: str) -> None:
    """Print each study notebook's parameters: type, default, the profile's value and help."""
    from osteo_tf import reports
    from osteo_tf.studies import get_study, study_names

    names = study_names() if list(names) == ["all"] else [get_study(n).name for n in names]
    for i, name in enumerate(names):
        st = get_study(name)
        declared = reports.notebook_parameters(st.notebook)
        values: dict[str, object] = {}
        if st.workflow:
            settings = importlib.import_module(f"osteo_tf.workflows.{st.workflow}").Settings.for_profile(profile)
            values = {f: getattr(settings, f) for f in settings.field_names()}
            values["profile"] = profile
        rows = [(p["name"], p["inferred_type_name"], p["default"],
                 _format_value(values[p["name"]]) if p["name"] in values else "",
                 p["help"]) for p in declared.values()]
        header = ("parameter", "type", "default", f"{profile} profile", "help")
        widths = [max(len(r[c]) for r in [header, *rows]) for c in range(4)]
        if i:
            print()
        print(f"{st.name}: {st.title}")
        print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[4])
        for row in rows:
            print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[4])
    print("\nOverride with -p KEY=VALUE; a default of None means the profile's value.")


def _positive_int(text: str) -> int:
    """argparse type: a positive integer (``--jobs``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer. Received: {text!r}")
    return value


def _cmd_run(args: argparse.Namespace) -> int:
    from osteo_tf import reports

    if args.params:
        _print_params(args.studies, args.profile)
        return 0
    if args.plan:
        from osteo_tf import workload

        print(workload.format_plan(workload.plan_studies(args.studies, profile=args.profile, out=args.out)))
        return 0
    params = reports.parse_overrides(args.param or [])
    if args.strategy is not None:
        params["strategy"] = args.strategy
    runs = reports.run_studies(args.studies, profile=args.profile, data_dir=args.data, out=args.out,
                               params=params, progress=lambda msg: print(msg, flush=True), jobs=args.jobs)
    failed = [r.study for r in runs if r.status != "ok"]
    print(f"{len(runs) - len(failed)}/{len(runs)} studies ok; index: {Path(args.out) / 'index.html'}")
    if failed:
        print(f"failed: {', '.join(failed)} (partial reports kept)", file=sys.stderr)
        return 1
    if args.profile == "full-smoke":  # the paper protocol's code path: every full-profile model must have run
        from osteo_tf import workload

        problems = workload.check_full_smoke(args.out, [r.study for r in runs])
        for line in problems:
            print(f"full-smoke incomplete: {line}", file=sys.stderr)
        if problems:
            return 1
        print("full-smoke: every model of the full profile ran, with its strategy, precision and XLA recorded")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from osteo_tf import inference

    table, skipped = inference.predict_files(args.model, args.images, explain=args.explain, out_dir=args.out,
                                             lime_samples=args.lime_samples, seed=args.seed)
    print(f"wrote {len(table)} prediction(s) to {Path(args.out) / 'predictions.csv'}")
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} image(s) skipped", file=sys.stderr)
        return 1
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from osteo_tf import evaluation, inference

    result = inference.evaluate(args.model, args.data, out_dir=args.out, n_boot=args.n_boot, seed=args.seed)
    print(inference.format_evaluation(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(evaluation.jsonable(result), indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.out:
        print(f"wrote {Path(args.out) / 'predictions.csv'} and {Path(args.out) / 'evaluation.json'}")
    for item in result["skipped"]:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    if result["skipped"]:
        print(f"{len(result['skipped'])} image(s) skipped", file=sys.stderr)
        return 1
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from osteo_tf import inference

    out = inference.export(args.model, args.out)
    print(f"wrote SavedModel {out} (signature 'serve': grey (N, H, W, 1) float32 in [0, 1] -> probabilities)")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from osteo_tf.config import PROFILES
    from osteo_tf.studies import NOTEBOOK_DIR, STUDIES

    print("studies:")
    found = [st.notebook.exists() for st in STUDIES.values()]
    for (name, st), exists in zip(STUDIES.items(), found):
        mark = "" if exists or not any(found) else "  (notebook not yet written)"
        print(f"  {name:<32} {st.title}{mark}")
    if not any(found):
        print(f"  (no notebooks in {NOTEBOOK_DIR}: `osteo-tf run` needs a clone of the repository)")
    try:
        from osteo_tf import models

        print("models:\n  " + ", ".join(models.names()))
    except ImportError as exc:  # pragma: no cover
        print(f"models: unavailable ({exc})")
    print("profiles:")
    for p in PROFILES.values():
        print(f"  {p.name:<10} {p.description}")
    return 0


def _run_epilog() -> str:
    """The epilog of ``osteo-tf run --help``: the registered studies and examples."""
    from osteo_tf.studies import STUDIES

    lines = ["studies (a name, its number such as 01, or 'all'):"]
    lines += [f"  {name:<30} {st.title}" for name, st in STUDIES.items()]
    lines += [
        "",
        "examples:",
        "  osteo-tf run 01 --profile smoke -p models=study01_cnn",
        "  osteo-tf run 01 --params                  # the notebook's parameters, nothing runs",
        "  osteo-tf run all --profile quick --out reports",
        "  osteo-tf run all --profile full-smoke --out fs     # the paper protocol's code path on a CPU",
        "  osteo-tf run all --profile full --plan                 # steps and expected time per study",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``osteo-tf``."""
    from osteo_tf import __version__

    parser = argparse.ArgumentParser(
        prog="osteo-tf",
        description="Reproducible osteoporosis-from-radiograph studies with Keras and TensorFlow.",
    )
    parser.add_argument("--version", action="version", version=f"osteo-tf {__version__}",
                        help="print the version (osteo-tf VERSION) and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of the commands below; osteo-tf COMMAND --help for its options")

    p = sub.add_parser("synth", help="generate a synthetic radiograph dataset")
    p.add_argument("--mode", required=True, choices=["calcaneus", "knee", "dxa"],
                   help="radiograph kind: calcaneus ROIs, knee X-rays or spine DXA scans")
    p.add_argument("--classes", type=int, default=2, choices=[2, 3],
                   help="2 (normal/osteoporosis) or 3 (adds osteopenia) (default 2)")
    p.add_argument("--patients", type=int, default=100, help="number of patients (default 100)")
    p.add_argument("--preset", default="default", choices=["easy", "default", "hard", "realistic"],
                   help="difficulty: how strongly bone quality separates the classes (default: default)")
    p.add_argument("--size", type=int, default=None, help="image size in px (default: per mode)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same arguments give byte-identical files (default 0)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("inspect", help="describe a dataset folder without modifying it")
    p.add_argument("dir", type=Path, help="a dataset folder (one sub-folder per class) or a manifest CSV")
    p.add_argument("--json", action="store_true", help="print JSON (keys: n_images, n_groups, classes, unreadable, duplicates)")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("bench", help="performance benchmarks, each a ratio against its baseline")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the records as JSON")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("run", help="execute study notebooks with papermill and export HTML reports",
                       description="Execute study notebooks with papermill and export HTML reports.",
                       epilog=_run_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="+", metavar="STUDY", help="study names or numbers, or 'all'")
    p.add_argument("--profile", default="quick", choices=["smoke", "quick", "full", "full-smoke"],
                   help="smoke: tiny data, proves the plumbing; quick: all studies in ~20 min on 2 CPU cores; full: the papers' protocols, for a GPU; "
                        "full-smoke: full's models, sizes, recipes, precision and compilation on a handful of patients for one epoch (default quick)")
    p.add_argument("--strategy", default=None, choices=["auto", "none", "mirrored", "multiworker"],
                   help="tf.distribute strategy (the notebooks' strategy parameter): auto = MirroredStrategy when more than one "
                        "GPU is visible, else none; multiworker = MultiWorkerMirroredStrategy configured by TF_CONFIG (default: auto)")
    p.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                   help="studies run at once, each in its own kernel (default 1). On a CPU a study keeps about one core "
                        "busy, so 2 on a 2-core machine nearly halves the batch; keep 1 on a GPU")
    p.add_argument("--plan", action="store_true",
                   help="print per study the training steps the profile will run and the measured seconds per step, and exit")
    p.add_argument("--data", default=None, help="a dataset folder or manifest CSV (default: synthetic data)")
    p.add_argument("--out", default="reports", type=Path, help="output folder (default: reports)")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE",
                   help="override a notebook parameter (unknown keys are an error)")
    p.add_argument("--params", action="store_true",
                   help="list each notebook's parameters (type, default, the profile's value, help) and exit without running")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("predict", help="class probabilities (CSV) and explanation overlays for image files")
    p.add_argument("--model", required=True, type=Path, help="a .keras model (class names from its osteo_tf sidecar)")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, TIFF, BMP, DICOM)")
    p.add_argument("--explain", choices=["gradcam", "gradcam++", "lime"], default=None,
                   help="also write one explanation overlay PNG per image (default: none)")
    p.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: predictions)")
    p.add_argument("--lime-samples", type=int, default=1000, help="LIME perturbation samples per image")
    p.add_argument("--seed", type=int, default=0, help="LIME seed")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", help="external validation of a saved model on a dataset folder or manifest",
                       description="External validation of a saved model bundle: the reports' metrics at the "
                                   "bundle's threshold and at 0.5, patient-level bootstrap 95% CIs and calibration.")
    p.add_argument("--model", required=True, type=Path, help="a .keras model bundle (class names and threshold from its sidecar)")
    p.add_argument("--data", required=True, type=Path, help="a dataset folder (class sub-folders) or manifest CSV")
    p.add_argument("--out", type=Path, default=None, help="also write predictions.csv and evaluation.json here")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the evaluation as JSON")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("export", help="write a saved model as a TensorFlow SavedModel for serving")
    p.add_argument("--model", required=True, type=Path, help="a .keras model bundle")
    p.add_argument("--out", required=True, type=Path, help="a new (or empty) output folder")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("list", help="list studies, models and profiles")
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``osteo-tf`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
