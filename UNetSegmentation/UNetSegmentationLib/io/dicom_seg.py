"""DICOM Segmentation objects (DICOM SEG) from a label map on a DICOM series' grid, written with highdicom.

One segment per class of the model, numbered 1, 2, ... in the checkpoint's class order, each with its
name, its colour, and the SNOMED CT codes of the class's terminology (category, type, type modifier such
as right/left: the slicerio terminology dict of ``ClassInfo.terminology``); a class without one is
coded as the generic "Tissue". The algorithm is identified by the model's name and the checkpoint's
SHA-256 (``AlgorithmIdentificationSequence``); every frame references its source image (the series is
the referenced series); only frames where a segment is present are stored (binary segmentation).

What a SEG needs is checked before any work (:func:`check_dicom_seg`): the ``[dicom]`` extra, and in every
source image the UIDs it must reference (SOP class and instance, study, series, frame of reference) and
the image plane. An anonymised series whose UIDs were emptied is refused with the missing field named:
a SEG references its source images by their UIDs, and UIDs generated here would reference images that
do not carry them (a viewer or PACS could never put the SEG on its series). Text is written as UTF-8;
labels and code meanings (DICOM LO) are cut to 64 characters, labels kept unique.

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

if TYPE_CHECKING:  # annotations only: io/ stays below model/
    from UNetSegmentationLib.io.class_info import ClassInfo

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


def algorithm_of(checkpoint_path: Path, checkpoint_sha256: str, architecture: str) -> AlgorithmInfo:
    """The model as a DICOM SEG names it: the checkpoint's file name and architecture, its hash, this software."""
    from UNetSegmentationLib import __version__ as version

    name = f"{Path(checkpoint_path).name.split('.')[0]} ({architecture})"
    return AlgorithmInfo(name, checkpoint_sha256, f"UNetSegmentation unetseg {version}")


#: what a DICOM SEG takes from every source image: (keyword, tag), UIDs it must reference or share
REQUIRED_UIDS = (
    ("SOPClassUID", "(0008,0016)"),
    ("SOPInstanceUID", "(0008,0018)"),
    ("StudyInstanceUID", "(0020,000D)"),
    ("SeriesInstanceUID", "(0020,000E)"),
    ("FrameOfReferenceUID", "(0020,0052)"),
)
#: and the image plane, where each frame lies
REQUIRED_GEOMETRY = (("Rows", "(0028,0010)"), ("Columns", "(0028,0011)"), ("PixelSpacing", "(0028,0030)"),
                     ("ImageOrientationPatient", "(0020,0037)"), ("ImagePositionPatient", "(0020,0032)"))
#: longest DICOM LO value (segment labels, tracking ids, code meanings): 64 characters
LO_LENGTH = 64


def check_dicom_seg(source_files: Sequence[str], classes: Optional[Sequence[ClassInfo]] = None) -> None:
    """Refuse, before any work, a DICOM SEG that cannot be made: the ``[dicom]`` extra missing, a source
    image without a UID the SEG must reference (an anonymiser may have emptied them: a SEG cannot
    reference an image by a UID it does not have, and UIDs made up here would reference nothing), or a
    segment the SEG cannot describe."""
    _, pydicom = _dicom_modules()
    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in source_files]
    folder = Path(source_files[0]).parent
    missing = {}  # field → the files lacking it
    for keyword, tag in REQUIRED_UIDS + REQUIRED_GEOMETRY:
        lacking = [Path(f).name for f, source in zip(source_files, sources) if not str(source.get(keyword, "") or "").strip()]
        if lacking:
            missing[f"{keyword} {tag}"] = lacking
    if missing:
        first = next(iter(missing.values()))
        raise UserError(
            f"cannot make a DICOM SEG of the series in {folder}: its images have an empty or missing {', '.join(missing)} "
            f"({len(first)} of {len(sources)} images, e.g. {first[0]}), which a DICOM SEG must reference; write a Slicer segmentation (.seg.nrrd) or a label map instead"
        )
    uids = [str(source.SOPInstanceUID) for source in sources]
    if len(set(uids)) != len(uids):
        raise UserError(f"cannot make a DICOM SEG of the series in {folder}: several of its images share one SOPInstanceUID (0008,0018); write a Slicer segmentation (.seg.nrrd) or a label map instead")
    if classes is not None:  # else the model is not known yet: its segments are checked before the volume is read
        check_dicom_segments(classes)


def check_dicom_segments(classes: Sequence[ClassInfo]) -> None:
    """Refuse a segment the SEG cannot describe; the series' files are :func:`check_dicom_seg`'s (read once, before the model)."""
    hd, _ = _dicom_modules()
    try:
        segment_descriptions(hd, classes, AlgorithmInfo("check", "0" * 64, "unetseg"))
    except ValueError as error:
        raise UserError(f"cannot make a DICOM SEG: a segment cannot be described ({error}); write a Slicer segmentation (.seg.nrrd) instead") from None


def write_dicom_seg(labels: np.ndarray, source_files: Sequence[str], classes: Sequence[ClassInfo], path: Path, algorithm: AlgorithmInfo, final_name: Optional[Path] = None) -> None:
    """Write ``labels`` ([k, j, i] class values on the series' grid) as a DICOM SEG at ``path`` (a temporary
    file of :func:`~.outputs.atomic_output`, renamed to ``final_name`` with the run's other outputs)."""
    segmentation = dicom_seg_dataset(labels, source_files, classes, algorithm)
    try:
        segmentation.save_as(str(path))
    except OSError as error:
        raise UserError(f"cannot write {final_name or path}: {error.strerror or error}") from None


def dicom_seg_dataset(labels: np.ndarray, source_files: Sequence[str], classes: Sequence[ClassInfo], algorithm: AlgorithmInfo) -> Any:
    """The ``highdicom.seg.Segmentation`` of ``labels`` (see the module's docstring), in UTF-8 (names in any script)."""
    hd, pydicom = _dicom_modules()
    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in source_files]
    if labels.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise UserError(f"the label map ({labels.shape}) is not on the grid of its DICOM series ({len(sources)} x {sources[0].Rows} x {sources[0].Columns})")
    segment_numbers = np.zeros(max(c.value for c in classes) + 1, dtype=np.uint8 if len(classes) < 256 else np.uint16)
    for number, info in enumerate(classes, start=1):
        segment_numbers[info.value] = number
    try:
        descriptions = segment_descriptions(hd, classes, algorithm)
        segmentation = _segmentation(hd, sources, segment_numbers[labels], descriptions, algorithm)
    except (ValueError, AttributeError, TypeError, KeyError) as error:  # what highdicom finds missing or inconsistent in the series
        raise UserError(f"cannot make a DICOM SEG for the series of {Path(source_files[0]).parent}: {type(error).__name__}: {error}"[:500]) from None
    segmentation.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: a class named 右肺 stays 右肺, not "??"
    return segmentation


def segment_labels(names: Sequence[str]) -> List[str]:
    """Each name as a segment label (DICOM LO: at most 64 characters), all different: a name cut to 64
    characters that would equal another's ends in its segment number instead (``"...#3"``)."""
    labels: List[str] = []
    for number, name in enumerate(names, start=1):
        label = name[:LO_LENGTH]
        if label in labels or (len(name) > LO_LENGTH and label in names):
            suffix = f"#{number}"
            label = name[: LO_LENGTH - len(suffix)] + suffix
        labels.append(label)
    return labels


def segment_descriptions(hd, classes: Sequence[ClassInfo], algorithm: AlgorithmInfo) -> List[Any]:
    """One ``SegmentDescription`` per class, numbered from 1, with unique labels (:func:`segment_labels`)."""
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.model_name[:LO_LENGTH], family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence"), version=algorithm.version, source=algorithm.software[:LO_LENGTH]
    )
    labels = segment_labels([info.name for info in classes])
    return [_segment_description(hd, number, info, label, identification) for number, (info, label) in enumerate(zip(classes, labels), start=1)]


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


def _segment_description(hd, number: int, info: ClassInfo, label: str, identification) -> Any:
    """One segment: label, colour, category/type (and type modifier) codes, the algorithm that made it."""
    codes = segment_codes(info.terminology)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=_concept(hd, codes["category"]),
        segmented_property_type=_concept(hd, codes["type"]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=identification,
        tracking_uid=hd.UID(),
        tracking_id=label,
        display_color=hd.color.CIELabColor.from_rgb(*(int(round(255 * c)) for c in info.color)),
    )
    if codes.get("typeModifier"):  # e.g. right/left lung: nested in the type code's item, where DICOM puts it
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [_concept(hd, codes["typeModifier"])]
    return description


def _concept(hd, code: tuple) -> Any:
    """A coded concept of a ``(scheme, value, meaning)`` code; the meaning, a DICOM LO, cut to 64 characters
    (the scheme and value identify the concept; the meaning only shows it)."""
    scheme, value, meaning = code
    return hd.sr.CodedConcept(value, scheme, meaning[:LO_LENGTH])


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
