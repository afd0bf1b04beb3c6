"""Every output of one segmented volume, written together: the labels (label map, Slicer ``.seg.nrrd`` or
DICOM SEG, chosen by the output's extension), the probability map and the review list.

All of them are written under temporary names first and renamed into place only when every one is
complete (:func:`~.outputs.atomic_output`): a disk that fills up while the review list is written
leaves no label map behind either, and the ``done`` event, which comes after this call, never
announces a file that is not there. The arrays come from memory: nothing is read back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence

import numpy as np

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.dicom_seg import AlgorithmInfo, write_dicom_seg
from UNetSegmentationLib.io.native_messages import quiet_itk
from UNetSegmentationLib.io.outputs import atomic_output
from UNetSegmentationLib.io.segmentations import write_labels, write_scalar

if TYPE_CHECKING:  # annotations only: io/ stays below model/
    import SimpleITK as sitk

    from UNetSegmentationLib.io.class_info import ClassInfo

#: the extension of a DICOM SEG output
DICOM_SEG_EXTENSION = ".dcm"


def writes_dicom_seg(path: Path) -> bool:
    """Whether the labels output ``path`` is a DICOM SEG (by its extension)."""
    return str(path).lower().endswith(DICOM_SEG_EXTENSION)


@dataclass(frozen=True)
class CaseOutputs:
    """Where one volume's results go: ``labels`` (always), ``probabilities`` and ``review_list`` when asked for."""

    labels: Path
    probabilities: Optional[Path] = None
    review_list: Optional[Path] = None

    @property
    def paths(self) -> List[Path]:
        """Every output, labels first."""
        return [p for p in (self.labels, self.probabilities, self.review_list) if p is not None]


@dataclass(frozen=True)
class DicomSource:
    """What a DICOM SEG output needs besides the labels: the series' files (in the label map's slice
    order) and the algorithm that made the labels."""

    files: Sequence[str]
    algorithm: AlgorithmInfo


def write_case_outputs(
    outputs: CaseOutputs,
    labels: np.ndarray,
    reference: "sitk.Image",
    classes: Sequence["ClassInfo"],
    *,
    confidence: Optional[np.ndarray] = None,
    review_text: Optional[str] = None,
    dicom: Optional[DicomSource] = None,
    overwrite: bool = False,
    compress: Optional[int] = None,
) -> None:
    """Write ``labels`` ([k, j, i] on ``reference``'s grid), ``confidence`` and ``review_text`` to ``outputs``,
    all renamed into place together once every file is complete, or none (``compress``: io/compression.py)."""
    paths = outputs.paths
    with quiet_itk(), atomic_output(paths, overwrite=overwrite) as temporaries:  # ITK's own complaints: the check before the rename words them
        written = dict(zip(paths, temporaries))
        if writes_dicom_seg(outputs.labels):
            if dicom is None:
                raise UserError(f"{outputs.labels}: a DICOM SEG needs a DICOM series as input; write a label map (.nrrd, .seg.nrrd) instead")
            write_dicom_seg(labels, dicom.files, classes, written[outputs.labels], dicom.algorithm, final_name=outputs.labels)
        else:
            write_labels(labels, reference, written[outputs.labels], classes, final_name=outputs.labels, compress=compress)
        if outputs.probabilities is not None and confidence is not None:
            write_scalar(confidence, reference, written[outputs.probabilities], final_name=outputs.probabilities, compress=compress)
        if outputs.review_list is not None and review_text is not None:
            written[outputs.review_list].write_text(review_text, encoding="utf-8")  # a full disk: OSError, worded by atomic_output
