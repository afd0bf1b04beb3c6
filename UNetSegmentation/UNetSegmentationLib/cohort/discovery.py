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
Slicer segmentations (``.seg.nrrd``: results, not inputs) are never inputs; the volume formats are
:mod:`~UNetSegmentationLib.io.volume_formats`' list, the one training and the readers use.

What cannot become a case is not dropped in silence: a sub-folder that cannot be read, a file name
that is not UTF-8, a case whose output name (by the ``--name`` rule, :mod:`.case_names`) would leave
the output folder or is too long, each gives a case that is *refused*: recorded as that case's failure
(exit 3), the others run. A glob's ``**`` never follows a symbolic link to a folder (a link loop would
never end), as the folder search does not.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from UNetSegmentationLib.cohort.case_names import check_name_rule, checked_output, display_name, format_name
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.dicom_series import series_in_folder
from UNetSegmentationLib.io.outputs import IMAGE_EXTENSIONS, split_extension
from UNetSegmentationLib.io.volume_formats import formats_in_words, is_volume_name, without_volume_extension

#: what a name rule may end in: the label formats of ``predict`` and DICOM SEG
OUTPUT_EXTENSIONS = IMAGE_EXTENSIONS + (".dcm",)
DEFAULT_NAME_RULE = "{name}.nrrd"
DICOM_SEG_EXTENSION = ".dcm"
#: a datalist larger than this is no datalist (a list of paths, not data)
MAX_DATALIST_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class CohortInput:
    """One volume found: a file, or a DICOM series (its folder, and its UID when the folder holds several);
    ``problem``: why it cannot be a case (it is recorded as a refused case)."""

    path: Path
    name: str
    series_uid: Optional[str] = None
    is_dicom: bool = False
    problem: Optional[str] = None


@dataclass(frozen=True)
class CohortCase:
    """One case of a cohort run: its unique ``name``, the input, the output, the series chosen in a DICOM
    folder; ``refusal``: why it is not run (its failure, recorded without running it)."""

    name: str
    input: Path
    output: Path
    series_uid: Optional[str] = None
    refusal: Optional[str] = None

    @property
    def writes_dicom_seg(self) -> bool:
        return self.output.name.lower().endswith(DICOM_SEG_EXTENSION)


def find_inputs(sources: Sequence[str], series_uid: Optional[str] = None, exclude: Sequence[Path] = ()) -> List[CohortInput]:
    """Every input ``sources`` name, in a stable order, each once; ``exclude``: folders never searched
    (the output folder); ``series_uid``: only that series of DICOM folders."""
    excluded = [Path(os.path.realpath(p)) for p in exclude]
    found: List[CohortInput] = []
    for source in sources:
        found += _inputs_of(str(source), series_uid, excluded)
    unique: Dict[tuple, CohortInput] = {}
    for item in found:
        unique.setdefault((os.path.realpath(item.path), item.series_uid, item.problem), item)
    if not any(item.problem is None for item in unique.values()):
        problems = [item.problem for item in unique.values() if item.problem][:3]
        raise UserError(f"no volume found in {display_name(', '.join(map(str, sources)))} (looked for {formats_in_words()} files and DICOM series)" + (f"; {'; '.join(problems)}" if problems else ""))
    return list(unique.values())


def _inputs_of(source: str, series_uid: Optional[str], excluded: List[Path]) -> List[CohortInput]:
    path = Path(source)
    if not _exists(path) and any(c in source for c in "*?["):
        matches = _glob(source)
        if not matches:
            raise UserError(f"the pattern {display_name(source)} matches no file")
        return [item for match in matches for item in _inputs_of(str(match), series_uid, excluded)]
    if path.is_dir():
        return _scan_folder(path, series_uid, excluded)
    if not _exists(path):
        raise UserError(f"input not found: {display_name(source)}")
    lower = path.name.lower()
    if lower.endswith(".json"):
        return [_file_input(p) for p in _datalist_paths(path)]
    if lower.endswith(".csv"):
        return _csv_inputs(path)
    return [_file_input(path)]


def _exists(path: Path) -> bool:
    """``path.exists()`` that says no (instead of raising) for a name too long or a link loop."""
    try:
        os.stat(path)
        return True
    except (OSError, ValueError):
        return False


def _glob(pattern: str) -> List[Path]:
    """The visible files and folders matching ``pattern``, sorted; ``**`` follows no symbolic link
    (``glob.glob`` does, and loops forever on a link to a parent folder)."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    rest = "/".join(parts[fixed:])
    try:
        matches = [m for m in root.glob(rest) if not any(part.startswith(".") for part in m.relative_to(root).parts)]
    except (OSError, ValueError, RuntimeError) as error:
        raise UserError(f"cannot search the pattern {display_name(pattern)}: {error}") from None
    return sorted(set(matches))


def _file_input(path: Path, name: Optional[str] = None) -> CohortInput:
    problem = _name_problem(path)
    if path.is_dir():
        return CohortInput(path, name or path.name, None, True, problem)
    return CohortInput(path, name or without_volume_extension(path), None, False, problem)


def _name_problem(path: Path) -> Optional[str]:
    """Why ``path``'s name cannot be read as given (bytes that are not UTF-8), or None."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return f"{display_name(os.fspath(path))}: the file name is not valid UTF-8 (another encoding); rename it"
    return None


def _scan_folder(root: Path, series_uid: Optional[str], excluded: List[Path]) -> List[CohortInput]:
    """Volume files and DICOM series below ``root``, in sorted order; a sub-folder that cannot be read is
    a refused input (it may hold cases), not skipped in silence."""
    found: List[CohortInput] = []

    def unreadable(error: OSError) -> None:
        where = Path(error.filename or root)
        found.append(CohortInput(where, display_name("_".join(_relative(where, root)) or root.name), None, False, f"cannot read the folder {display_name(str(where))}: {error.strerror or error}; its volumes were not searched"))

    for folder, subfolders, files in os.walk(root, onerror=unreadable):
        here = Path(folder)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and Path(os.path.realpath(here / d)) not in excluded)
        if Path(os.path.realpath(here)) in excluded:
            continue
        relative = _relative(here, root)
        files = sorted(f for f in files if not f.startswith("."))
        volumes = [f for f in files if is_volume_name(f)]
        if any(_looks_like_dicom(here / f) for f in files if f not in volumes):
            found += _series_inputs(here, "_".join(relative) or root.name, series_uid)
        for file_name in volumes:
            path = here / file_name
            found.append(CohortInput(path, "_".join(relative + (without_volume_extension(path),)), None, False, _name_problem(path)))
    return found


def _relative(here: Path, root: Path) -> tuple:
    try:
        return here.relative_to(root).parts
    except ValueError:
        return (here.name,)


def _series_inputs(folder: Path, name: str, series_uid: Optional[str]) -> List[CohortInput]:
    """One input per DICOM series of ``folder`` (named after the folder, plus the UID's end when there are several)."""
    problem = _name_problem(folder)
    if problem:
        return [CohortInput(folder, display_name(name), series_uid, True, problem)]
    try:
        series = series_in_folder(folder)
    except UserError as error:
        return [CohortInput(folder, name, series_uid, True, str(error))]
    if series_uid is not None:
        return [CohortInput(folder, name, series_uid, True)] if series_uid in series else []
    if len(series) == 1:
        return [CohortInput(folder, name, None, True)]
    return [CohortInput(folder, f"{name}_{uid.rsplit('.', 1)[-1]}", uid, True) for uid in series]


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
        if path.stat().st_size > MAX_DATALIST_BYTES:
            raise UserError(f"the datalist {path} is larger than {MAX_DATALIST_BYTES >> 20} MB; is it a datalist?")
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise UserError(f"cannot read the datalist {display_name(str(path))}: it is nested too deeply to be a datalist (an object of lists of entries)") from None
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the datalist {display_name(str(path))}: {error}") from None
    if not isinstance(data, dict):
        raise UserError(f"datalist {path} must be a JSON object of lists (e.g. {{\"test\": [...]}})")
    images = []
    for section, entries in data.items():
        if not isinstance(entries, list):
            continue
        for entry in entries:
            image = entry.get("image") if isinstance(entry, dict) else entry
            if not isinstance(image, str) or not image.strip() or "\0" in image:
                raise UserError(f"datalist {path}: an entry of {display_name(section, 40)!r} has no image path: {display_name(_short_repr(entry))}")
            images.append(path.parent / image)
    if not images:
        raise UserError(f"datalist {path} lists no image")
    return _existing(images, path)


def _short_repr(value: object) -> str:
    try:
        return repr(value)[:120]
    except RecursionError:
        return type(value).__name__


def _csv_inputs(path: Path) -> List[CohortInput]:
    """The inputs of a CSV: an ``image``/``input`` column (else the first), an optional ``name`` column."""
    try:
        with open(path, newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"cannot read the CSV {display_name(str(path))}: {error}") from None
    if not rows or not any(rows[0].keys()):
        raise UserError(f"CSV {path} lists no image")
    columns = {c.strip().lower(): c for c in rows[0].keys() if c}
    column = columns.get("image") or columns.get("input") or next(c for c in rows[0].keys() if c)
    listed = [row for row in rows if isinstance(row.get(column), str) and row[column].strip() and "\0" not in row[column]]
    images = _existing([path.parent / row[column].strip() for row in listed], path)
    names = [(row.get(columns["name"]) or "").strip() if "name" in columns else "" for row in listed]
    return [_file_input(image, name or None) for image, name in zip(images, names)]


def _existing(paths: Iterable[Path], listed_in: Path) -> List[Path]:
    paths = list(paths)
    missing = [display_name(str(p)) for p in paths if not _exists(p)]
    if missing:
        raise UserError(f"{listed_in} lists {len(missing)} input(s) that do not exist or cannot be reached: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    return paths


def plan_cases(inputs: Sequence[CohortInput], output_dir: Path, name_rule: str = DEFAULT_NAME_RULE, dicom_seg: bool = False) -> List[CohortCase]:
    """The cases of a run: each input with its output in ``output_dir`` by ``name_rule`` (the rule checked
    once; each case's own name checked and kept inside ``output_dir``, a case that fails refused)."""
    check_name_rule(name_rule)
    if not split_extension(Path(format_name(name_rule, "case", "case", 1)), OUTPUT_EXTENSIONS)[1]:
        raise UserError(f"--name {name_rule[:80]!r} must end in one of {', '.join(OUTPUT_EXTENSIONS)}")
    cases, seen, names = [], {}, set()
    for index, item in enumerate(inputs, start=1):
        name = item.name if item.name not in names else f"{item.name}#{index}"  # two CSV rows of one name stay two cases
        names.add(name)
        stem = item.path.name if item.is_dicom else without_volume_extension(item.path)
        file_name = format_name(name_rule, item.name, stem, index)
        if dicom_seg and item.is_dicom:
            file_name = split_extension(Path(file_name), OUTPUT_EXTENSIONS)[0] + DICOM_SEG_EXTENSION
        refusal = item.problem
        output = Path(output_dir) / f".refused-{index}"  # never written: a refused case has no output
        if refusal is None:
            try:
                output = checked_output(Path(output_dir), file_name, name)
            except UserError as error:
                refusal = str(error)
        if refusal is None:
            if output in seen:
                raise UserError(f"{seen[output]} and {item.path} would both be written to {output}; add {{index}} to --name")
            seen[output] = item.path
        cases.append(CohortCase(name, item.path, output, item.series_uid, refusal))
    return cases
