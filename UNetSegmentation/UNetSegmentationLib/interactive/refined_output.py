"""The object a refinement starts from and what is written when it is accepted.

The start is one segment of an existing result (``unetseg refine INPUT INITIAL OUTPUT --segment NAME|VALUE``,
the warm engine's ``refine_open`` with ``initial`` and ``segment``): a label map or a Slicer ``.seg.nrrd``
on the input's grid, read by the same reader as training and evaluation labels (:func:`~..io.labels.read_label`:
a segmentation cropped to its extent is placed on the grid, any other grid is refused). The segment is
named by its name (a ``.seg.nrrd``) or its label value; where the file holds one segment only, it needs no name
(a label map holding none, or a value it does not hold, starts the object empty: a label map cannot list empty labels).

Written: INITIAL with that segment replaced by the refined object, every other segment unchanged (the
object takes only voxels that were background or its own, as Segment Editor's default "overwrite:
none" would give), in the output's format (a ``.seg.nrrd`` keeps the segments' names, colours and
terminology); without INITIAL, a binary mask (1 = the object). Through the output gate and
:func:`~..io.outputs.atomic_output`: the output appears whole, or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.class_info import DEFAULT_COLORS, ClassInfo
from UNetSegmentationLib.io.labels import LabelVolume, read_label
from UNetSegmentationLib.io.outputs import atomic_output
from UNetSegmentationLib.io.segmentations import label_dtype, write_labels

#: the name and colour of the object written without INITIAL
REFINED_NAME = "refined object"


@dataclass
class InitialObject:
    """The segment of INITIAL being refined: the whole label volume, and the value and name of the target."""

    labels: LabelVolume
    value: int
    name: str

    @property
    def mask(self) -> np.ndarray:
        """The target's voxels, ``[k, j, i]`` bool."""
        return self.labels.array == self.value


def read_initial(path, image: sitk.Image, segment: Optional[str] = None) -> InitialObject:
    """The target segment of ``path`` (a label map or ``.seg.nrrd`` on ``image`` 's grid); one
    :class:`UserError` for a file that cannot be read, another grid, or a segment it does not hold."""
    labels = read_label(path, image)
    if labels.segments is not None:
        choices = [(s.value, s.name) for s in labels.segments]
        what = "segment"
    else:
        values = np.unique(labels.array)
        choices = [(int(v), f"label {int(v)}") for v in values if v != 0]
        what = "label value"
    listed = ", ".join(f"{name!r}" if labels.segments is not None else str(value) for value, name in choices[:12]) or "none"
    if segment is None:
        if not choices and labels.segments is None:  # an empty label map (an empty segment exported): the object starts empty, as label 1
            return InitialObject(labels, 1, "label 1")
        if len(choices) != 1:
            raise UserError(f"{path} holds {len(choices)} {what}s ({listed}); name the one to refine with --segment NAME|VALUE")
        return InitialObject(labels, *choices[0])
    text = str(segment).strip()
    for value, name in choices:
        if text == name or (text.isdigit() and int(text) == value):
            return InitialObject(labels, value, name)
    if labels.segments is None and text.isdigit() and 0 < int(text) <= 65535:  # a label map cannot list an empty label: it starts empty
        return InitialObject(labels, int(text), f"label {int(text)}")
    folded = [(value, name) for value, name in choices if name.casefold() == text.casefold()]
    if len(folded) == 1:
        return InitialObject(labels, *folded[0])
    raise UserError(f"{path} has no {what} {text!r}; it has {listed}")


def refined_labels(mask: np.ndarray, initial: Optional[InitialObject]) -> Tuple[np.ndarray, List[ClassInfo]]:
    """``(labels [k, j, i], classes)`` to write: INITIAL with its target replaced, or the binary mask."""
    if initial is None:
        return mask.astype(np.uint8), [ClassInfo(1, REFINED_NAME, DEFAULT_COLORS[0])]
    source = initial.labels
    array = source.array.astype(label_dtype(max(initial.value, int(source.array.max(initial=0)))), copy=True)  # an empty label named by --segment may be above every value held
    array[array == initial.value] = 0
    array[mask & (array == 0)] = initial.value  # the other segments keep their voxels
    if source.segments is not None:
        classes = [ClassInfo(s.value, s.name, s.color or DEFAULT_COLORS[(s.value - 1) % len(DEFAULT_COLORS)], s.terminology) for s in source.segments]
    else:
        values = sorted({int(v) for v in np.unique(source.array) if v != 0} | {initial.value})
        classes = [ClassInfo(v, f"label {v}", DEFAULT_COLORS[(v - 1) % len(DEFAULT_COLORS)]) for v in values]
    return array, classes


def write_refined(output: Path, image: sitk.Image, mask: np.ndarray, initial: Optional[InitialObject], overwrite: bool = False) -> Path:
    """Write the refined object (checked by the output gate before the session opened) whole or not at all."""
    labels, classes = refined_labels(mask, initial)
    with atomic_output([Path(output)], overwrite=overwrite) as (temporary,):
        write_labels(labels, image, temporary, classes, final_name=Path(output))
    return Path(output)
