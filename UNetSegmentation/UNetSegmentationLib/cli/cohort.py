"""``unetseg predict INPUT... --output-dir DIR``: a cohort's options, checked, and the run (``cohort/``).

Everything the run needs is checked before any case: the options, what is installed for them (Ray,
highdicom, matplotlib), the model (metadata and depth), the inputs found and the outputs they map
to. The model's SHA-256 makes the manifest's keys (a run with another model recomputes every case).
"""

from __future__ import annotations

import argparse
import math
import socket
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
        if value is not None and (not math.isfinite(value) or value < 0 or (option == "--ray-cpus-per-worker" and value == 0)):
            raise UserError(f"{option} must be a positive number, not {value}")
    if args.executor == "local" and (args.ray_address or args.ray_cpus_per_worker or args.ray_gpus_per_worker):
        raise UserError("--ray-address and --ray-*-per-worker need --executor ray")
    needs = [("ray", "cluster", args.executor == "ray"), ("highdicom", "dicom", args.dicom_seg or str(args.name or "").lower().endswith(".dcm")), ("matplotlib", "plots", bool(args.qc_report))]
    for module, extra, needed in needs:
        if needed and not module_is_installed(module):
            raise UserError(f"this run needs {module}, which is not installed: pip install \"UNetSegmentationLib[{extra}]\"")


def _output_dir(text: str) -> Path:
    from UNetSegmentationLib.io.output_gate import check_output

    folder = Path(text)
    check_output(folder, what="--output-dir", overwrite=True, kind="folder")  # no file, no special file, not the bundled models
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot make the output folder {folder}: {error.strerror or error}") from None
    return folder


def _qc_dir(text) -> "Path | None":
    """``--qc-report DIR`` checked before any case: a folder (existing or to be made), through the output gate."""
    if not text:
        return None
    from UNetSegmentationLib.io.output_gate import check_output

    check_output(Path(text), what="--qc-report", overwrite=True, kind="folder")
    return Path(text)


def predict_cohort(args: argparse.Namespace) -> int:
    """The cohort run of a parsed ``unetseg predict`` command line; returns the exit status."""
    from UNetSegmentationLib.cli.models import metadata_from_options
    from UNetSegmentationLib.cohort.batch import check_model, finish, run_cohort
    from UNetSegmentationLib.cohort.discovery import DEFAULT_NAME_RULE, find_inputs, plan_cases
    from UNetSegmentationLib.cohort.manifest import check_manifest_path
    from UNetSegmentationLib.io.file_digest import file_sha256
    from UNetSegmentationLib.inference.options import SegmentationOptions

    _check_cohort_options(args)
    options = SegmentationOptions.from_namespace(args)
    plain_metadata = metadata_from_options(args) if args.arch else None
    metadata = check_model(Path(args.checkpoint), options, plain_metadata)
    qc_dir = _qc_dir(args.qc_report)
    output_dir = _output_dir(args.output_dir)
    inputs = find_inputs(args.paths, args.series, exclude=[output_dir, *([qc_dir] if qc_dir else [])])
    cases = plan_cases(inputs, output_dir, args.name or DEFAULT_NAME_RULE, args.dicom_seg)
    manifest_path = check_manifest_path(Path(args.manifest) if args.manifest else output_dir / "manifest.jsonl", output_dir, [Path(args.checkpoint), *(i.path for i in inputs)])
    model_sha256 = file_sha256(Path(args.checkpoint))
    executor = _executor(args, options, model_sha256, plain_metadata, len(cases))
    result = run_cohort(cases, executor, manifest_path, model_sha256, metadata, options, args.reporter)
    report = None
    if qc_dir is not None:
        from UNetSegmentationLib.cohort.qc_report import write_qc_report

        report = write_qc_report(cases, result.records, metadata.classes, qc_dir)
    return finish(cases, result, args.reporter, manifest_path, report)


def _executor(args: argparse.Namespace, options, model_sha256: str, plain_metadata, cases: int):
    """The executor the options ask for: this process, ``--workers`` processes, or Ray actors; how many
    workers, their threads and memory are the cohort plan's (:mod:`~UNetSegmentationLib.cohort.resources`)."""
    from UNetSegmentationLib.cohort.executors import InProcessExecutor, ProcessExecutor, WorkerSpec
    from UNetSegmentationLib.cohort.resources import plan_cohort

    spec = WorkerSpec(str(args.checkpoint), options, model_sha256, plain_metadata)
    if args.executor == "ray":
        from UNetSegmentationLib.cohort.ray_executor import RayExecutor

        workers = args.workers or 1
        if args.ray_address:
            check_ray_address(args.ray_address)
            cpus = args.ray_cpus_per_worker or 1.0
        else:  # a local instance: this machine's usable CPUs, split as a local run splits them
            cpus = args.ray_cpus_per_worker or float(plan_cohort(workers, workers, memory=lambda: None).threads or 1)
        return RayExecutor(spec, workers, cpus, args.ray_gpus_per_worker or 0.0, args.ray_address)
    plan = plan_cohort(args.workers, cases, options.threads)
    for note in plan.notes:
        args.reporter.warning(note)
    if plan.workers > 1:
        return ProcessExecutor(spec, plan.workers, plan.threads, plan.memory_share)
    return InProcessExecutor(spec, plan.threads)


#: seconds to wait for a Ray head's port to answer before saying there is none
RAY_CONNECT_TIMEOUT_S = 5.0


def check_ray_address(address: str) -> None:
    """Refuse, in seconds and with one message, a ``--ray-address HOST:PORT`` where nothing listens (Ray
    itself retries for minutes, printing to stderr all the while). ``auto`` and ``ray://`` addresses are Ray's to find."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--ray-address {address!r}: give HOST:PORT of the Ray head (e.g. head-node:6379), or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        raise UserError(f"cannot reach a Ray cluster at {address}: {error.strerror or error}; start it with `ray start --head --port {port}` on {host}, or check the address") from None
