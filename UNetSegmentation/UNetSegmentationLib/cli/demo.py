"""``unetseg demo``: the main job on a bundled default — segment the real chest CT shipped in
``slicerio`` with the bundled model, write a Slicer segmentation and a PNG overlay of a few slices.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.model.depth import depth_tag
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.bundled import bundled_model_path
from UNetSegmentationLib.protocol.reporters import Reporter

DEMO_CT = "CTChest4.nrrd"
#: the demo CT as a training record names it: slicerio's file, or the copy Resources/Tools/prepare_training_data.py makes
DEMO_CT_TRAINING_NAMES = (DEMO_CT, "ctchest4.nii.gz")


def bundled_model() -> Optional[Path]:
    """The model the Slicer module offers by default (shipped in its Resources/Models), if present."""
    path = bundled_model_path()
    return path if path.is_file() else None


def write_overlay_png(volume: np.ndarray, labels: np.ndarray, classes: Sequence, path: Path, slice_count: int = 4, window=(-1000.0, 1000.0)) -> None:
    """A row of slices ([slice, row, column] arrays) with each class drawn in its colour, and a legend."""
    from UNetSegmentationLib.evaluation.plotting import pyplot

    plt = pyplot()

    depth = volume.shape[0]
    picks = np.linspace(depth * 0.2, depth * 0.8, slice_count).round().astype(int)
    figure, axes = plt.subplots(1, slice_count, figsize=(4 * slice_count, 4.4), squeeze=False)
    for axis, k in zip(axes[0], picks):
        axis.imshow(np.clip(volume[k], *window), cmap="gray", interpolation="nearest")
        overlay = np.zeros(labels.shape[1:] + (4,), dtype=np.float32)
        for info in classes:
            overlay[labels[k] == info.value] = (*info.color, 0.45)
        axis.imshow(overlay, interpolation="nearest")
        axis.set_title(f"slice {k}")
        axis.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=info.color) for info in classes]
    figure.legend(handles, [info.name for info in classes], loc="lower center", ncol=min(len(classes), 8), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def untrained_metadata():
    """A small two-class UNet++ for running the pipeline before a trained model exists."""
    from UNetSegmentationLib.model.metadata import ModelMetadata, Normalization, make_classes

    kwargs = {"in_channels": 3, "out_channels": 3, "features": [8, 16, 32, 64, 128], "deep_supervision": True}
    return ModelMetadata("unetplusplus", kwargs, context=1, normalization=Normalization("ct", window=(-1000.0, 1000.0)), classes=make_classes(["right lung", "left lung"]))


def run_demo(output_dir: Path, reporter: Reporter, model: Optional[Path] = None) -> int:
    import SimpleITK as sitk
    import slicerio

    from UNetSegmentationLib.model.checkpoint import create_checkpoint, read_metadata
    from UNetSegmentationLib.inference.slicing import SliceGeometry
    from UNetSegmentationLib.inference.predict_file import predict_file

    _make_folder(output_dir)
    ct = Path(slicerio.get_testdata_file(DEMO_CT))
    model = model or bundled_model()
    with tempfile.TemporaryDirectory() as scratch:
        if model is None:
            model = Path(scratch) / "untrained.safetensors"
            print(
                "note: no bundled trained model yet; segmenting with an UNTRAINED U-Net++ (the result is meaningless, "
                "it shows the pipeline end to end)",
                file=sys.stderr,
            )
            create_checkpoint(model, untrained_metadata())
        segmentation = output_dir / "CTChest4.seg.nrrd"
        summary = predict_file(ct, segmentation, model, SegmentationOptions(overwrite=True), reporter)
        metadata = read_metadata(model)
        image = sitk.ReadImage(str(ct))
        volume = sitk.GetArrayFromImage(image)
        labels = _labels_of(segmentation, metadata.classes)
        overlay = output_dir / "CTChest4-overlay.png"
        window = metadata.normalization.window or (float(volume.min()), float(volume.max()))
        # drawn as the network sees the slices: the canonical radiological orientation (anterior up, patient's right on the left)
        geometry = SliceGeometry.from_direction(image.GetDirection())
        write_overlay_png(geometry.slices_view(volume), geometry.slices_view(labels), metadata.classes, overlay, window=window)
    print(f"segmentation: {summary['output']}\noverlay:      {overlay}", file=sys.stderr)
    note = _trained_on_this_ct_note(metadata)
    if note:
        print(note, file=sys.stderr)
    return 0


def _make_folder(output_dir: Path) -> None:
    """``--output-dir``, through the output gate (a file there, the bundled models' folder: one message), then made."""
    from UNetSegmentationLib.io.output_gate import check_output

    check_output(output_dir, what="demo --output-dir", overwrite=True, kind="folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot make demo --output-dir {output_dir}: {error.strerror or error}") from None


def _trained_on_this_ct_note(metadata) -> Optional[str]:
    """The bundled model learnt from this very CT (only its held-out slices were unseen): say so, with its held-out Dice."""
    data = metadata.training.get("data") or {}
    entries = [entry for entry in data.get("training", []) if isinstance(entry, dict)]
    if not any(entry.get("image") in DEMO_CT_TRAINING_NAMES for entry in entries):
        return None
    others = "" if len(entries) == 1 else f" (and {len(entries) - 1} other volume(s))"
    validation = metadata.training.get("validation") or {}
    depth = metadata.recommended_depth
    by_depth = validation.get("by_depth") or {}
    dice = (by_depth.get(depth_tag(depth)) or {}).get("dice") if depth else validation.get("dice")
    measured = f"; on its held-out slices the mean Dice is {dice:.2f}" + (f" at depth L{depth}" if depth else "") if dice is not None else ""
    return (
        f"note: the model was trained on the other slices of this same CT{others}{measured}. The demo shows the pipeline working; "
        "it is not a measure of accuracy on other scans"
    )


def _labels_of(segmentation: Path, classes: Sequence) -> np.ndarray:
    """[k, j, i] label array of a .seg.nrrd written by the engine (one layer)."""
    import slicerio

    seg = slicerio.read_segmentation(str(segmentation))
    return np.asarray(seg["voxels"]).transpose(2, 1, 0)
