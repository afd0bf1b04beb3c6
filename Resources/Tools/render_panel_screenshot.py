"""Render the module panel (Resources/UI/UNetSegmentation.ui) to a PNG without Slicer.

The .ui is loaded with PySide6 (``pip install PySide6-Essentials``), with plain Qt widgets standing
in for the CTK/MRML ones (ctkCollapsibleButton → QGroupBox, qMRMLNodeComboBox → QComboBox,
ctkPathLineEdit → QLineEdit). Everything shown comes from the real code: the checkpoint summary and
depth list from UNetSegmentationLib.panel.checkpoints, the device list from a real device probe, and the
button, progress bar, state text and log from a real SegmentationRun of the engine on the chest CT
shipped in slicerio, captured half-way and then cancelled.

    QT_QPA_PLATFORM=offscreen python Resources/Tools/render_panel_screenshot.py \
        [--checkpoint UNetSegmentation/Resources/Models/ct-organs-unetplusplus.safetensors] \
        [--output Resources/Screenshots/UNetSegmentationPanel.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UI_FILE = REPO / "UNetSegmentation" / "Resources" / "UI" / "UNetSegmentation.ui"
SUBSTITUTES = {"qMRMLWidget": "QWidget", "ctkCollapsibleButton": "QGroupBox", "qMRMLNodeComboBox": "QComboBox", "ctkPathLineEdit": "QLineEdit"}
DROPPED_PROPERTIES = {"nodeTypes", "showChildNodeTypes", "addEnabled", "removeEnabled", "noneEnabled", "noneDisplay", "renameEnabled", "filters", "nameFilters", "settingKey", "collapsed"}


def plain_qt_ui() -> bytes:
    tree = ElementTree.parse(UI_FILE)
    root = tree.getroot()
    for widget in root.iter("widget"):
        original = widget.get("class")
        widget.set("class", SUBSTITUTES.get(original, original))
        for prop in list(widget.findall("property")):
            if prop.get("name") in DROPPED_PROPERTIES:
                widget.remove(prop)
            elif original == "ctkCollapsibleButton" and prop.get("name") == "text":
                prop.set("name", "title")
    for tag in ("customwidgets", "connections"):
        element = root.find(tag)
        if element is not None:
            root.remove(element)
    return ElementTree.tostring(root)


def capture_run(checkpoint: Path, work: Path):
    """A real run on the slicerio chest CT, stopped once about half of the slices are done."""
    import slicerio

    from UNetSegmentationLib.inference.options import SegmentationOptions
    from UNetSegmentationLib.panel.run import SEGMENTING, RunOptions, SegmentationRun

    volume = Path(slicerio.get_testdata_file("CTChest4.nrrd"))
    run = SegmentationRun(RunOptions(checkpoint, SegmentationOptions(batch_size=1)), temp_root=work)
    shutil.copyfile(volume, run.begin_exporting())
    run.start_segmenting()
    deadline = time.monotonic() + 300
    while run.state == SEGMENTING and time.monotonic() < deadline:
        run.poll()
        progress = run.last_progress
        if progress and progress["done"] * 2 >= progress["total"] and progress.get("eta_s") is not None:
            break
        time.sleep(0.02)
    view, log = run.view(), list(run.log)
    run.cancel()
    return view, log


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "UNetSegmentation" / "Resources" / "Models" / "ct-organs-unetplusplus.safetensors")
    parser.add_argument("--output", type=Path, default=REPO / "Resources" / "Screenshots" / "UNetSegmentationPanel.png")
    parser.add_argument("--work", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(REPO / "UNetSegmentation"))

    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtGui import QFont
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QComboBox, QWidget

    from UNetSegmentationLib.panel.checkpoints import architecture_choices, default_depth, describe_checkpoint
    from UNetSegmentationLib.panel.devices import DeviceProbe, device_choices

    info = describe_checkpoint(args.checkpoint)
    if not info.usable:
        raise SystemExit(f"cannot render with {args.checkpoint}: {info.error}")
    devices = device_choices(DeviceProbe(sys.executable).start().wait())
    view, log = capture_run(args.checkpoint, args.work)

    app = QApplication([])
    app.setStyle("Fusion")
    app.setFont(QFont("DejaVu Sans", 9))
    buffer = QBuffer()
    buffer.setData(QByteArray(plain_qt_ui()))
    buffer.open(QIODevice.ReadOnly)
    panel = QUiLoader().load(buffer)
    find = lambda name: panel.findChild(QWidget, name)  # noqa: E731

    find("inputVolumeSelector").addItem("CTChest")
    find("checkpointPathLineEdit").setText(str(Path("Resources/Models") / args.checkpoint.name))
    find("modelInfoLabel").setText(info.summary())
    architecture = find("architectureComboBox")
    for name, title in architecture_choices():
        architecture.addItem(title, name)
    architecture.setCurrentIndex(architecture.findData(info.architecture))
    architecture.setEnabled(False)
    for name in ("classNamesLabel", "classNamesLineEdit"):
        find(name).setVisible(False)
    depth = find("depthComboBox")
    choices = info.depth_choices()
    for choice in choices:
        depth.addItem(choice.label, choice.value)
    depth.setCurrentIndex([c.value for c in choices].index(default_depth(choices)) if choices else -1)
    for name in ("depthLabel", "depthComboBox"):
        find(name).setVisible(bool(choices))
    device = find("deviceComboBox")
    for choice in devices:
        device.addItem(choice.label, choice.value)
    find("outputSegmentationSelector").addItem("Create new segmentation")
    find("show3DCheckBox").setChecked(True)
    find("applyButton").setText(view.button_text)
    find("applyButton").setEnabled(view.button_enabled)
    find("progressBar").setMaximum(view.progress_maximum)
    find("progressBar").setValue(view.progress_value)
    find("statusLabel").setText(view.progress_text)
    find("logTextEdit").setPlainText("\n".join(log))
    for name in ("inputsCollapsibleButton", "outputsCollapsibleButton", "advancedCollapsibleButton"):
        find(name).setEnabled(view.settings_enabled)
    find("logTextEdit").setFixedHeight(96)
    for combo in panel.findChildren(QComboBox):
        combo.setMinimumContentsLength(24)

    panel.resize(460, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(args.output)):
        raise SystemExit(f"could not write {args.output}")
    print(f"wrote {args.output} ({panel.width()}x{panel.height()}): {view.progress_text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
