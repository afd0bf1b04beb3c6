"""Small helpers that put the panel's decisions into its Qt widgets (combo boxes, button, progress bar).

The decisions themselves (which entries, which is selected, what the button says) come from
``UNetSegmentationLib.panel``; these only set widget properties, so they need no ``qt`` import.
Selections are made with the widget's signals blocked: the parameter node is the source of truth.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Tuple

#: ``(label, value, enabled)`` of one combo-box entry
Entry = Tuple[str, Any, bool]


def select_index(combo_box, index: int) -> None:
    """Select ``index`` without emitting ``currentIndexChanged``."""
    combo_box.blockSignals(True)
    combo_box.currentIndex = index
    combo_box.blockSignals(False)


def select_data(combo_box, value) -> None:
    """Select the entry whose data is ``value`` (if any and not already selected), without signals."""
    index = combo_box.findData(value)
    if index >= 0 and index != combo_box.currentIndex:
        select_index(combo_box, index)


def fill_combo_box(combo_box, entries: Iterable[Entry], selected: Optional[Any] = None) -> None:
    """Replace the entries (disabled ones greyed out where the model allows) and select ``selected``
    (the first entry when it is not there), without signals."""
    entries = list(entries)
    combo_box.blockSignals(True)
    combo_box.clear()
    for index, (label, value, enabled) in enumerate(entries):
        combo_box.addItem(label, value)
        if not enabled:
            try:
                combo_box.model().item(index).setEnabled(False)
            except AttributeError:  # not a QStandardItemModel: left selectable, the engine refuses the value
                pass
    index = combo_box.findData(selected) if selected is not None else -1
    if entries:
        combo_box.currentIndex = max(index, 0)
    combo_box.blockSignals(False)


def show_view(ui, view) -> None:
    """The button, progress bar, state text and settings of a ``panel.run.PanelView``."""
    ui.applyButton.text = view.button_text
    ui.applyButton.enabled = view.button_enabled
    ui.applyButton.toolTip = view.button_tooltip
    ui.progressBar.maximum = view.progress_maximum
    ui.progressBar.value = view.progress_value
    ui.statusLabel.text = view.progress_text
    for widget in (ui.inputsCollapsibleButton, ui.outputsCollapsibleButton, ui.advancedCollapsibleButton):
        widget.enabled = view.settings_enabled


def show_finetune_view(ui, view) -> None:
    """The "Improve the model" section's button, progress bar, state text and settings of a ``panel.finetune_run.FineTuneView``."""
    ui.fineTuneButton.text = view.button_text
    ui.fineTuneButton.enabled = view.button_enabled
    ui.fineTuneButton.toolTip = view.button_tooltip
    ui.fineTuneProgressBar.maximum = view.progress_maximum
    ui.fineTuneProgressBar.value = view.progress_value
    ui.fineTuneStatusLabel.text = view.progress_text
    for widget in (ui.trainingVolumeSelector, ui.trainingSegmentationSelector, ui.trainSlicesLineEdit):
        widget.enabled = view.settings_enabled


def fill_list(list_widget, labels: Iterable[str]) -> None:
    """Replace a list widget's entries with ``labels``, none selected, without signals."""
    list_widget.blockSignals(True)
    list_widget.clear()
    for label in labels:
        list_widget.addItem(label)
    list_widget.setCurrentRow(-1)
    list_widget.blockSignals(False)
