"""The QC report of a cohort: what a person should look at first.

``qc.csv`` has one row per case (flagged cases first): its status, its flags, the mean confidence, the
volume of each segment in mL, the input, output and picture. ``cases/NAME.png`` shows three axial
slices of the case (at a quarter, half and three quarters of its labelled extent from feet to head)
with the labels over the image; ``contact_sheet.png`` shows the middle one of every case (flagged
first, red titles; at most :data:`CONTACT_SHEET_CASES`), each :data:`CELL_PIXELS` pixels wide with
titles readable at 100 %.

Slices are drawn in radiological orientation from each image's direction matrix, not in file order:
the patient's right on the picture's left, anterior at the top (the volume is reoriented to LPS
first), so that NRRD, NIfTI and DICOM cases of one cohort look alike side by side, and pixels keep
their physical aspect.

A case is flagged when a segment's volume is far from the cohort's median (a robust z-score above
:data:`OUTLIER_Z`: ``0.6745 · (v − median) / MAD``, the MAD floored at 5 % of the median so that a
cohort of near-identical volumes does not flag 1 % differences), when its mean confidence is low (a
robust z-score below −:data:`OUTLIER_Z`, or under :data:`LOW_CONFIDENCE`), when a segment is empty that
the cohort's median case has, when nothing at all was labelled, when the scan-against-model check
found the scan unlike what the model was made for (the record's ``scan_flags``), and when it failed.
Robust statistics need :data:`MIN_COHORT` done cases; below that only the absolute checks apply.

Records are taken as the manifest gives them, hand-edited ones included: each is normalised
(:func:`~.manifest.normalised`) before use. Text cells of ``qc.csv`` that a spreadsheet would run as
a formula (``=``, ``+``, ``-``, ``@``...) are written with a leading ``'``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from UNetSegmentationLib.cohort.case_names import display_name
from UNetSegmentationLib.cohort.discovery import CohortCase
from UNetSegmentationLib.cohort.manifest import DONE, normalised
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.dicom_seg import read_dicom_seg_labels
from UNetSegmentationLib.io.native_messages import quiet_itk
from UNetSegmentationLib.io.outputs import atomic_output
from UNetSegmentationLib.io.volumes import inspect_input, read_volume
from UNetSegmentationLib.model.metadata import ClassInfo

OUTLIER_Z = 3.5
LOW_CONFIDENCE = 0.6
MIN_COHORT = 4
CONTACT_SHEET_CASES = 60
#: the longest side of a slice drawn (pixels of the image; more are subsampled)
THUMBNAIL_PIXELS = 256
#: a contact sheet cell's width in the picture, and the resolution of every picture
CELL_PIXELS, DPI = 300, 100
#: the first characters that make a spreadsheet run a cell as a formula
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class QcReport:
    """What a QC report holds: its CSV, its contact sheet (None when no case was done), the cases flagged."""

    csv: Path
    contact_sheet: Optional[Path]
    flagged: int


def robust_z(values: np.ndarray) -> np.ndarray:
    """``0.6745 · (v − median) / MAD`` of each value (MAD floored at 5 % of |median|, and above 0)."""
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    return 0.6745 * (values - median) / max(mad, 0.05 * abs(median), 1e-9)


def qc_flags(records: Dict[str, dict], classes: Sequence[ClassInfo]) -> Dict[str, List[str]]:
    """The flags of each case of ``records`` (case name → its latest manifest record), in words."""
    records = {name: normalised(record) for name, record in records.items()}
    flags: Dict[str, List[str]] = {name: [] for name in records}
    done = [name for name, record in records.items() if record.get("status") == DONE]
    for name, record in records.items():
        if record.get("status") != DONE:
            flags[name].append(f"failed: {record.get('error') or record.get('status')}")
        for finding in record.get("scan_flags") or ():
            flags[name].append(f"scan: {finding}")
    volumes = {c.name: np.array([float((records[n].get("volumes_ml") or {}).get(c.name, 0.0)) for n in done]) for c in classes}
    medians = {c.name: float(np.median(volumes[c.name])) if done else 0.0 for c in classes}
    for name_index, name in enumerate(done):
        if not any(volumes[c.name][name_index] for c in classes):
            flags[name].append("nothing labelled")
        for info in classes:
            if volumes[info.name][name_index] == 0 and medians[info.name] > 0:
                flags[name].append(f"{info.name} empty (cohort median {medians[info.name]:.1f} mL)")
    if len(done) >= MIN_COHORT:
        for info in classes:
            values = volumes[info.name]
            for name, z, value in zip(done, robust_z(values), values):
                if abs(z) > OUTLIER_Z and value > 0:
                    flags[name].append(f"{info.name} {value:.1f} mL, far from the cohort median {medians[info.name]:.1f} mL (robust z {z:+.1f})")
    confidences = [(n, records[n].get("mean_confidence")) for n in done if isinstance(records[n].get("mean_confidence"), (int, float))]
    low_z = dict(zip([n for n, _ in confidences], robust_z(np.array([c for _, c in confidences])))) if len(confidences) >= MIN_COHORT else {}
    median_confidence = float(np.median([c for _, c in confidences])) if confidences else 0.0
    for name, confidence in confidences:
        if confidence < LOW_CONFIDENCE or low_z.get(name, 0.0) < -OUTLIER_Z:
            flags[name].append(f"low mean confidence {confidence:.3f} (cohort median {median_confidence:.3f})")
    return flags


def write_qc_report(cases: Sequence[CohortCase], records: Dict[str, dict], classes: Sequence[ClassInfo], folder: Path) -> QcReport:
    """Write ``qc.csv``, ``cases/*.png`` and ``contact_sheet.png`` into ``folder`` (checked by the caller)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    folder = Path(folder)
    try:
        (folder / "cases").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot make the QC report folder {folder}: {error.strerror or error}") from None
    records = {name: normalised(record) for name, record in records.items()}  # once, for the flags, the pictures and the CSV
    flags = qc_flags(records, classes)
    order = sorted((c for c in cases if c.name in records), key=lambda c: (not flags[c.name], c.name))
    thumbnails: List[Tuple[str, np.ndarray, np.ndarray, float, bool]] = []
    pictures: Dict[str, str] = {}
    for case in order:
        if records[case.name].get("status") != DONE:
            continue
        try:
            panels, aspect = _case_panels(case, classes)
            picture = _picture_path(folder, case.name, set(pictures.values()))
        except (UserError, RuntimeError, OSError, ValueError) as error:  # an input or output gone since, a picture name refused: the row says so
            flags[case.name].append(f"picture unavailable ({display_name(str(error), 200)})")
            continue
        _save_case_picture(panels, aspect, classes, case.name, flags[case.name], picture)
        pictures[case.name] = picture.relative_to(folder).as_posix()
        if len(thumbnails) < CONTACT_SHEET_CASES:
            thumbnails.append((case.name, *panels[1], aspect, bool(flags[case.name])))
    sheet = folder / "contact_sheet.png" if thumbnails else None
    if sheet is not None:
        _save_contact_sheet(thumbnails, classes, sheet)
    csv_path = folder / "qc.csv"
    _write_csv(order, records, flags, pictures, classes, csv_path)
    return QcReport(csv_path, sheet, sum(1 for c in order if flags[c.name]))


def _picture_path(folder: Path, name: str, taken: set) -> Path:
    """``cases/NAME.png`` with the case name made a plain, short file name (its own characters only where
    they are safe), unique, and kept inside the report folder by the output gate."""
    from UNetSegmentationLib.io.output_gate import check_output

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", display_name(name, 100)).lstrip("._") or "case"
    candidate, number = stem, 1
    while f"cases/{candidate}.png" in taken:
        number += 1
        candidate = f"{stem}_{number}"
    path = folder / "cases" / f"{candidate}.png"
    check_output(path, what="QC picture", overwrite=True, inside=folder)
    return path


def _case_panels(case: CohortCase, classes: Sequence[ClassInfo]) -> Tuple[List[Tuple[np.ndarray, np.ndarray]], float]:
    """Three axial (image, labels) slices of the case in radiological orientation, each subsampled to at
    most :data:`THUMBNAIL_PIXELS` a side, and their pixels' aspect (height / width)."""
    header = inspect_input(case.input, case.series_uid)
    volume = read_volume(case.input, header)
    if case.writes_dicom_seg:
        label_image = sitk.GetImageFromArray(read_dicom_seg_labels(case.output, header.dicom_files, classes))
        label_image.CopyInformation(volume)
    else:
        with quiet_itk():
            label_image = sitk.ReadImage(str(case.output))
    volume, label_image = radiological(volume), radiological(label_image)
    image = sitk.GetArrayViewFromImage(volume)  # [S, P, L]: views; the images outlive them (to the end of this function)
    labels = sitk.GetArrayViewFromImage(label_image)
    if labels.shape != image.shape:
        raise ValueError(f"labels {labels.shape} and image {image.shape} differ")
    labelled = np.flatnonzero(labels.any(axis=(1, 2)))
    first, last = (labelled[0], labelled[-1]) if labelled.size else (0, labels.shape[0] - 1)
    step = max(1, int(np.ceil(max(image.shape[1:]) / THUMBNAIL_PIXELS)))
    picks = [int(round(first + f * (last - first))) for f in (0.25, 0.5, 0.75)][::-1]  # head first, as a reader scrolls down
    spacing = volume.GetSpacing()
    panels = [(np.array(image[k, ::step, ::step], dtype=np.float32), np.array(labels[k, ::step, ::step])) for k in picks]  # copies
    return panels, spacing[1] / spacing[0]


def radiological(image: sitk.Image) -> sitk.Image:
    """``image`` resampled without interpolation onto the LPS axes nearest its own (a permutation and
    flips of its grid): an array row runs anterior → posterior, a column the patient's right → left, the
    last index feet → head. Drawn row by row, an axial slice is then in radiological view."""
    return sitk.DICOMOrient(image, "LPS")


def _overlay(axis, image: np.ndarray, labels: np.ndarray, aspect: float, classes: Sequence[ClassInfo]) -> None:
    low, high = np.percentile(image, (1, 99))
    axis.imshow(image, cmap="gray", vmin=low, vmax=max(high, low + 1e-6), interpolation="nearest", aspect=aspect)
    colours = np.zeros((int(labels.max(initial=0)) + 1, 4))
    for info in classes:
        if info.value < len(colours):
            colours[info.value] = (*info.color, 0.45)
    axis.imshow(colours[labels.astype(np.intp)], interpolation="nearest", aspect=aspect)
    axis.set_axis_off()


def _save_case_picture(panels, aspect: float, classes: Sequence[ClassInfo], name: str, flags: List[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(3 * CELL_PIXELS / DPI, 1.15 * CELL_PIXELS / DPI), dpi=DPI)
    for axis, (image, labels) in zip(axes, panels):
        _overlay(axis, image, labels, aspect, classes)
    title = display_name(name, 60) + (f" — {display_name(flags[0], 90)}" if flags else "")
    figure.suptitle(title, fontsize=10, color="red" if flags else "black")
    figure.tight_layout()
    _save(figure, path)


def _save_contact_sheet(thumbnails, classes: Sequence[ClassInfo], path: Path) -> None:
    import matplotlib.pyplot as plt

    columns = min(6, len(thumbnails))
    rows = int(np.ceil(len(thumbnails) / columns))
    cell = CELL_PIXELS / DPI
    figure, axes = plt.subplots(rows, columns, figsize=(cell * columns, 1.12 * cell * rows), dpi=DPI, squeeze=False)
    for axis in axes.ravel()[len(thumbnails):]:
        axis.set_axis_off()
    for axis, (name, image, labels, aspect, flagged) in zip(axes.ravel(), thumbnails):
        _overlay(axis, image, labels, aspect, classes)
        axis.set_title(("! " if flagged else "") + display_name(name, 28), fontsize=11, color="red" if flagged else "black")
    figure.tight_layout()
    _save(figure, path)


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        with atomic_output([path], overwrite=True) as temporaries:
            figure.savefig(temporaries[0], format="png")
    finally:
        plt.close(figure)


def _write_csv(order: Sequence[CohortCase], records: Dict[str, dict], flags: Dict[str, List[str]], pictures: Dict[str, str], classes: Sequence[ClassInfo], path: Path) -> None:
    columns = ["case", "status", "flags", "mean_confidence", *[f"{c.name} (mL)" for c in classes], "seconds", "input", "output", "picture", "error"]
    with atomic_output([path], overwrite=True) as temporaries:
        with open(temporaries[0], "w", newline="", encoding="utf-8", errors="replace") as file:
            writer = csv.writer(file)
            writer.writerow([cell(c) for c in columns])
            for case in order:
                record = records[case.name]
                volumes = record.get("volumes_ml") or {}
                writer.writerow([
                    cell(case.name), cell(record.get("status", "")), cell("; ".join(flags[case.name])), _text(record.get("mean_confidence")),
                    *[_text(volumes.get(c.name)) for c in classes], _text(record.get("seconds")), cell(str(case.input)), cell(str(case.output)),
                    cell(pictures.get(case.name, "")), cell(record.get("error") or ""),
                ])


def cell(text: str) -> str:
    """``text`` as a CSV text cell a spreadsheet shows and never runs: undecodable bytes as U+FFFD, and a
    leading ``'`` where it would start a formula."""
    text = display_name(str(text), 10_000)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _text(value: Optional[float]) -> str:
    return "" if value is None else f"{value:g}"
