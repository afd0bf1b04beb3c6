"""Which volumes a cohort run segments, and where each result goes.

Inputs are given as any mix of: a folder (searched recursively: every volume file, and every DICOM
series, a folder holding several series giving one case per series), a glob pattern (quoted, so
that ``unetseg`` expands it: ``"scans/**/*.nii.gz"``), a MONAI decathlon-style datalist (``.json``:
the ``image`` of every entry of its lists, or plain path strings), a CSV (an ``image`` or ``input``
column, else the first one; an optional ``name`` column), or a volume file.

Each case gets a name unique in the cohort (its path below the folder it was found in, separators
as ``_``, without the extension) and its output ``OUTPUT_DIR/<name rule>``: the rule is a file-name
template with ``{name}``, ``{stem}`` (the file or folder name alone) and ``{index}`` (1, 2, ...;
``{index:04d}`` pads), default ``{name}.nrrd``. With DICOM SEG asked for, a DICOM series case writes
the same name ending in ``.dcm``. Hidden files and folders (the engine's own temporary files) and
Slicer segmentations (``.seg.nrrd``: results, not inputs) are never inputs.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.dicom_series import series_in_folder
from UNetSegmentationLib.io.outputs import IMAGE_EXTENSIONS, split_extension

#: files a folder search takes as volumes (compound extensions first)
VOLUME_EXTENSIONS = (".nii.gz", ".nrrd", ".nii", ".mha", ".mhd")
#: what a name rule may end in: the label formats of ``predict`` and DICOM SEG
OUTPUT_EXTENSIONS = IMAGE_EXTENSIONS + (".dcm",)
DEFAULT_NAME_RULE = "{name}.nrrd"
DICOM_SEG_EXTENSION = ".dcm"


@dataclass(frozen=True)
class CohortInput:
    """One volume found: a file, or a DICOM series (its folder, and its UID when the folder holds several)."""

    path: Path
    name: str
    series_uid: Optional[str] = None
    is_dicom: bool = False


@dataclass(frozen=True)
class CohortCase:
    """One case of a cohort run: its unique ``name``, the input, the output, the series chosen in a DICOM folder."""

    name: str
    input: Path
    output: Path
    series_uid: Optional[str] = None

    @property
    def writes_dicom_seg(self) -> bool:
        return self.output.name.lower().endswith(DICOM_SEG_EXTENSION)


def find_inputs(sources: Sequence[str], series_uid: Optional[str] = None, exclude: Sequence[Path] = ()) -> List[CohortInput]:
    """Every input ``sources`` name, in a stable order, each once; ``exclude``: folders never searched
    (the output folder); ``series_uid``: only that series of DICOM folders."""
    excluded = [Path(p).resolve() for p in exclude]
    found: List[CohortInput] = []
    for source in sources:
        found += _inputs_of(str(source), series_uid, excluded)
    unique: Dict[tuple, CohortInput] = {}
    for item in found:
        unique.setdefault((item.path.resolve(), item.series_uid), item)
    if not unique:
        raise UserError(f"no volume found in {', '.join(map(str, sources))} (looked for {', '.join(VOLUME_EXTENSIONS)} files and DICOM series)")
    return list(unique.values())


def _inputs_of(source: str, series_uid: Optional[str], excluded: List[Path]) -> List[CohortInput]:
    path = Path(source)
    if not path.exists() and any(c in source for c in "*?["):
        matches = sorted(glob.glob(source, recursive=True))
        if not matches:
            raise UserError(f"the pattern {source} matches no file")
        return [item for match in matches for item in _inputs_of(match, series_uid, excluded)]
    if path.is_dir():
        return _scan_folder(path, series_uid, excluded)
    if not path.exists():
        raise UserError(f"input not found: {source}")
    lower = path.name.lower()
    if lower.endswith(".json"):
        return [_file_input(p) for p in _datalist_paths(path)]
    if lower.endswith(".csv"):
        return _csv_inputs(path)
    return [_file_input(path)]


def _file_input(path: Path, name: Optional[str] = None) -> CohortInput:
    if path.is_dir():
        return CohortInput(path, name or path.name, None, True)
    return CohortInput(path, name or _without_extension(path.name), None, False)


def _without_extension(file_name: str) -> str:
    stem, extension = split_extension(Path(file_name), VOLUME_EXTENSIONS + (".dcm",))
    return stem if extension else Path(file_name).stem


def _scan_folder(root: Path, series_uid: Optional[str], excluded: List[Path]) -> List[CohortInput]:
    """Volume files and DICOM series below ``root``, in sorted order."""
    found: List[CohortInput] = []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and (here / d).resolve() not in excluded)
        if here.resolve() in excluded:
            continue
        relative = here.relative_to(root).parts
        files = sorted(f for f in files if not f.startswith("."))
        volumes = [f for f in files if _is_volume_name(f)]
        if any(_looks_like_dicom(here / f) for f in files if f not in volumes):
            found += _series_inputs(here, "_".join(relative) or root.name, series_uid)
        for file_name in volumes:
            found.append(CohortInput(here / file_name, "_".join(relative + (_without_extension(file_name),)), None, False))
    return found


def _series_inputs(folder: Path, name: str, series_uid: Optional[str]) -> List[CohortInput]:
    """One input per DICOM series of ``folder`` (named after the folder, plus the UID's end when there are several)."""
    series = series_in_folder(folder)
    if series_uid is not None:
        return [CohortInput(folder, name, series_uid, True)] if series_uid in series else []
    if len(series) == 1:
        return [CohortInput(folder, name, None, True)]
    return [CohortInput(folder, f"{name}_{uid.rsplit('.', 1)[-1]}", uid, True) for uid in series]


def _is_volume_name(file_name: str) -> bool:
    lower = file_name.lower()
    return lower.endswith(VOLUME_EXTENSIONS) and not lower.endswith(".seg.nrrd")


def _looks_like_dicom(path: Path) -> bool:
    """A ``.dcm`` name, or the DICOM preamble's ``DICM`` at byte 128."""
    if path.name.lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as file:
            return file.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _datalist_paths(path: Path) -> List[Path]:
    """The images of a decathlon-style datalist: every list's entries (``{"image": ...}`` or a path), relative to its folder."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the datalist {path}: {error}") from None
    if not isinstance(data, dict):
        raise UserError(f"datalist {path} must be a JSON object of lists (e.g. {{\"test\": [...]}})")
    images = []
    for section, entries in data.items():
        if not isinstance(entries, list):
            continue
        for entry in entries:
            image = entry.get("image") if isinstance(entry, dict) else entry
            if not isinstance(image, str):
                raise UserError(f"datalist {path}: an entry of {section!r} has no image path: {str(entry)[:120]}")
            images.append(path.parent / image)
    if not images:
        raise UserError(f"datalist {path} lists no image")
    return _existing(images, path)


def _csv_inputs(path: Path) -> List[CohortInput]:
    """The inputs of a CSV: an ``image``/``input`` column (else the first), an optional ``name`` column."""
    try:
        with open(path, newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"cannot read the CSV {path}: {error}") from None
    if not rows:
        raise UserError(f"CSV {path} lists no image")
    columns = {c.strip().lower(): c for c in rows[0].keys() if c}
    column = columns.get("image") or columns.get("input") or next(iter(rows[0].keys()))
    images = _existing([path.parent / row[column].strip() for row in rows if row.get(column)], path)
    names = [row.get(columns["name"], "").strip() if "name" in columns else "" for row in rows if row.get(column)]
    return [_file_input(image, name or None) for image, name in zip(images, names)]


def _existing(paths: Iterable[Path], listed_in: Path) -> List[Path]:
    paths = list(paths)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UserError(f"{listed_in} lists {len(missing)} input(s) that do not exist: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    return paths


def plan_cases(inputs: Sequence[CohortInput], output_dir: Path, name_rule: str = DEFAULT_NAME_RULE, dicom_seg: bool = False) -> List[CohortCase]:
    """The cases of a run: each input with its output in ``output_dir`` by ``name_rule`` (checked: a
    file name with a supported extension, one per case)."""
    check_name_rule(name_rule)
    cases, seen = [], {}
    for index, item in enumerate(inputs, start=1):
        file_name = name_rule.format(name=item.name, stem=item.path.name if item.is_dicom else _without_extension(item.path.name), index=index)
        if dicom_seg and item.is_dicom:
            file_name = split_extension(Path(file_name), OUTPUT_EXTENSIONS)[0] + DICOM_SEG_EXTENSION
        output = Path(output_dir) / file_name
        if output in seen:
            raise UserError(f"{seen[output]} and {item.path} would both be written to {output}; add {{index}} to --name")
        seen[output] = item.path
        cases.append(CohortCase(item.name, item.path, output, item.series_uid))
    return cases


def check_name_rule(name_rule: str) -> None:
    """Refuse a ``--name`` rule that is no file-name template ending in an output format."""
    try:
        example = name_rule.format(name="case", stem="case", index=1)
    except (KeyError, IndexError, ValueError) as error:
        raise UserError(f"--name {name_rule!r}: use the fields {{name}}, {{stem}} and {{index}} only ({error})") from None
    if "/" in example or os.sep in example or example.startswith("."):
        raise UserError(f"--name {name_rule!r} must give a plain file name (no folder, not hidden)")
    if not split_extension(Path(example), OUTPUT_EXTENSIONS)[1]:
        raise UserError(f"--name {name_rule!r} must end in one of {', '.join(OUTPUT_EXTENSIONS)}")
