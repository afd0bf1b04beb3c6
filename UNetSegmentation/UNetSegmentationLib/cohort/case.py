"""One case of a cohort (or the one volume of ``predict`` with a DICOM SEG output or ``--series``): checked,
segmented with an opened model, written, measured.

The order is ``predict``'s (:mod:`~UNetSegmentationLib.inference.predict_file`): outputs checked and the
input inspected before any work (:func:`prepare_case`), the outputs claimed by the caller, the data
verified within the memory budget, then :func:`segment_case`: predict's one case runner
(:func:`~UNetSegmentationLib.inference.predict_file.segment_volume`), which writes a label map,
``.seg.nrrd`` or DICOM SEG from the labels in memory and measures the segments' volumes there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from UNetSegmentationLib.cohort.discovery import CohortCase
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.inference.predict_file import SegmentationModel, checked_outputs, prepare_input, segment_volume
from UNetSegmentationLib.io.dicom_seg import AlgorithmInfo
from UNetSegmentationLib.io.input_header import InputHeader
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
    outputs = checked_outputs(case.input, case.output, options)  # a .dcm output: a DICOM SEG
    header = prepare_input(case.input, outputs[0], case.series_uid)  # a DICOM SEG's series checked here too
    return PreparedCase(case, header, outputs)


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
    return segment_volume(header, prepared.outputs, model, options, reporter, t_start, observers=observers, algorithm=algorithm, measure=measure)


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
