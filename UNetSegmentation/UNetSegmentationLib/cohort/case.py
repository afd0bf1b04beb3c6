"""One case of a cohort (or the one volume of ``predict`` with a DICOM SEG output or ``--series``): checked,
segmented with an opened model, written, measured.

The order is ``predict``'s (:mod:`~UNetSegmentationLib.inference.predict_file`): outputs checked and the
input inspected before any work (:func:`prepare_case`), the outputs claimed by the caller, the data
verified within the memory budget, then :func:`segment_case`. A DICOM SEG output (``.dcm``) is made
from the label map ``segment_volume`` writes into a folder of the system's temporary folder, which goes
away whatever happens; the SEG itself appears atomically (:mod:`~UNetSegmentationLib.io.dicom_seg`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import SimpleITK as sitk

from UNetSegmentationLib.cohort.discovery import CohortCase
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.inference.predict_file import SegmentationModel, checked_outputs, segment_volume
from UNetSegmentationLib.inference.quality import segment_volumes_ml
from UNetSegmentationLib.io.dicom_seg import AlgorithmInfo, write_dicom_seg
from UNetSegmentationLib.io.input_header import InputHeader
from UNetSegmentationLib.io.native_messages import quiet_itk
from UNetSegmentationLib.io.outputs import check_output_path
from UNetSegmentationLib.io.volumes import inspect_input
from UNetSegmentationLib.protocol.reporters import Reporter


@dataclass(frozen=True)
class PreparedCase:
    """A case whose outputs are checked and whose input is inspected: ``outputs[0]`` the labels (or the
    DICOM SEG), ``outputs[1]`` the confidence map when asked for."""

    case: CohortCase
    header: InputHeader
    outputs: List[Path]


def prepare_case(case: CohortCase, options: SegmentationOptions) -> PreparedCase:
    """Outputs checked and the input inspected (nothing claimed, nothing read but headers)."""
    if case.writes_dicom_seg:
        outputs = checked_outputs(case.input, _label_stand_in(case.output), options)  # the confidence map and the input/output clash
        outputs[0] = check_output_path(case.output, options.overwrite, what="DICOM SEG", extensions=(".dcm",))
    else:
        outputs = checked_outputs(case.input, case.output, options)
    header = inspect_input(case.input, case.series_uid)
    if case.writes_dicom_seg and not header.dicom_files:
        raise UserError(f"{case.output}: a DICOM SEG needs a DICOM series as input, and {case.input} is a volume file; write a label map (.nrrd, .seg.nrrd) instead")
    return PreparedCase(case, header, outputs)


def _label_stand_in(output: Path) -> Path:
    """A label-map name in the DICOM SEG's folder, for the checks that need one (it is never written)."""
    return output.with_name(f".{output.name}.unetseg-check.nrrd")


def segment_case(
    prepared: PreparedCase,
    header: InputHeader,
    model: SegmentationModel,
    options: SegmentationOptions,
    reporter: Reporter,
    algorithm: Optional[AlgorithmInfo] = None,
    observers: Sequence = (),
    measure: bool = False,
    t_start: Optional[float] = None,
) -> dict:
    """Segment a prepared case (outputs claimed, ``header`` verified by ``checked_input``) and write its
    outputs; returns ``segment_volume``'s summary naming the final outputs, plus ``volumes_ml`` (per class
    name) when ``measure``. ``algorithm`` identifies the model in a DICOM SEG; ``t_start``: as ``segment_volume``'s."""
    if not prepared.case.writes_dicom_seg:
        summary = segment_volume(header, prepared.outputs, model, options, reporter, t_start, observers=observers)
        if measure:
            summary["volumes_ml"] = _volumes_ml(_read_labels(prepared.outputs[0]), model)
        return summary
    output = prepared.outputs[0]
    # the intermediate label map goes to the system's temporary folder: a run killed here leaves nothing in the user's
    with tempfile.TemporaryDirectory(prefix="unetseg-dicom-seg-") as folder:
        labels_path = Path(folder) / "labels.nrrd"
        renaming = RenamingReporter(reporter, {str(labels_path): str(output)})
        summary = segment_volume(header, [labels_path, *prepared.outputs[1:]], model, options, renaming, t_start, observers=observers)
        label_image = _read_labels(labels_path)  # read once: the SEG's frames and the volumes
        if algorithm is None:
            algorithm = AlgorithmInfo(model.metadata.architecture, "unknown", "unetseg")
        write_dicom_seg(sitk.GetArrayViewFromImage(label_image), header.dicom_files, model.metadata.classes, output, algorithm, overwrite=options.overwrite)
        if measure:
            summary["volumes_ml"] = _volumes_ml(label_image, model)
    summary["output"] = str(output)
    return summary


def _read_labels(path: Path) -> sitk.Image:
    with quiet_itk():
        return sitk.ReadImage(str(path))


def _volumes_ml(label_image: sitk.Image, model: SegmentationModel) -> Dict[str, float]:
    """Each class's volume in millilitres, by the quality signals' one rule (:mod:`~UNetSegmentationLib.inference.quality`)."""
    return segment_volumes_ml(sitk.GetArrayViewFromImage(label_image), label_image.GetSpacing(), model.metadata.classes)


class RenamingReporter(Reporter):
    """Passes every event to ``inner``; the ``done`` summary names the final outputs instead of the temporary ones."""

    def __init__(self, inner: Reporter, renamed: Dict[str, str]) -> None:
        super().__init__()
        self.inner, self.renamed = inner, renamed

    def start(self, command: str, total: int, unit: str = "slice", initial: int = 0, **info) -> None:
        self.inner.start(command, total, unit, initial, **info)

    def progress(self, done: int, **extra) -> dict:
        return self.inner.progress(done, **extra)

    def log(self, message: str) -> None:
        self.inner.log(message)

    def warning(self, message: str) -> None:
        self.inner.warning(message)

    def done(self, **summary) -> None:
        self.inner.done(**{k: self.renamed.get(v, v) if isinstance(v, str) else v for k, v in summary.items()})

    def error(self, message: str) -> None:
        self.inner.error(message)


class CaseReporter(Reporter):
    """The reporter of one case inside a batch: quiet (the batch reports cases, not slices), keeping the
    case's warnings for its manifest record."""

    def __init__(self) -> None:
        super().__init__()
        self.warnings: List[str] = []

    def warning(self, message: str) -> None:
        self.warnings.append(message)


def with_threads(options: SegmentationOptions, threads: Optional[int]) -> SegmentationOptions:
    """``options`` with ``threads`` CPU threads (unchanged when the user chose them, or ``threads`` is None)."""
    if options.threads is not None or threads is None:
        return options
    return dataclasses.replace(options, threads=max(1, int(threads)))
