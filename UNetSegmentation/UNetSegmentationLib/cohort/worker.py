"""A cohort worker: the model opened once, then one case after another, each ending in a manifest record.

The same :class:`CaseWorker` runs in the ``unetseg`` process (one worker), in each process of
``--workers N`` and as each Ray actor of ``--executor ray``: it is built from picklable arguments (paths,
options) and returns plain dicts, so it crosses process and machine boundaries unchanged. A case that
fails (a corrupt file, an unreadable series, a bug) becomes a ``failed`` record with its message; the
worker goes on with the next case. Opening the model fails the whole run (every case would fail).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Optional

from UNetSegmentationLib.cohort.case import CaseReporter, prepare_case, segment_case, with_threads
from UNetSegmentationLib.cohort.discovery import CohortCase
from UNetSegmentationLib.cohort.manifest import DONE, FAILED, now_text
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.inference.quality import CaseConfidence
from UNetSegmentationLib.inference.predict_file import checked_input, open_model
from UNetSegmentationLib.io.dicom_seg import algorithm_of
from UNetSegmentationLib.io.outputs import claim_outputs, claiming_outputs
from UNetSegmentationLib.model.checkpoint import load_checkpoint
from UNetSegmentationLib.model.metadata import ModelMetadata


class CaseWorker:
    """Opens the model of ``checkpoint_path`` once (``threads`` CPU threads unless the options set them),
    then segments cases with :meth:`run`."""

    def __init__(self, checkpoint_path: str, options: SegmentationOptions, checkpoint_sha256: str, plain_metadata: Optional[ModelMetadata] = None, threads: Optional[int] = None) -> None:
        self.options = with_threads(options, threads)
        checkpoint = load_checkpoint(checkpoint_path, plain_metadata, weights=False)
        self.model = open_model(checkpoint, self.options, CaseReporter())
        self.algorithm = algorithm_of(Path(checkpoint_path), checkpoint_sha256, checkpoint.metadata.architecture)
        self.where = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, case: CohortCase, overwrite: bool = False) -> dict:
        """Segment ``case`` (``overwrite``: its output is a leftover of this cohort's interrupted run);
        returns its manifest record (``status`` done or failed)."""
        t0 = time.perf_counter()
        reporter, meter = CaseReporter(), CaseConfidence()
        record = {"case": case.name, "input": str(case.input), "series": case.series_uid, "output": str(case.output), "worker": self.where}
        options = dataclasses.replace(self.options, overwrite=True) if overwrite else self.options
        try:
            prepared = prepare_case(case, options)
            with claiming_outputs():
                claim_outputs(prepared.outputs)
                header = checked_input(prepared.header, self.model.metadata, options)
                summary = segment_case(prepared, header, self.model, options, reporter, self.algorithm, observers=[meter], measure=True)
        except UserError as error:
            return _failed(record, str(error), reporter, t0)
        except MemoryError:
            return _failed(record, "out of memory", reporter, t0)
        except Exception as error:  # a bug on this case: recorded with its traceback's last lines, the cohort goes on
            tail = traceback.format_exc().strip().splitlines()[-3:]
            return _failed(record, f"internal error: {type(error).__name__}: {error} ({' | '.join(t.strip() for t in tail)})"[:2000], reporter, t0)
        seconds = time.perf_counter() - t0
        return {
            **record,
            "status": DONE,
            "seconds": round(seconds, 3),
            "slices": meter.slices,
            "slices_per_s": round(meter.slices / seconds, 2) if seconds > 0 else None,
            "timings": {k: v for k, v in summary.get("timings", {}).items() if k not in ("load_model_s", "total_s")},  # the model's load: once per worker
            "volumes_ml": summary.get("volumes_ml", {}),
            "mean_confidence": meter.mean,
            "warnings": reporter.warnings,
            "scan_flags": _strings(summary.get("scan_flags")),  # the scan-against-model check's findings: the QC report flags the case
            "error": None,
            "finished": now_text(),
        }


def _failed(record: dict, message: str, reporter: CaseReporter, t0: float) -> dict:
    """The ``failed`` record of a case that started at ``t0`` (``perf_counter``), with its message and warnings."""
    return {**record, "status": FAILED, "error": message, "warnings": reporter.warnings, "seconds": round(time.perf_counter() - t0, 3), "finished": now_text()}


def _strings(value) -> list:
    """``value`` as a list of text (the summary's ``scan_flags`` when the run gave any)."""
    return [str(item) for item in value] if isinstance(value, (list, tuple)) else []
