"""The manifest of a cohort run: one JSON object per line, per case attempt, appended as cases finish.

A record holds the case's name, input, output, ``key``, ``status`` (``started``, ``done``, ``failed``),
the seconds it took and its timings, slices and slices/s, the volume of each segment in mL, the mean
confidence, the warnings and the error message. Each record is one ``write`` of one line to a file
opened for appending, then flushed to the disk: a run killed at any moment leaves whole lines (a cut
last line is ignored by the reader), so a re-run knows exactly which cases are done.

A case's ``key`` is its identity: the input, the output path, the model (the checkpoint's SHA-256)
and the options that change the labels. The input counts by its content where that is cheap: a file
(or a DICOM series, all its files together) of at most :data:`CONTENT_HASH_BYTES` by the SHA-256 of its
bytes, so that an input changed with its size and modification time restored is recomputed and one
merely touched or copied is not; a larger input by its size and modification time (nanoseconds). A
detached header (``.mhd``, ``.nhdr``) counts with its data file. A re-run skips a case whose latest
record with the same key is ``done`` and whose output is still there; a changed input, model or
option makes a new key, so that case runs again. Its ``output_key`` (output, model, options: no
input) says whether an existing output was written by this cohort for this case: a changed input
then replaces it; other options or another model do not, unless ``--overwrite``.

Records are read back as written by anyone (a hand-edited line): :func:`normalised` keeps only
fields of the expected type, so that the summary and the QC report never meet a list where a number
belongs.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from UNetSegmentationLib.cohort.discovery import CohortCase
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.io.file_digest import file_sha256

STARTED, DONE, FAILED = "started", "done", "failed"
#: inputs up to this size are identified by the SHA-256 of their content (about 0.1 s per 64 MB); larger by size and time
CONTENT_HASH_BYTES = 64 * 1024 * 1024
#: options that do not change the labels (how fast, where the extra outputs go): left out of a case's key
NOT_IN_KEY = ("overwrite", "threads", "slice_workers", "batch_size", "review_list")


def now_text() -> str:
    """The time now, UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def input_fingerprint(path: Path, series_uid: Optional[str] = None) -> Dict[str, object]:
    """What identifies an input's content: path and, per file (each file of a DICOM folder, a detached
    header's data file), the SHA-256 of its bytes when all of them together are small, else size and
    modification time; the series chosen."""
    path = Path(path).resolve()
    if path.is_dir():
        files = sorted((Path(entry.path) for entry in os.scandir(path) if entry.is_file() and not entry.name.startswith(".")), key=lambda p: p.name)
    else:
        files = [path, *_detached_data(path)]
    stats = [(file.name, file.stat()) for file in files]
    by_content = sum(stat.st_size for _, stat in stats) <= CONTENT_HASH_BYTES
    parts = [(name, stat.st_size, file_sha256(file) if by_content else stat.st_mtime_ns) for (name, stat), file in zip(stats, files)]
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    return {"path": str(path), "files": len(parts), "by": "content" if by_content else "size and time", "sha256": digest, "series": series_uid}


def _detached_data(header: Path) -> List[Path]:
    """The data file a ``.mhd``/``.nhdr`` header names (``ElementDataFile = x.raw``, ``data file: x.raw``), when it is one file beside it."""
    if not header.name.lower().endswith((".mhd", ".nhdr")):
        return []
    try:
        with open(header, "rb") as file:
            text = file.read(64 * 1024).decode("latin-1")
    except OSError:
        return []
    for line in text.splitlines():
        key, separator, value = line.partition("=" if "=" in line else ":")
        if separator and key.strip().lower() in ("elementdatafile", "data file", "datafile"):
            value = value.strip()
            data = header.parent / value
            return [data] if value and value.upper() != "LOCAL" and " " not in value and data.is_file() else []
    return []


def options_fingerprint(options: SegmentationOptions) -> Dict[str, object]:
    """The options that change a case's labels, as text."""
    fields = dataclasses.asdict(options)
    fields["probabilities"] = options.probabilities is not None
    return {name: str(value) for name, value in sorted(fields.items()) if name not in NOT_IN_KEY}


def case_key(case: CohortCase, model_sha256: str, options: SegmentationOptions) -> str:
    """The identity of ``case`` run with this model and these options (a SHA-256, hex)."""
    identity = {"input": input_fingerprint(case.input, case.series_uid), "output": str(Path(case.output).resolve()), "model": model_sha256, "options": options_fingerprint(options)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def output_key(case: CohortCase, model_sha256: str, options: SegmentationOptions) -> str:
    """Which run wrote ``case``'s output: the output, the model, the options (not the input, whose change recomputes it)."""
    identity = {"output": str(Path(case.output).resolve()), "model": model_sha256, "options": options_fingerprint(options)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class Manifest:
    """The manifest file at ``path``: its records read once, new ones appended one line at a time."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: List[dict] = read_records(self.path)

    def latest(self, field: str = "key") -> Dict[str, dict]:
        """The last record of each ``field`` (``key``, or ``output_key``), normalised."""
        latest: Dict[str, dict] = {}
        for record in self.records:
            if isinstance(record.get(field), str):
                latest[record[field]] = record
        return {key: normalised(record) for key, record in latest.items()}

    def append(self, record: dict) -> None:
        """Add ``record`` as one line, written in one call and flushed to the disk."""
        try:
            line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a file name's undecodable bytes (surrogates): escaped, read back as they were
            line = (json.dumps(record, ensure_ascii=True, default=str) + "\n").encode("ascii")
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


#: a record's fields with the type each must have to be used; others are dropped when read back
_TEXT_FIELDS = ("key", "output_key", "case", "input", "output", "status", "error", "worker", "series", "started", "finished", "model_sha256")
_NUMBER_FIELDS = ("seconds", "slices", "slices_per_s", "mean_confidence")
_LIST_FIELDS = ("warnings", "scan_flags")


def normalised(record: dict) -> dict:
    """``record`` with only fields of their expected type (text, finite numbers, lists of text, a
    dict of finite volumes); a record read from a hand-edited manifest can be used like one we wrote."""
    clean: dict = {}
    for name in _TEXT_FIELDS:
        if isinstance(record.get(name), str):
            clean[name] = record[name]
    for name in _NUMBER_FIELDS:
        value = record.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            clean[name] = value
    for name in _LIST_FIELDS:
        if isinstance(record.get(name), list):
            clean[name] = [item for item in record[name] if isinstance(item, str)]
    volumes = record.get("volumes_ml")
    if isinstance(volumes, dict):
        clean["volumes_ml"] = {k: v for k, v in volumes.items() if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    if isinstance(record.get("timings"), dict):
        clean["timings"] = {k: v for k, v in record["timings"].items() if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)}
    clean.setdefault("status", FAILED)
    return clean


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
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def check_manifest_path(path: Path, output_dir: Path, protected: Sequence[Path] = ()) -> Path:
    """``--manifest`` (or ``DIR/manifest.jsonl``) checked before any case: the output gate (no special
    file, no bundled model, no input or checkpoint), and an existing file must already be a manifest
    (JSON lines): appending a record to a scan or a model would spoil it."""
    from UNetSegmentationLib.io.output_gate import check_output

    path = Path(path)
    check_output(path, what="manifest", overwrite=True, protected=protected)
    if path.is_file() and path.stat().st_size:
        try:
            with open(path, "rb") as file:
                first = file.readline(1 << 20)
            record = json.loads(first.decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            record = None
        if not isinstance(record, dict):
            raise UserError(f"manifest {path} exists and is not a cohort manifest (JSON lines); choose another --manifest file (default: {Path(output_dir) / 'manifest.jsonl'})")
    return path
