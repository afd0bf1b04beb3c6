"""``unetseg predict INPUT OUTPUT`` when the output is a DICOM SEG (``.dcm``) or ``--series`` picks a series
of a DICOM folder: the one-volume run of ``predict`` (same order of checks, same events), through the
cohort's case steps (:mod:`.case`), which know DICOM SEG outputs and series choices."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from UNetSegmentationLib.cohort.case import prepare_case, segment_case
from UNetSegmentationLib.cohort.discovery import CohortCase
from UNetSegmentationLib.cohort.worker import algorithm_info
from UNetSegmentationLib.io.file_digest import file_sha256
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.inference.predict_file import model_for_input
from UNetSegmentationLib.io.outputs import claim_outputs, claiming_outputs
from UNetSegmentationLib.model.metadata import ModelMetadata
from UNetSegmentationLib.protocol.reporters import Reporter


def predict_case_file(
    input_path,
    output_path,
    checkpoint_path,
    options: SegmentationOptions,
    reporter: Optional[Reporter] = None,
    plain_metadata: Optional[ModelMetadata] = None,
    series_uid: Optional[str] = None,
) -> dict:
    """Segment one volume (series ``series_uid`` of a DICOM folder, when given) into ``output_path``
    (a ``.dcm`` name: a DICOM SEG); returns the ``done`` summary."""
    t_start = time.perf_counter()
    reporter = reporter or Reporter()
    case = CohortCase(Path(str(input_path)).name, Path(input_path), Path(output_path), series_uid)
    prepared = prepare_case(case, options)  # outputs checked, input inspected: before any lock or model
    with claiming_outputs():
        claim_outputs(prepared.outputs)
        header, model = model_for_input(checkpoint_path, prepared.header, options, reporter, plain_metadata)
        algorithm = algorithm_info(Path(checkpoint_path), file_sha256(Path(checkpoint_path)), model.metadata.architecture) if case.writes_dicom_seg else None
        return segment_case(prepared, header, model, options, reporter, algorithm, t_start=t_start)  # the load time counts from the start, as predict's does
