"""DICOM Segmentation objects (DICOM SEG) from a label map on a DICOM series' grid, written with highdicom.

One segment per class of the model, numbered 1, 2, ... in the checkpoint's class order, each with its
name, its colour, and the SNOMED CT codes of the class's terminology (category, type, type modifier such
as right/left: the slicerio terminology dict of ``ClassInfo.terminology``); a class without one is
coded as the generic "Tissue". The algorithm is identified by the model's name and the checkpoint's
SHA-256 (``AlgorithmIdentificationSequence``); every frame references its source image (the series is
the referenced series); only frames where a segment is present are stored (binary segmentation).

The label map must be on the series' grid in its slice order: ``labels[k]`` belongs to
``source_files[k]`` (SimpleITK's series reader stacks the files in the order it is given, the order
:func:`~.dicom_series.series_files` returns). highdicom and pydicom are the ``[dicom]`` extra: imported
in the functions, so that nothing else pays for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import numpy as np

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.outputs import atomic_output

if TYPE_CHECKING:  # annotations only: io/ stays below model/
    from UNetSegmentationLib.model.metadata import ClassInfo

#: (scheme, code, meaning) of a segment whose class has no terminology
GENERIC_TISSUE = ("SCT", "85756007", "Tissue")
INSTALL_HINT = 'pip install "UNetSegmentationLib[dicom]" (highdicom and pydicom)'


@dataclass(frozen=True)
class AlgorithmInfo:
    """Who made the segmentation: the model's name, the checkpoint's hash (its version), the software."""

    model_name: str
    checkpoint_sha256: str
    software: str

    @property
    def version(self) -> str:
        return f"sha256:{self.checkpoint_sha256[:16]}"


def write_dicom_seg(labels: np.ndarray, source_files: Sequence[str], classes: Sequence[ClassInfo], path: Path, algorithm: AlgorithmInfo, overwrite: bool = False) -> None:
    """Write ``labels`` ([k, j, i] class values on the series' grid) as a DICOM SEG at ``path``,
    atomically (a temporary file renamed into place once complete)."""
    segmentation = dicom_seg_dataset(labels, source_files, classes, algorithm)
    with atomic_output([Path(path)], overwrite=overwrite) as temporaries:
        try:
            segmentation.save_as(str(temporaries[0]))
        except OSError as error:
            raise UserError(f"cannot write {path}: {error.strerror or error}") from None


def dicom_seg_dataset(labels: np.ndarray, source_files: Sequence[str], classes: Sequence[ClassInfo], algorithm: AlgorithmInfo) -> Any:
    """The ``highdicom.seg.Segmentation`` of ``labels`` (see the module's docstring)."""
    hd, pydicom = _dicom_modules()
    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in source_files]
    if labels.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise UserError(f"the label map ({labels.shape}) is not on the grid of its DICOM series ({len(sources)} x {sources[0].Rows} x {sources[0].Columns})")
    segment_numbers = np.zeros(max(c.value for c in classes) + 1, dtype=np.uint8 if len(classes) < 256 else np.uint16)
    for number, info in enumerate(classes, start=1):
        segment_numbers[info.value] = number
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.model_name[:64], family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence"), version=algorithm.version, source=algorithm.software[:64]
    )
    descriptions = [_segment_description(hd, number, info, identification) for number, info in enumerate(classes, start=1)]
    try:
        return _segmentation(hd, sources, segment_numbers[labels], descriptions, algorithm)
    except (ValueError, AttributeError, TypeError) as error:  # what highdicom finds missing or inconsistent in the series
        raise UserError(f"cannot make a DICOM SEG for the series of {Path(source_files[0]).parent}: {error}") from None


def _segmentation(hd, sources: List[Any], pixel_array: np.ndarray, descriptions: List[Any], algorithm: AlgorithmInfo) -> Any:
    first = sources[0]
    if "SliceThickness" not in first and len(sources) > 1:  # optional in some series (highdicom needs it): the slice distance stands in
        distance = float(np.linalg.norm(np.subtract(sources[1].ImagePositionPatient, first.ImagePositionPatient)))
        for source in sources:  # the headers read here, not the files
            source.SliceThickness = round(distance, 6)
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="UNetSegmentation",
        manufacturer_model_name=algorithm.model_name[:64],
        software_versions=algorithm.software[:64],
        device_serial_number=algorithm.checkpoint_sha256[:16],
        content_label="UNETSEG",
        content_description=f"{algorithm.model_name} {algorithm.version}"[:64],
        series_description=f"Segmentation ({algorithm.model_name})"[:64],
        omit_empty_frames=True,
    )


def _segment_description(hd, number: int, info: ClassInfo, identification) -> Any:
    """One segment: label, colour, category/type (and type modifier) codes, the algorithm that made it."""
    codes = segment_codes(info.terminology)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=info.name[:64],
        segmented_property_category=hd.sr.CodedConcept(codes["category"][1], codes["category"][0], codes["category"][2]),
        segmented_property_type=hd.sr.CodedConcept(codes["type"][1], codes["type"][0], codes["type"][2]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=identification,
        tracking_uid=hd.UID(),
        tracking_id=info.name[:64],
        display_color=hd.color.CIELabColor.from_rgb(*(int(round(255 * c)) for c in info.color)),
    )
    if codes.get("typeModifier"):  # e.g. right/left lung: nested in the type code's item, where DICOM puts it
        scheme, value, meaning = codes["typeModifier"]
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [hd.sr.CodedConcept(value, scheme, meaning)]
    return description


def segment_codes(terminology: Optional[Dict[str, Any]]) -> Dict[str, tuple]:
    """``{"category": (scheme, code, meaning), "type": ..., "typeModifier": ... or absent}`` of a slicerio
    terminology dict; the generic "Tissue" code for what it lacks."""
    terminology = terminology or {}
    codes = {key: tuple(terminology[key]) if _is_code(terminology.get(key)) else GENERIC_TISSUE for key in ("category", "type")}
    if _is_code(terminology.get("typeModifier")):
        codes["typeModifier"] = tuple(terminology["typeModifier"])
    return codes


def _is_code(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, str) and v for v in value)


def read_dicom_seg_labels(path: Path, source_files: Sequence[str], classes: Sequence[ClassInfo]) -> np.ndarray:
    """The class values ([k, j, i], uint16) a DICOM SEG written by :func:`write_dicom_seg` holds for the series ``source_files``."""
    hd, pydicom = _dicom_modules()
    segmentation = hd.seg.segread(str(path))
    uids = [pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID for f in source_files]
    numbers = segmentation.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True)
    values = np.zeros(len(classes) + 1, dtype=np.uint16)
    values[1:] = [c.value for c in classes]
    return values[np.asarray(numbers, dtype=np.intp)]


def _dicom_modules() -> List[Any]:
    """highdicom and pydicom, or a :class:`UserError` naming the extra that brings them."""
    try:
        import highdicom
        import pydicom
    except ImportError:
        raise UserError(f"DICOM SEG output needs highdicom and pydicom: {INSTALL_HINT}") from None
    return [highdicom, pydicom]
