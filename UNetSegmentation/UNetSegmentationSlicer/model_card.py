"""The panel's model section: the card (what the chosen model segments, for which images, its lineage,
its spacing beside the input's), the model choice, and the architecture and depth combo boxes.

Why here and not in the module file: these are decisions about what to show (made in
``UNetSegmentationLib.panel.checkpoints``) put into widgets, and the module file stays the Slicer
wiring. The checkpoint is read again only when its path or modification time changes. Widget
properties only, no ``qt`` import: tested with the module on real MRML.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from UNetSegmentationLib.panel.checkpoints import CheckpointInfo, default_depth, describe_checkpoint, model_choices, spacing_text
from UNetSegmentationSlicer import slices, widgets



def checkpoint_path(parameter_node) -> Optional[Path]:
    """The parameter node's model file, None when none is set."""
    path = parameter_node.checkpoint if parameter_node else None
    if path is None or str(path) in ("", "."):
        return None
    return Path(path)


class ModelCard:
    """The chosen model as the panel shows it; :attr:`info` is what the run buttons check."""

    def __init__(self) -> None:
        self.info: Optional[CheckpointInfo] = None
        self._key = None
        #: ``(path, sentence)``: shown above the card while ``path`` is the chosen model (why it was chosen for the user)
        self.notice = (None, "")

    def refresh(self, ui, parameter_node, user_folder: Path) -> None:
        """Re-read the model if its file changed, and show it in the panel."""
        path = checkpoint_path(parameter_node)
        try:
            key = (str(path), os.path.getmtime(str(path))) if path else None
        except OSError:
            key = (str(path), None)
        if key != self._key or self.info is None:
            self.info, self._key = describe_checkpoint(path), key
        info, volume = self.info, parameter_node.inputVolume
        axis = None if parameter_node.sliceAxis in ("", "auto") else "ijk".index(parameter_node.sliceAxis)
        spacing = spacing_text(info.metadata, slices.slice_spacing(volume, axis) if volume else None, parameter_node.spacing)
        notice = self.notice[1] if self.notice[0] is not None and path == self.notice[0] else ""
        ui.modelInfoLabel.text = "\n".join(part for part in (notice, info.summary(), spacing) if part)
        choices = model_choices(user_folder, path)
        widgets.fill_combo_box(ui.modelChoiceComboBox, [(choice.label, str(choice.path), True) for choice in choices], str(path) if path else None)
        self._show_architecture(ui, parameter_node)
        self._show_depths(ui, parameter_node)
        widgets.select_data(ui.deviceComboBox, parameter_node.device)

    def _show_architecture(self, ui, parameter_node) -> None:
        """From the checkpoint; a choice (with class names) only for a plain PyTorch file, which has no metadata."""
        info = self.info
        plain = info.needs_model_options
        architecture = info.architecture or parameter_node.architecture
        index = ui.architectureComboBox.findData(architecture) if architecture else -1
        widgets.select_index(ui.architectureComboBox, index if index >= 0 else (0 if plain else -1))
        if plain and not parameter_node.architecture:
            parameter_node.architecture = ui.architectureComboBox.itemData(ui.architectureComboBox.currentIndex) or ""
        ui.architectureComboBox.enabled = plain
        ui.architectureComboBox.toolTip = "A plain PyTorch file does not say which network it holds: choose it." if plain else "Read from the checkpoint."
        ui.classNamesLabel.visible = plain
        ui.classNamesLineEdit.visible = plain

    def _show_depths(self, ui, parameter_node) -> None:
        """Each prune depth with its validation Dice and speed; hidden when the network cannot prune."""
        choices = self.info.depth_choices()
        depth = parameter_node.depth
        selected = depth if depth in [choice.value for choice in choices] else default_depth(choices)
        widgets.fill_combo_box(ui.depthComboBox, [(choice.label, choice.value, True) for choice in choices], selected)
        for widget in (ui.depthLabel, ui.depthComboBox):
            widget.visible = bool(choices)
        ui.depthComboBox.enabled = bool(choices)
