"""The class scheme of the many-organ CT model and the bookkeeping of its training data (issue 24).

Pure rules, no file reading: which classes the model has (names, label values, colours, Slicer
terminology), which of our classes a TotalSegmentator structure or a Slicer segment belongs to, which
classes a volume's labels cover (its *labelled classes*: the others are unknown in that volume, not
background), the derived "body" class, which volumes are one patient, and the datalist.
``prepare_training_data.py`` applies them to the real files; ``Testing/test_training_data_preparation.py``
specifies them on small synthetic inputs.

Why a class is "labelled" by what its label source was asked for, not by what the label map holds: a
TotalSegmentator ``total`` run segments all 117 structures, so a kidney absent from its output is absent
from the scan (a true negative that teaches background); the aorta report segments only the aorta, so
its heart is unknown. Counting only the values present would turn the first kind of absence into
"unknown" and lose real negatives.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

ANATOMY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CODES = "Anatomic codes - DICOM master list"
ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
RIGHT = ("SCT", "24028007", "Right")
LEFT = ("SCT", "7771000", "Left")


def terminology(code: str, meaning: str, modifier: Optional[Tuple[str, str, str]] = None) -> Dict[str, Any]:
    """A Slicer terminology entry (the form the bundled model's metadata and ``.seg.nrrd`` files carry):
    category "Anatomical Structure", a SNOMED CT type, an optional laterality modifier."""
    entry: Dict[str, Any] = {"contextName": ANATOMY_CONTEXT, "category": list(ANATOMICAL_STRUCTURE), "type": ["SCT", code, meaning]}
    if modifier:
        entry["typeModifier"] = list(modifier)
    entry["anatomicContextName"] = ANATOMIC_CODES
    return entry


@dataclass(frozen=True)
class ClassSpec:
    """One class of the model: its value in every label map, name, colour (RGB in [0, 1]) and terminology."""

    value: int
    name: str
    color: Tuple[float, float, float]
    terminology: Dict[str, Any] = field(hash=False, compare=False)

    def to_json(self) -> Dict[str, Any]:
        """The entry of the class table (``classes.json``), in the checkpoint metadata's class form."""
        return {"value": self.value, "name": self.name, "color": list(self.color), "terminology": self.terminology}


#: The classes, in label-value order. Values 1-6 keep the bundled chest model's values and codes
#: (its class 7, "tissue", is not carried over: it held every unlabelled organ of the slicerio CT).
#: Colours: the bundled model's for 1-6; 3D Slicer's generic anatomy colours for liver, spleen and body;
#: distinct ones for the others (Slicer's kidney, aorta, heart and stomach are near-identical browns).
CLASSES: Tuple[ClassSpec, ...] = (
    ClassSpec(1, "ribs", (0.992157, 0.909804, 0.619608), terminology("113197003", "Rib")),
    ClassSpec(2, "cervical vertebral column", (1.0, 1.0, 0.811765), terminology("122494005", "Cervical spine")),
    ClassSpec(3, "thoracic vertebral column", (0.886275, 0.792157, 0.52549), terminology("122495006", "Thoracic spine")),
    ClassSpec(4, "lumbar vertebral column", (0.831373, 0.737255, 0.4), terminology("122496007", "Lumbar spine")),
    ClassSpec(5, "right lung", (0.0862745, 0.772549, 0.278431), terminology("39607008", "Lung", RIGHT)),
    ClassSpec(6, "left lung", (0.772549, 0.0980392, 0.388235), terminology("39607008", "Lung", LEFT)),
    ClassSpec(7, "liver", (0.866667, 0.509804, 0.396078), terminology("10200004", "Liver")),
    ClassSpec(8, "spleen", (0.615686, 0.423529, 0.635294), terminology("78961009", "Spleen")),
    ClassSpec(9, "right kidney", (0.25, 0.55, 0.85), terminology("64033007", "Kidney", RIGHT)),
    ClassSpec(10, "left kidney", (0.1, 0.8, 0.8), terminology("64033007", "Kidney", LEFT)),
    ClassSpec(11, "aorta", (0.9, 0.1, 0.1), terminology("15825003", "Aorta")),
    ClassSpec(12, "heart", (0.8, 0.35, 0.55), terminology("80891009", "Heart")),
    ClassSpec(13, "stomach", (0.95, 0.6, 0.1), terminology("69695003", "Stomach")),
    ClassSpec(14, "body", (0.694118, 0.478431, 0.396078), terminology("38266002", "Entire body")),
)
CLASS_BY_NAME: Dict[str, ClassSpec] = {c.name: c for c in CLASSES}
BODY = "body"

#: TotalSegmentator structure names (``class_map["total"]``) → our class, where not a pattern below.
#: Kidney cysts lie inside the kidney's outline and the left atrial appendage is part of the heart.
_TOTALSEGMENTATOR_NAMES = {
    "liver": "liver",
    "spleen": "spleen",
    "kidney_right": "right kidney",
    "kidney_cyst_right": "right kidney",
    "kidney_left": "left kidney",
    "kidney_cyst_left": "left kidney",
    "aorta": "aorta",
    "heart": "heart",
    "atrial_appendage_left": "heart",
    "stomach": "stomach",
}
_VERTEBRA = re.compile(r"vertebrae_([CTL])\d+")
_RIB = re.compile(r"rib_(left|right)_\d+")
_LUNG_LOBE = re.compile(r"lung_(upper|middle|lower)_lobe_(left|right)")
_REGION = {"C": "cervical vertebral column", "T": "thoracic vertebral column", "L": "lumbar vertebral column"}

#: Slicer segment names of the slicerio segmentation → our class (``tissue`` → none: it holds the heart,
#: aorta, liver... of that CT, which are classes here, so its voxels are unknown, not "body").
SLICER_SEGMENTS: Dict[str, Optional[str]] = {c.name: c.name for c in CLASSES[:6]}
SLICER_SEGMENTS["tissue"] = None


def totalsegmentator_class(name: str) -> Optional[str]:
    """Our class of a TotalSegmentator structure, or None (sacrum and S1 are no vertebral-column region
    here, sternum and costal cartilages are not ribs, and most structures are not classes)."""
    if name in _TOTALSEGMENTATOR_NAMES:
        return _TOTALSEGMENTATOR_NAMES[name]
    vertebra = _VERTEBRA.fullmatch(name)
    if vertebra:
        return _REGION[vertebra.group(1)]
    if _RIB.fullmatch(name):
        return "ribs"
    lobe = _LUNG_LOBE.fullmatch(name)
    if lobe:
        return f"{lobe.group(2)} lung"
    return None


def covered_classes(source_names: Iterable[str], mapping=totalsegmentator_class) -> List[str]:
    """The classes a label source covers: every class one of the structures it segmented maps to
    (present in the scan or not), in label-value order."""
    covered = {mapping(n) for n in source_names} - {None}
    return [c.name for c in CLASSES if c.name in covered]


def value_table(value_to_name: Mapping[int, str], mapping=totalsegmentator_class) -> np.ndarray:
    """A lookup table source label value → our label value (0 where the structure is no class)."""
    table = np.zeros(max([0, *value_to_name]) + 1, dtype=np.uint8)
    for value, name in value_to_name.items():
        target = mapping(name)
        table[value] = CLASS_BY_NAME[target].value if target else 0
    return table


def remap_labels(labels: np.ndarray, value_to_name: Mapping[int, str], mapping=totalsegmentator_class) -> np.ndarray:
    """A source label map in our values. A value the source's table does not name is an error: it would
    otherwise become background silently."""
    unknown = sorted(set(np.unique(labels).tolist()) - set(value_to_name) - {0})
    if unknown:
        raise ValueError(f"label values without a name in the source's class table: {unknown}")
    return value_table(value_to_name, mapping)[labels]


def combine_masks(shape: Sequence[int], masks: Sequence[Tuple[str, np.ndarray]]) -> Tuple[np.ndarray, Dict[str, int]]:
    """One label map from binary masks of our classes; where masks overlap the later one wins. Returns
    the map and the overlap counts (``"heart/aorta": 10``: voxels of heart given to the aorta)."""
    out = np.zeros(tuple(shape), dtype=np.uint8)
    overlaps: Dict[str, int] = {}
    for name, mask in masks:
        mask = np.asarray(mask, dtype=bool)
        for earlier in {int(v) for v in np.unique(out[mask])} - {0}:
            overlaps[f"{CLASSES[earlier - 1].name}/{name}"] = int(np.count_nonzero(mask & (out == earlier)))
        out[mask] = CLASS_BY_NAME[name].value
    return out, overlaps


def body_outline(image_hu: np.ndarray, threshold: float = -500.0) -> np.ndarray:
    """The body: voxels above ``threshold`` HU, opened in-plane (detaches the table and the blanket),
    the largest 3D component, holes filled slice by slice (lungs and bowel gas inside). Arrays are
    (slices, rows, columns)."""
    from scipy import ndimage

    mask = np.asarray(image_hu) > threshold
    mask = ndimage.binary_opening(mask, structure=np.ones((1, 5, 5), bool))
    components, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    mask = components == int(np.argmax(sizes))
    return np.stack([ndimage.binary_fill_holes(s) for s in mask])


def add_body(labels: np.ndarray, image_hu: np.ndarray) -> np.ndarray:
    """``labels`` with "body" on the body outline's voxels that no other class holds. Only right where
    every other class is labelled (else an unlabelled organ's voxels would be taught as body)."""
    out = labels.copy()
    out[(out == 0) & body_outline(image_hu)] = CLASS_BY_NAME[BODY].value
    return out


def check_labelled(labels: np.ndarray, labelled: Sequence[str], case: str) -> None:
    """Every class present in a case's label map is one of its labelled classes (else the bookkeeping lies)."""
    present = {CLASSES[v - 1].name for v in np.unique(labels).tolist() if v}
    stray = sorted(present - set(labelled))
    if stray:
        raise ValueError(f"{case}: the label map holds classes not in its labelled classes: {stray}")


def voxel_counts(labels: np.ndarray) -> Dict[str, int]:
    """Voxels per class (classes with none left out)."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=len(CLASSES) + 1)
    return {c.name: int(counts[c.value]) for c in CLASSES if counts[c.value]}


# --- patients ---------------------------------------------------------------------------------------


@dataclass
class VolumeFacts:
    """What patient grouping compares: a volume's voxels ((slices, rows, columns)), spacing and the
    patient its source declares."""

    case: str
    voxels: np.ndarray
    spacing: Tuple[float, ...]
    declared_patient: str


def find_sub_block(big: np.ndarray, small: np.ndarray, tolerance: float = 0.0,
                   candidates: Iterable[Tuple[int, int, int]] = ()) -> Optional[Tuple[int, int, int]]:
    """The offset at which ``small`` equals a block of ``big`` (every voxel within ``tolerance``), or None.

    Tries ``candidates`` (offsets the headers suggest) first, then every offset; a few sample voxels
    reject most offsets before the full comparison. Headers are not trusted alone: TotalSegmentator's
    ``example_ct_sm`` is slices 82-111 of ``example_ct`` yet carries ``example_ct``'s origin.
    """
    if any(s > b for s, b in zip(small.shape, big.shape)) or small.ndim != big.ndim:
        return None
    big64 = big.astype(np.float64, copy=False)
    small64 = small.astype(np.float64, copy=False)
    samples = [tuple(d // 2 for d in small.shape), (0,) * small.ndim, tuple(d - 1 for d in small.shape)]

    def matches(offset) -> bool:
        for sample in samples:
            if abs(big64[tuple(o + s for o, s in zip(offset, sample))] - small64[sample]) > tolerance:
                return False
        block = big64[tuple(slice(o, o + d) for o, d in zip(offset, small.shape))]
        return bool(np.max(np.abs(block - small64)) <= tolerance)

    ranges = [range(b - s + 1) for b, s in zip(big.shape, small.shape)]
    for offset in candidates:
        if all(0 <= o < len(r) for o, r in zip(offset, ranges)) and matches(tuple(offset)):
            return tuple(int(o) for o in offset)
    for offset in np.ndindex(*[len(r) for r in ranges]):
        if matches(offset):
            return tuple(int(o) for o in offset)
    return None


def group_patients(volumes: Sequence[VolumeFacts], tolerance: float = 2.0) -> Tuple[Dict[str, str], List[Dict[str, Any]]]:
    """Patients by evidence: volumes whose voxels coincide (one is a block of the other, same spacing)
    are one patient whatever their sources declare; the others keep their declared patient. Returns
    case → patient (the first declared id of each group, sorted) and the evidence, one entry per pair."""
    parent = {v.declared_patient: v.declared_patient for v in volumes}

    def root(p: str) -> str:
        while parent[p] != p:
            p = parent[p]
        return p

    evidence: List[Dict[str, Any]] = []
    for i, a in enumerate(volumes):
        for b in volumes[i + 1:]:
            entry: Dict[str, Any] = {"cases": [a.case, b.case]}
            if not np.allclose(a.spacing, b.spacing, atol=1e-3):
                entry["finding"] = f"not comparable voxel by voxel (spacing {list(a.spacing)} vs {list(b.spacing)} mm)"
            else:
                big, small = (a, b) if a.voxels.size >= b.voxels.size else (b, a)
                offset = find_sub_block(big.voxels, small.voxels, tolerance)
                if offset is None:
                    entry["finding"] = "no shared voxel data"
                else:
                    entry["finding"] = f"{small.case} is the block of {big.case} at offset {list(offset)} (slices, rows, columns)"
                    entry["same_patient"] = True
                    ra, rb = root(a.declared_patient), root(b.declared_patient)
                    parent[max(ra, rb)] = min(ra, rb)
            evidence.append(entry)
    return {v.case: root(v.declared_patient) for v in volumes}, evidence


# --- datalist ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseRecord:
    """One training case as the datalist lists it (paths relative to the datalist)."""

    name: str
    image: str
    label: str
    patient: str
    labelled_classes: Tuple[str, ...]


def build_datalist(cases: Sequence[CaseRecord], description: str) -> Dict[str, Any]:
    """A MONAI decathlon-style datalist: ``training`` holds every case with its ``patient``,
    ``labelled_classes`` (the others are unknown in that case) and ``fold`` (its patient's index, in
    order of first appearance); ``leave_one_patient_out`` lists, per fold, the held-out patient and the
    cases to train and to validate on. ``labels`` maps label values to class names, as MSD datasets do."""
    unknown = sorted({c for case in cases for c in case.labelled_classes} - set(CLASS_BY_NAME))
    if unknown:
        raise ValueError(f"labelled classes that are not classes: {unknown}")
    patients: List[str] = []
    for case in cases:
        if case.patient not in patients:
            patients.append(case.patient)
    training = []
    for case in cases:
        ordered = [c.name for c in CLASSES if c.name in case.labelled_classes]
        training.append({"name": case.name, "image": case.image, "label": case.label, "patient": case.patient,
                         "labelled_classes": ordered, "fold": patients.index(case.patient)})
    splits = [{"fold": index, "held_out_patient": patient,
               "training": [c.name for c in cases if c.patient != patient],
               "validation": [c.name for c in cases if c.patient == patient]} for index, patient in enumerate(patients)]
    return {"description": description, "labels": {"0": "background", **{str(c.value): c.name for c in CLASSES}},
            "training": training, "leave_one_patient_out": splits}


def write_json(path: Path, data: Any) -> None:
    """JSON written whole or not at all (a temporary file beside it, then renamed)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)
