"""The training data path in one place to import from: cases (:mod:`.cases`), their ground truth and
classes (:mod:`.labels`), and the volumes made ready for sampling (:mod:`.volumes`).

Cases come from a MONAI decathlon-style JSON datalist, two folders matched by name, or one
image/label pair. Everything is read and checked before training starts: missing files, image/label
grids that differ, and label values or segments outside the class list stop with one clear message.
The 2.5D crops themselves are drawn by :mod:`.sampling`.
"""

from __future__ import annotations

from UNetSegmentationLib.training.cases import Case, case_name, cases_from_datalist, cases_from_folders, check_files
from UNetSegmentationLib.training.labels import LabelVolume, Segment, read_label, resolve_classes
from UNetSegmentationLib.training.volumes import LoadedCase, PreparedVolume, held_out_blocks, load_case, prepare_volume

__all__ = [
    "Case", "case_name", "cases_from_datalist", "cases_from_folders", "check_files",
    "LabelVolume", "Segment", "read_label", "resolve_classes",
    "LoadedCase", "PreparedVolume", "held_out_blocks", "load_case", "prepare_volume",
]
