"""``unetseg predict INPUT... --output-dir DIR``: a cohort's options, checked, and the run (``cohort/``).

Everything the run needs is checked before any case: the options, what is installed for them (Ray,
highdicom, matplotlib), the model (metadata and depth), the inputs found and the outputs they map
to. The model's SHA-256 makes the manifest's keys (a run with another model recomputes every case).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.packages import module_is_installed

EXECUTORS = ("local", "ray")
#: options that only a cohort run takes, with the attribute and its "not given" value
COHORT_ONLY = (("--name", "name", None), ("--manifest", "manifest", None), ("--workers", "workers", None), ("--executor", "executor", "local"),
               ("--ray-address", "ray_address", None), ("--ray-cpus-per-worker", "ray_cpus_per_worker", None),
               ("--ray-gpus-per-worker", "ray_gpus_per_worker", 0.0), ("--qc-report", "qc_report", None), ("--dicom-seg", "dicom_seg", False))


def add_cohort_options(predict) -> None:
    """The cohort options of ``unetseg predict`` (README: Cohorts)."""
    group = predict.add_argument_group("cohorts (README: Cohorts): PATH... are folders, globs, datalists (.json), CSVs or volumes")
    group.add_argument("--output-dir", metavar="DIR", help="segment every input found into DIR (created), with a manifest that makes re-runs resume")
    group.add_argument("--name", metavar="RULE", help="output file name rule: {name} (path below the folder, '/' as '_'), {stem}, {index}; default {name}.nrrd")
    group.add_argument("--manifest", metavar="FILE", help="the JSON-lines manifest (default DIR/manifest.jsonl)")
    group.add_argument("--workers", type=int, metavar="N", help="cases segmented at once: local processes, or Ray actors (default 1)")
    group.add_argument("--executor", choices=EXECUTORS, default="local", help="local: this machine; ray: a Ray cluster (pip install 'UNetSegmentationLib[cluster]')")
    group.add_argument("--ray-address", metavar="ADDRESS", help="join this Ray cluster (e.g. HEAD:6379 or auto); default: a local Ray instance for the run")
    group.add_argument("--ray-cpus-per-worker", type=float, metavar="N", help="CPUs per Ray worker, its PyTorch threads (default: the cores / --workers locally, else 1)")
    group.add_argument("--ray-gpus-per-worker", type=float, default=0.0, metavar="N", help="GPUs per Ray worker (default 0)")
    group.add_argument("--qc-report", metavar="DIR", help="write a QC report there: qc.csv, a picture per case, a contact sheet, outliers first")
    group.add_argument("--dicom-seg", action="store_true", help="DICOM series inputs get a DICOM SEG (.dcm) instead of a label map")


def check_single_volume_options(args: argparse.Namespace) -> None:
    """Refuse cohort-only options on a one-volume run (they would be silently ignored)."""
    given = [option for option, name, unset in COHORT_ONLY if getattr(args, name, unset) != unset]
    if given:
        raise UserError(f"{', '.join(given)} only apply to a cohort: add --output-dir DIR (then every PATH is an input)")


def _check_cohort_options(args: argparse.Namespace) -> None:
    if args.output_dir is None:
        raise UserError(f"{len(args.paths)} paths given: segment one volume with INPUT OUTPUT, or a cohort with INPUT... --output-dir DIR")
    for option, value in (("--probabilities", args.probabilities), ("--review-list", args.review_list)):
        if value:
            raise UserError(f"{option} names one file; it applies to one volume, not to a cohort")
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be 1 or more")
    for option, value in (("--ray-cpus-per-worker", args.ray_cpus_per_worker), ("--ray-gpus-per-worker", args.ray_gpus_per_worker)):
        if value is not None and (value < 0 or (option == "--ray-cpus-per-worker" and value == 0)):
            raise UserError(f"{option} must be positive")
    if args.executor == "local" and (args.ray_address or args.ray_cpus_per_worker or args.ray_gpus_per_worker):
        raise UserError("--ray-address and --ray-*-per-worker need --executor ray")
    needs = [("ray", "cluster", args.executor == "ray"), ("highdicom", "dicom", args.dicom_seg or str(args.name or "").lower().endswith(".dcm")), ("matplotlib", "plots", bool(args.qc_report))]
    for module, extra, needed in needs:
        if needed and not module_is_installed(module):
            raise UserError(f"this run needs {module}, which is not installed: pip install \"UNetSegmentationLib[{extra}]\"")


def _output_dir(text: str) -> Path:
    folder = Path(text)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--output-dir {folder} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot make the output folder {folder}: {error.strerror or error}") from None
    return folder


def predict_cohort(args: argparse.Namespace) -> int:
    """The cohort run of a parsed ``unetseg predict`` command line; returns the exit status."""
    from UNetSegmentationLib.cli.models import metadata_from_options
    from UNetSegmentationLib.cohort.batch import check_model, finish, run_cohort
    from UNetSegmentationLib.cohort.discovery import DEFAULT_NAME_RULE, find_inputs, plan_cases
    from UNetSegmentationLib.io.file_digest import file_sha256
    from UNetSegmentationLib.inference.options import SegmentationOptions

    _check_cohort_options(args)
    options = SegmentationOptions.from_namespace(args)
    plain_metadata = metadata_from_options(args) if args.arch else None
    metadata = check_model(Path(args.checkpoint), options, plain_metadata)
    output_dir = _output_dir(args.output_dir)
    qc_dir = Path(args.qc_report) if args.qc_report else None
    inputs = find_inputs(args.paths, args.series, exclude=[output_dir, *([qc_dir] if qc_dir else [])])
    cases = plan_cases(inputs, output_dir, args.name or DEFAULT_NAME_RULE, args.dicom_seg)
    manifest_path = Path(args.manifest) if args.manifest else output_dir / "manifest.jsonl"
    model_sha256 = file_sha256(Path(args.checkpoint))
    executor = _executor(args, options, model_sha256, plain_metadata)
    result = run_cohort(cases, executor, manifest_path, model_sha256, metadata, options, args.reporter)
    if qc_dir is not None:
        from UNetSegmentationLib.cohort.qc_report import write_qc_report

        write_qc_report(cases, result.records, metadata.classes, qc_dir)
    return finish(cases, result, args.reporter, manifest_path, qc_dir)


def _executor(args: argparse.Namespace, options, model_sha256: str, plain_metadata):
    """The executor the options ask for: this process, ``--workers`` processes, or Ray actors."""
    from UNetSegmentationLib.cohort.executors import InProcessExecutor, ProcessExecutor, WorkerSpec

    spec = WorkerSpec(str(args.checkpoint), options, model_sha256, plain_metadata)
    workers = args.workers or 1
    if args.executor == "ray":
        from UNetSegmentationLib.cohort.ray_executor import RayExecutor

        cpus = args.ray_cpus_per_worker or (max(1, (os.cpu_count() or 1) // workers) if not args.ray_address else 1.0)
        return RayExecutor(spec, workers, cpus, args.ray_gpus_per_worker or 0.0, args.ray_address)
    return ProcessExecutor(spec, workers) if workers > 1 else InProcessExecutor(spec)
