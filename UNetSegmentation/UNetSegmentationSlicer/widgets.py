"""Small helpers that put the panel's decisions into its Qt widgets (combo boxes, button, progress bar).

The decisions themselves (which entries, which is selected, what the button says) come from
``UNetSegmentationLib.panel``; these only set widget properties, so they need no ``qt`` import.
Selections are made with the widget's signals blocked: the parameter node is the source of truth.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Tuple

from UNetSegmentationLib.panel.child_run import PanelView

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


def show_view(ui, view: PanelView) -> None:
    """The segmentation's button, progress bar, state text and settings."""
    _show_run_view(view, ui.applyButton, ui.progressBar, ui.statusLabel,
                   (ui.inputsCollapsibleButton, ui.outputsCollapsibleButton, ui.advancedCollapsibleButton))


def show_finetune_view(ui, view: PanelView) -> None:
    """The "Improve the model" section's button, progress bar, state text and settings."""
    _show_run_view(view, ui.fineTuneButton, ui.fineTuneProgressBar, ui.fineTuneStatusLabel,
                   (ui.trainingVolumeSelector, ui.trainingSegmentationSelector, ui.trainSlicesLineEdit))


def _show_run_view(view: PanelView, button, progress_bar, status_label, settings: Iterable[Any]) -> None:
    """Put a run's view into its button, progress bar and state label; ``settings`` are locked while it runs."""
    button.text = view.button_text
    button.enabled = view.button_enabled
    button.toolTip = view.button_tooltip
    progress_bar.maximum = view.progress_maximum
    progress_bar.value = view.progress_value
    status_label.text = view.progress_text
    for widget in settings:
        widget.enabled = view.settings_enabled


def fill_list(list_widget, labels: Iterable[str]) -> None:
    """Replace a list widget's entries with ``labels``, none selected, without signals."""
    list_widget.blockSignals(True)
    list_widget.clear()
    for label in labels:
        list_widget.addItem(label)
    list_widget.setCurrentRow(-1)
    list_widget.blockSignals(False)
