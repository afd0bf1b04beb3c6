"""A cohort run: the cases not done yet, run by an executor, each recorded in the manifest as it finishes.

The model is checked once here (its metadata, the depth asked for) before any case; the manifest is
claimed for the run (two runs on one manifest are refused) and read: a case whose latest record with
the same key is ``done`` and whose output is there is skipped (:mod:`.manifest`). Each case to run
gets a ``started`` record, then its ``done`` or ``failed`` one: an output that exists with a record of
its key (an interrupted case) or of its ``output_key`` (the same output, model and options: its input
changed) is this cohort's, and is replaced; any other existing output is refused unless
``--overwrite``. A case refused before it could run (its name, its folder, its file name:
:mod:`.discovery`) is recorded as failed at once. A failing case is recorded and the others go on. Progress counts cases, with
their rate, the time left for the cohort and its slices per second; a summary table ends the run,
and the exit status says whether every case succeeded (0) or not (:data:`EXIT_CASES_FAILED`).
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, TextIO

from UNetSegmentationLib.cohort.discovery import CohortCase
from UNetSegmentationLib.cohort.executors import Executor, Job
from UNetSegmentationLib.cohort.case_names import display_name
from UNetSegmentationLib.cohort.manifest import DONE, FAILED, STARTED, Manifest, case_key, now_text, output_key
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.io.locks import claim_output, release_output
from UNetSegmentationLib.model.checkpoint import load_checkpoint
from UNetSegmentationLib.model.depth import resolve_depth
from UNetSegmentationLib.model.metadata import ModelMetadata
from UNetSegmentationLib.protocol.reporters import Reporter

#: exit status of a cohort run in which at least one case failed (the others are done)
EXIT_CASES_FAILED = 3
#: at most this many cases are listed one by one in the summary table (failures always are)
LISTED_CASES = 40


@dataclass
class CohortResult:
    """What a cohort run ends with: each case's latest record (this run's, or the earlier one it skipped)."""

    records: Dict[str, dict]
    ran: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> List[str]:
        return [name for name, record in self.records.items() if record.get("status") != DONE]

    @property
    def exit_code(self) -> int:
        return EXIT_CASES_FAILED if self.failed else 0


def check_model(checkpoint_path: Path, options: SegmentationOptions, plain_metadata: Optional[ModelMetadata] = None) -> ModelMetadata:
    """The model's metadata, checked with the options (a bad checkpoint or depth stops the run before any case)."""
    metadata = load_checkpoint(checkpoint_path, plain_metadata, weights=False).metadata
    resolve_depth(metadata, options.depth)
    return metadata


def run_cohort(
    cases: Sequence[CohortCase],
    executor: Executor,
    manifest_path: Path,
    model_sha256: str,
    metadata: ModelMetadata,
    options: SegmentationOptions,
    reporter: Reporter,
) -> CohortResult:
    """Run the cases of ``cases`` not done yet with ``executor``; returns every case's latest record."""
    t0 = time.perf_counter()
    claim_output(manifest_path, "manifest")  # held, not in a claiming block: each case claims its own outputs in one
    try:
        manifest = Manifest(manifest_path)
        result = CohortResult({})
        jobs, keys, refused = _jobs(cases, manifest, model_sha256, options, result)
        reporter.start(
            "predict-cohort", len(cases), "case", initial=len(result.skipped), arch=metadata.architecture,
            cases=len(cases), skipped=len(result.skipped), executor=executor.name, workers=executor.workers, manifest=str(manifest_path),
        )
        for case, _ in jobs:
            manifest.append({**keys[case.name], "case": case.name, "input": str(case.input), "output": str(case.output), "status": STARTED, "model_sha256": model_sha256, "started": now_text()})
        _collect(itertools.chain(refused, executor.run(jobs)), keys, model_sha256, manifest, result, reporter, t0)  # lazily: each record written as its case ends
    finally:
        release_output(manifest_path)
    result.seconds = time.perf_counter() - t0
    return result


def _jobs(cases: Sequence[CohortCase], manifest: Manifest, model_sha256: str, options: SegmentationOptions, result: CohortResult):
    """``(jobs, keys, refused records)``: the cases to run (with whether their existing output is this
    cohort's), each case's keys, and the failed records of the cases refused before running; the cases
    done before are put in ``result`` as skipped."""
    latest, by_output = manifest.latest(), manifest.latest("output_key")
    jobs: List[Job] = []
    keys: Dict[str, Dict[str, str]] = {}
    refused: List[dict] = []
    for case in cases:
        refusal = case.refusal
        if refusal is None:
            try:
                keys[case.name] = {"key": case_key(case, model_sha256, options), "output_key": output_key(case, model_sha256, options)}
            except OSError as error:  # the input went away or cannot be read since it was found
                refusal = f"cannot read {display_name(str(case.input))}: {error.strerror or error}"
        if refusal is not None:
            refused.append({"case": case.name, "input": display_name(str(case.input), 4096), "output": None, "status": FAILED, "error": refusal, "warnings": [], "finished": now_text()})
            continue
        record = latest.get(keys[case.name]["key"])
        exists = Path(case.output).exists()
        if record and record.get("status") == DONE and exists:
            result.records[case.name] = record
            result.skipped.append(case.name)
        else:
            jobs.append((case, exists and (record is not None or keys[case.name]["output_key"] in by_output)))  # an output with a record of its key is ours
    return jobs, keys, refused


def _collect(records, keys: Dict[str, Dict[str, str]], model_sha256: str, manifest: Manifest, result: CohortResult, reporter: Reporter, t0: float) -> None:
    """Record each finished case in the manifest and report it (its warnings, its error, the cohort's progress)."""
    slices = 0
    for record in records:
        record = {**keys.get(record["case"], {}), **record, "model_sha256": model_sha256}
        manifest.append(record)
        result.records[record["case"]] = record
        result.ran.append(record["case"])
        shown = display_name(record["case"])
        for warning in record.get("warnings") or ():
            reporter.warning(f"{shown}: {warning}")
        if record["status"] != DONE:
            reporter.warning(f"{shown} failed: {record.get('error')}")
        slices += record.get("slices") or 0
        elapsed = time.perf_counter() - t0
        reporter.progress(
            len(result.records), case=shown, status=record["status"], slices_per_s=round(slices / elapsed, 2) if elapsed > 0 else None,
        )


def summary_table(cases: Sequence[CohortCase], result: CohortResult) -> str:
    """The table that ends a run: one row per case (the failed ones always; others up to :data:`LISTED_CASES`), then the totals."""
    rows = [("case", "status", "seconds", "segments", "confidence", "note")]
    failed = set(result.failed)
    listed = [c for c in cases if c.name in failed] + [c for c in cases if c.name not in failed][: max(0, LISTED_CASES - len(failed))]
    skipped = set(result.skipped)
    for case in listed:
        record = result.records.get(case.name, {})
        status = "skipped (done)" if case.name in skipped else str(record.get("status", "not run"))
        volumes = record.get("volumes_ml") or {}
        confidence = record.get("mean_confidence")
        rows.append((
            display_name(case.name, 60), status, f"{record['seconds']:.1f}" if isinstance(record.get("seconds"), (int, float)) else "",
            f"{sum(1 for v in volumes.values() if v)}/{len(volumes)}" if volumes else "",
            f"{confidence:.3f}" if isinstance(confidence, (int, float)) else "", _short(record.get("error") or ""),
        ))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
    if len(listed) < len(cases):
        lines.append(f"... {len(cases) - len(listed)} more done case(s): see the manifest")
    done = sum(1 for r in result.records.values() if r.get("status") == DONE)
    lines.append(f"{len(cases)} cases: {done} done ({len(result.skipped)} of them skipped, done before), {len(failed)} failed, in {result.seconds:.1f} s")
    return "\n".join(line.rstrip() for line in lines)


def _short(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def finish(cases: Sequence[CohortCase], result: CohortResult, reporter: Reporter, manifest_path: Path, qc_report=None, stream: Optional[TextIO] = None) -> int:
    """The summary table (stderr), the ``done`` event, and the exit status. ``qc_report``: the
    :class:`~.qc_report.QcReport` written, whose flagged cases and place end the run's words."""
    reporter.done(
        cases=len(cases), done=len(cases) - len(result.failed), failed=len(result.failed), skipped=len(result.skipped), ran=len(result.ran),
        manifest=str(manifest_path), qc_report=str(qc_report.csv) if qc_report else None, flagged=qc_report.flagged if qc_report else None,
        seconds=round(result.seconds, 3),
    )
    stream = stream or sys.stderr
    print(summary_table(cases, result), file=stream)  # after done: the progress bar is closed
    if qc_report is not None:
        print(f"QC report: {qc_report.flagged} of {len(cases)} case(s) flagged for review, listed first in {qc_report.csv} (contact sheet: {qc_report.contact_sheet or 'none, no case done'})", file=stream)
    return result.exit_code
