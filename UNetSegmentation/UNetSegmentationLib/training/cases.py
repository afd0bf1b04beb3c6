"""Which image/label pairs a run trains or evaluates on: :class:`Case` lists from a datalist, two folders, or one pair.

Datalists are MONAI decathlon-style JSON (``training`` and optional ``validation`` lists, read with
:func:`monai.data.load_decathlon_datalist`); folders are paired by file name (``ct01.nrrd`` ↔
``ct01.seg.nrrd``, ``ct01_label.nii.gz``…). Only paths are checked here; reading is :mod:`.volumes`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.grammar.slice_ranges import check_slice_ranges
from UNetSegmentationLib.io.outputs import split_extension
from UNetSegmentationLib.io.volume_formats import SEGMENTATION_EXTENSION
from UNetSegmentationLib.io.volume_formats import VOLUME_EXTENSIONS as VOLUME_FORMATS


#: file name endings recognised when pairing folders: the engine's one list of volume formats, and label
#: files as Slicer segmentations (compound ones first, so that ``.seg.nrrd`` wins over ``.nrrd``)
VOLUME_EXTENSIONS = (SEGMENTATION_EXTENSION, *VOLUME_FORMATS)


#: suffixes a label file's name may add to its image's name (``case7_seg.nii.gz`` ↔ ``case7.nii.gz``)
LABEL_SUFFIXES = ("", "_seg", "-seg", "_label", "-label", "_labels", "-labels", "_mask", "-mask", ".seg", ".label")


@dataclass(frozen=True)
class Case:
    """One image and its ground-truth label file; from a datalist also the classes its labels cover
    (``labelled_classes``: the others are unknown in it, not background; None: all), its ``fold``, and
    ``held_out_slices`` (slice ranges, e.g. ``"4-6,16-17"``: this case's slices kept for validation
    instead of ``--val-slices``' blocks, so a new model can be scored on the very slices an older one
    held out)."""

    name: str
    image: Path
    label: Path
    labelled: Optional[Tuple[str, ...]] = None
    fold: Optional[int] = None
    held_out: Optional[str] = None


def case_name(path: Path) -> str:
    """A case's name: the file name without a volume extension (``ct01.nii.gz`` → ``ct01``)."""
    return split_extension(path, VOLUME_EXTENSIONS)[0] if split_extension(path, VOLUME_EXTENSIONS)[1] else Path(path).name


def _unique_names(cases: List[Case]) -> List[Case]:
    """Make case names unique (``ct``, ``ct#2``…) so logs and held-out slices can refer to them."""
    seen: Dict[str, int] = {}
    out = []
    for case in cases:
        count = seen.get(case.name, 0) + 1
        seen[case.name] = count
        out.append(case if count == 1 else dataclasses.replace(case, name=f"{case.name}#{count}"))
    return out


def cases_from_datalist(path, section: str = "training", base_dir=None, required: bool = True) -> List[Case]:
    """Cases of one section (``training``, ``validation``…) of a decathlon-style JSON datalist.

    Relative paths are resolved against ``base_dir`` (default: the datalist's folder), as MONAI does.
    A missing optional section gives an empty list.
    """
    from monai.data import load_decathlon_datalist  # MONAI imports torch: not needed to list cases for a quick error

    path = Path(path)
    if not path.is_file():
        raise UserError(f"datalist not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"datalist {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise UserError(f"datalist {path} must be a JSON object with a 'training' list")
    if section not in data:
        if required:
            sections = ", ".join(k for k, v in data.items() if isinstance(v, list)) or "none"
            raise UserError(f"datalist {path} has no {section!r} list (lists found: {sections})")
        return []
    items = data[section]
    if not isinstance(items, list):
        raise UserError(f"datalist {path}: {section!r} must be a list of {{'image': ..., 'label': ...}} objects")
    for index, item in enumerate(items):
        where = f"datalist {path}, {section} item #{index + 1}"
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise UserError(f"{where}: each entry needs an 'image' and a 'label' path")
        for key in ("image", "label"):
            if not isinstance(item[key], str) or not item[key]:
                raise UserError(f"{where}: {key!r} must be one file path (got {item[key]!r}); multi-file inputs are not supported")
        _case_fields(item, where)
    if not items:
        return []
    entries = load_decathlon_datalist(path, is_segmentation=True, data_list_key=section, base_dir=base_dir)
    cases = [Case(str(entry.get("name") or case_name(Path(entry["image"]))), Path(entry["image"]), Path(entry["label"]), *_case_fields(entry, ""))
             for entry in entries]
    check_files(cases, f"datalist {path} ({section})")
    return _unique_names(cases)


def _case_fields(item: Dict[str, Any], where: str) -> Tuple[Optional[Tuple[str, ...]], Optional[int], Optional[str]]:
    """An entry's optional ``labelled_classes`` (a non-empty list of class names; absent: every class
    labelled) and ``fold`` (a whole number from 0), as ``Resources/Tools/prepare_training_data.py`` writes them,
    and ``held_out_slices`` (slice-range text, checked against the volume's slices once it is read).
    The names are checked against the run's classes where those are known (partial_labels.case_unlabelled)."""
    labelled = item.get("labelled_classes")
    if labelled is not None:
        if not isinstance(labelled, list) or not labelled or not all(isinstance(n, str) and n.strip() for n in labelled):
            raise UserError(f"{where}: 'labelled_classes' must be a non-empty list of class names (got {labelled!r}); leave it out when every class is labelled")
        labelled = tuple(n.strip() for n in labelled)
    fold = item.get("fold")
    if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int) or fold < 0):
        raise UserError(f"{where}: 'fold' must be a whole number from 0 (got {fold!r})")
    held_out = item.get("held_out_slices")
    if held_out is not None:
        if not isinstance(held_out, str):
            raise UserError(f"{where}: 'held_out_slices' must be slice ranges as text, e.g. \"4-6,16-17\" (got {held_out!r})")
        check_slice_ranges(held_out, None, option=f"{where}: 'held_out_slices'")
    return labelled, fold, held_out


def split_fold(cases: Sequence[Case], fold: int, source: str, held_out_only: bool = False) -> Tuple[List[Case], List[Case]]:
    """``--fold K``: ``(training, validation)`` = the cases of the other folds and those of fold K (each
    case's ``fold`` field; leave-one-patient-out when a fold is one patient's cases). ``held_out_only``
    (``evaluate --fold K``): no other fold is needed, since nothing trains."""
    missing = [c.name for c in cases if c.fold is None]
    if missing:
        raise UserError(f"--fold {fold}: {source} gives no 'fold' for case(s) {', '.join(map(repr, missing[:5]))}")
    folds = sorted({int(c.fold) for c in cases})
    if fold not in folds:
        raise UserError(f"--fold {fold}: {source} has no case of that fold (folds: {', '.join(map(str, folds))})")
    if len(folds) < 2 and not held_out_only:
        raise UserError(f"--fold {fold}: every case of {source} is in that fold, so none is left to train on")
    return [c for c in cases if c.fold != fold], [c for c in cases if c.fold == fold]


def cases_from_folders(images_dir, labels_dir) -> List[Case]:
    """Pair every volume in ``images_dir`` with the label in ``labels_dir`` of the same name.

    ``ct01.nrrd`` pairs with ``ct01.nrrd``, ``ct01.seg.nrrd``, ``ct01_seg.nii.gz``, ``ct01_label.nii.gz``…
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for folder, what in ((images_dir, "--images"), (labels_dir, "--labels")):
        if not folder.is_dir():
            raise UserError(f"{what} {folder} is not a folder")
    images = {case_name(p): p for p in sorted(images_dir.iterdir()) if p.is_file() and split_extension(p, VOLUME_EXTENSIONS)[1] and not p.name.startswith(".")}
    labels = {case_name(p): p for p in sorted(labels_dir.iterdir()) if p.is_file() and split_extension(p, VOLUME_EXTENSIONS)[1] and not p.name.startswith(".")}
    if not images:
        raise UserError(f"--images {images_dir} holds no volume files ({', '.join(VOLUME_EXTENSIONS)})")
    cases, unmatched = [], []
    for name, image in images.items():
        label = next((labels[name + suffix] for suffix in LABEL_SUFFIXES if name + suffix in labels), None)
        if label is None:
            unmatched.append(image.name)
        else:
            cases.append(Case(name, image, label))
    if unmatched:
        raise UserError(
            f"no label in {labels_dir} for {len(unmatched)} image(s) of {images_dir}: {', '.join(unmatched[:5])}"
            f"{' …' if len(unmatched) > 5 else ''} (labels are matched by name, e.g. ct01.nrrd ↔ ct01.seg.nrrd or ct01_label.nii.gz)"
        )
    return cases


def check_files(cases: Sequence[Case], source: str) -> None:
    """Every image and label file exists (``source`` names where the cases came from, for the message)."""
    for case in cases:
        for what, path in (("image", case.image), ("label", case.label)):
            if not Path(path).is_file():
                raise UserError(f"{source}: {what} of case {case.name!r} not found: {path}")
