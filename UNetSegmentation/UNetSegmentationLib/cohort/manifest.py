"""The manifest of a cohort run: one JSON object per line, per case attempt, appended as cases finish.

A record holds the case's name, input, output, ``key``, ``status`` (``started``, ``done``, ``failed``),
the seconds it took and its timings, slices and slices/s, the volume of each segment in mL, the mean
confidence, the warnings and the error message. Each record is one ``write`` of one line to a file
opened for appending, then flushed to the disk: a run killed at any moment leaves whole lines (a cut
last line is ignored by the reader), so a re-run knows exactly which cases are done.

A case's ``key`` is its identity: the input (its resolved path, size and modification time; for a
DICOM series, those of each of its files), the output path, the model (the checkpoint's SHA-256) and
the options that change the labels. A re-run skips a case whose latest record with the same key is
``done`` and whose output is still there; a changed input, model or option makes a new key, so that
case runs again.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional

from UNetSegmentationLib.cohort.discovery import CohortCase
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.options import SegmentationOptions

STARTED, DONE, FAILED = "started", "done", "failed"
#: options that do not change the labels (how fast, where the extra outputs go): left out of a case's key
NOT_IN_KEY = ("overwrite", "threads", "slice_workers", "batch_size", "review_list")


def now_text() -> str:
    """The time now, UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def input_fingerprint(path: Path, series_uid: Optional[str] = None) -> Dict[str, object]:
    """What identifies an input's content cheaply: path, size and modification time (a DICOM folder:
    of every file in it) and the series chosen."""
    path = Path(path).resolve()
    if path.is_dir():
        files = sorted((entry for entry in os.scandir(path) if entry.is_file() and not entry.name.startswith(".")), key=lambda entry: entry.name)
        stats = [(entry.name, entry.stat().st_size, entry.stat().st_mtime_ns) for entry in files]
        digest = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
        return {"path": str(path), "files": len(stats), "files_sha256": digest, "series": series_uid}
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def options_fingerprint(options: SegmentationOptions) -> Dict[str, object]:
    """The options that change a case's labels, as text."""
    fields = dataclasses.asdict(options)
    fields["probabilities"] = options.probabilities is not None
    return {name: str(value) for name, value in sorted(fields.items()) if name not in NOT_IN_KEY}


def case_key(case: CohortCase, model_sha256: str, options: SegmentationOptions) -> str:
    """The identity of ``case`` run with this model and these options (a SHA-256, hex)."""
    identity = {"input": input_fingerprint(case.input, case.series_uid), "output": str(Path(case.output).resolve()), "model": model_sha256, "options": options_fingerprint(options)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class Manifest:
    """The manifest file at ``path``: its records read once, new ones appended one line at a time."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: List[dict] = read_records(self.path)

    def latest(self) -> Dict[str, dict]:
        """The last record of each key."""
        latest: Dict[str, dict] = {}
        for record in self.records:
            if isinstance(record.get("key"), str):
                latest[record["key"]] = record
        return latest

    def append(self, record: dict) -> None:
        """Add ``record`` as one line, written in one call and flushed to the disk."""
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                if os.fstat(descriptor).st_size and not _ends_with_newline(self.path):
                    line = b"\n" + line  # a line cut by a killed run stays alone on its line
                os.write(descriptor, line)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        except OSError as error:
            raise UserError(f"cannot write the manifest {self.path}: {error.strerror or error}") from None
        self.records.append(record)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


def read_records(path: Path) -> List[dict]:
    """The records of the manifest at ``path`` ([] when there is none); lines that are not whole records are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as error:
        raise UserError(f"cannot read the manifest {path}: {error.strerror or error}") from None
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
