"""The QC report of a cohort: what a person should look at first.

``qc.csv`` has one row per case (flagged cases first): its status, its flags, the mean confidence, the
volume of each segment in mL, the input, output and picture. ``cases/NAME.png`` shows three slices of
the case (at a quarter, half and three quarters of its labelled extent along the volume's third axis)
with the labels over the image; ``contact_sheet.png`` shows the middle one of every case (flagged
first, red titles; at most :data:`CONTACT_SHEET_CASES`).

A case is flagged when a segment's volume is far from the cohort's median (a robust z-score above
:data:`OUTLIER_Z`: ``0.6745 · (v − median) / MAD``, the MAD floored at 5 % of the median so that a
cohort of near-identical volumes does not flag 1 % differences), when its mean confidence is low (a
robust z-score below −:data:`OUTLIER_Z`, or under :data:`LOW_CONFIDENCE`), when a segment is empty that
the cohort's median case has, when nothing at all was labelled, and when it failed. Robust statistics
need :data:`MIN_COHORT` done cases; below that only the absolute checks apply.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from UNetSegmentationLib.io.volumes import inspect_input
from UNetSegmentationLib.cohort.discovery import CohortCase
from UNetSegmentationLib.cohort.manifest import DONE
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.dicom_seg import read_dicom_seg_labels
from UNetSegmentationLib.io.native_messages import quiet_itk
from UNetSegmentationLib.io.outputs import atomic_output
from UNetSegmentationLib.io.volumes import read_volume
from UNetSegmentationLib.model.metadata import ClassInfo

OUTLIER_Z = 3.5
LOW_CONFIDENCE = 0.6
MIN_COHORT = 4
CONTACT_SHEET_CASES = 60
THUMBNAIL_PIXELS = 160


def robust_z(values: np.ndarray) -> np.ndarray:
    """``0.6745 · (v − median) / MAD`` of each value (MAD floored at 5 % of |median|, and above 0)."""
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    return 0.6745 * (values - median) / max(mad, 0.05 * abs(median), 1e-9)


def qc_flags(records: Dict[str, dict], classes: Sequence[ClassInfo]) -> Dict[str, List[str]]:
    """The flags of each case of ``records`` (case name → its latest manifest record), in words."""
    flags: Dict[str, List[str]] = {name: [] for name in records}
    done = [name for name, record in records.items() if record.get("status") == DONE]
    for name, record in records.items():
        if record.get("status") != DONE:
            flags[name].append(f"failed: {record.get('error') or record.get('status')}")
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


def write_qc_report(cases: Sequence[CohortCase], records: Dict[str, dict], classes: Sequence[ClassInfo], folder: Path) -> Path:
    """Write ``qc.csv``, ``cases/*.png`` and ``contact_sheet.png`` into ``folder``; returns the CSV's path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    folder = Path(folder)
    (folder / "cases").mkdir(parents=True, exist_ok=True)
    flags = qc_flags(records, classes)
    order = sorted((c for c in cases if c.name in records), key=lambda c: (not flags[c.name], c.name))
    thumbnails: List[Tuple[str, np.ndarray, np.ndarray, bool]] = []
    pictures: Dict[str, str] = {}
    for case in order:
        if records[case.name].get("status") != DONE:
            continue
        try:
            panels = _case_panels(case, classes)
        except (UserError, RuntimeError, OSError, ValueError):  # an input or output gone since: the row says so, no picture
            flags[case.name].append("picture unavailable (input or output unreadable)")
            continue
        picture = folder / "cases" / f"{case.name}.png"
        _save_case_picture(panels, classes, case.name, flags[case.name], picture)
        pictures[case.name] = str(picture.relative_to(folder))
        if len(thumbnails) < CONTACT_SHEET_CASES:
            thumbnails.append((case.name, *panels[1], bool(flags[case.name])))
    if thumbnails:
        _save_contact_sheet(thumbnails, classes, folder / "contact_sheet.png")
    csv_path = folder / "qc.csv"
    _write_csv(order, records, flags, pictures, classes, csv_path)
    return csv_path


def _case_panels(case: CohortCase, classes: Sequence[ClassInfo]) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Three (image, labels) slices of the case, each downsampled to at most :data:`THUMBNAIL_PIXELS` a side."""
    header = inspect_input(case.input, case.series_uid)
    volume = read_volume(case.input, header)
    image = sitk.GetArrayViewFromImage(volume)  # a view: ``volume`` must outlive it (it does, to the end of this function)
    if case.writes_dicom_seg:
        labels = read_dicom_seg_labels(case.output, header.dicom_files, classes)
    else:
        with quiet_itk():
            label_image = sitk.ReadImage(str(case.output))
        labels = sitk.GetArrayViewFromImage(label_image)
    labelled = np.flatnonzero(labels.any(axis=(1, 2)))
    first, last = (labelled[0], labelled[-1]) if labelled.size else (0, labels.shape[0] - 1)
    step = max(1, int(np.ceil(max(image.shape[1:]) / THUMBNAIL_PIXELS)))
    picks = [int(round(first + f * (last - first))) for f in (0.25, 0.5, 0.75)]
    return [(np.array(image[k, ::step, ::step], dtype=np.float32), np.array(labels[k, ::step, ::step])) for k in picks]  # copies


def _overlay(axis, image: np.ndarray, labels: np.ndarray, classes: Sequence[ClassInfo]) -> None:
    low, high = np.percentile(image, (1, 99))
    axis.imshow(image, cmap="gray", vmin=low, vmax=max(high, low + 1e-6), interpolation="nearest")
    colours = np.zeros((int(labels.max(initial=0)) + 1, 4))
    for info in classes:
        if info.value < len(colours):
            colours[info.value] = (*info.color, 0.45)
    axis.imshow(colours[labels.astype(np.intp)], interpolation="nearest")
    axis.set_axis_off()


def _save_case_picture(panels, classes: Sequence[ClassInfo], name: str, flags: List[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(6, 2.3), dpi=72)
    for axis, (image, labels) in zip(axes, panels):
        _overlay(axis, image, labels, classes)
    figure.suptitle(name + (f" — {flags[0]}" if flags else ""), fontsize=7, color="red" if flags else "black")
    figure.tight_layout()
    _save(figure, path)


def _save_contact_sheet(thumbnails, classes: Sequence[ClassInfo], path: Path) -> None:
    import matplotlib.pyplot as plt

    columns = min(6, len(thumbnails))
    rows = int(np.ceil(len(thumbnails) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.75 * rows), dpi=72, squeeze=False)
    for axis in axes.ravel()[len(thumbnails):]:
        axis.set_axis_off()
    for axis, (name, image, labels, flagged) in zip(axes.ravel(), thumbnails):
        _overlay(axis, image, labels, classes)
        axis.set_title(("! " if flagged else "") + name[:24], fontsize=6, color="red" if flagged else "black")
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
        with open(temporaries[0], "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(columns)
            for case in order:
                record = records[case.name]
                volumes = record.get("volumes_ml") or {}
                writer.writerow([
                    case.name, record.get("status"), "; ".join(flags[case.name]), _text(record.get("mean_confidence")),
                    *[_text(volumes.get(c.name)) for c in classes], _text(record.get("seconds")), case.input, case.output,
                    pictures.get(case.name, ""), record.get("error") or "",
                ])


def _text(value: Optional[float]) -> str:
    return "" if value is None else f"{value:g}"
