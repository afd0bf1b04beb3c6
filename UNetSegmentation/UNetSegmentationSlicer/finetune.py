"""The Slicer side of "Improve the model": where the user's models live, and the training pair (the
volume and its corrected segmentation) out of the scene for ``unetseg train --init``.

The segmentation becomes a label map on the volume's exact voxel grid (Slicer's own
``ExportSegmentsToLabelmapNode`` with the volume as reference, through both nodes' transforms), each
segment holding the label value of the model's class of the same name (matched as the engine matches
them: case and spacing ignored), written with the volume's IJK-to-RAS geometry and without its parent
transform, as :func:`~.scene.export_volume` writes the volume. Segments the model has no class for are
left out and named. Plain MRML calls: tested on the ``slicer-core`` scene.

Which classes the user corrected is measured, not assumed: when a result comes into the scene, each
of its segments gets a tag with a fingerprint of the model's own result for that class
(:func:`remember_model_result`, on the same label map on the volume's grid that a fine-tuning exports);
at fine-tuning, a class counts as corrected when its segment no longer matches its fingerprint, or has
none (a segment the model did not make is all the user's). The model card records only those classes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import slicer
import vtk

from UNetSegmentationLib.panel.finetune_run import DONE, FineTuneParameters, FineTuneRun, model_file_stem
from UNetSegmentationSlicer import scene, slices

#: the segment tag holding the fingerprint of the model's own result for the segment's class
MODEL_RESULT_TAG = "UNetSegmentation.ModelResult"


def _key(name: str) -> str:
    return " ".join(str(name).strip().lower().split())


@dataclass
class TrainingLabel:
    """What :func:`export_training_pair` wrote: the segments used (by name), those the model has no class
    for, and the classes whose segments differ from the model's own result (see :func:`corrected_classes`)."""

    used: List[str]
    left_out: List[str]
    corrected: List[str]


def _matched_segments(segmentation_node, classes: Sequence):
    """``(segment ids, segment names, class values, names left out)`` of the segments named as a class."""
    segmentation = segmentation_node.GetSegmentation()
    values = {_key(info.name): int(info.value) for info in classes}
    identifiers, used, label_values, left_out = [], [], [], []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        if _key(segment.GetName()) in values:
            identifiers.append(segmentation.GetNthSegmentID(index))
            used.append(segment.GetName())
            label_values.append(values[_key(segment.GetName())])
        else:
            left_out.append(segment.GetName())
    return identifiers, used, label_values, left_out


def _fingerprint(label_array, value: int) -> str:
    import numpy as np

    mask = np.asarray(label_array) == value
    return "%d:%s" % (int(mask.sum()), hashlib.sha256(np.packbits(mask).tobytes()).hexdigest()[:32])


def remember_model_result(segmentation_node, volume_node, classes: Sequence) -> None:
    """Tag each segment of a result just imported with the fingerprint of its class on the volume's grid."""
    identifiers, _, label_values, _ = _matched_segments(segmentation_node, classes)
    if not identifiers:
        return
    labels = _label_array(segmentation_node, identifiers, label_values, volume_node)
    segmentation = segmentation_node.GetSegmentation()
    for identifier, value in zip(identifiers, label_values):
        segmentation.GetSegment(identifier).SetTag(MODEL_RESULT_TAG, _fingerprint(labels, value))


def corrected_classes(segmentation_node, identifiers: Sequence[str], label_values: Sequence[int], labels) -> List[str]:
    """The names of the segments whose content is not the model's own result (changed, or never the model's)."""
    segmentation, changed = segmentation_node.GetSegmentation(), []
    for identifier, value in zip(identifiers, label_values):
        segment = segmentation.GetSegment(identifier)
        remembered = vtk.reference("")
        if not segment.GetTag(MODEL_RESULT_TAG, remembered) or str(remembered) != _fingerprint(labels, value):
            changed.append(segment.GetName())
    return changed


def export_training_pair(volume_node, segmentation_node, classes: Sequence, image_path: Path, label_path: Path) -> TrainingLabel:
    """Write the volume to ``image_path`` and its segmentation to ``label_path`` (a label map of the model's
    class values on the volume's grid); RuntimeError when no segment is one of ``classes``."""
    if segmentation_node is None or not slicer.mrmlScene.IsNodePresent(segmentation_node):
        raise RuntimeError("choose the segmentation to learn from")
    identifiers, used, label_values, left_out = _matched_segments(segmentation_node, classes)
    if not identifiers:
        names = ", ".join(info.name for info in classes)
        raise RuntimeError("none of the segments of '%s' is one of the model's classes (%s): rename them as the model names its classes" % (segmentation_node.GetName(), names))
    scene.export_volume(volume_node, image_path)
    labels = _label_array(segmentation_node, identifiers, label_values, volume_node, label_path)
    return TrainingLabel(used, left_out, corrected_classes(segmentation_node, identifiers, label_values, labels))


def _label_array(segmentation_node, identifiers: List[str], label_values: List[int], volume_node, path: Optional[Path] = None):
    """The segments ``identifiers`` as one label map on ``volume_node``'s grid, segment n holding
    ``label_values[n]`` (returned as an array [k, j, i]); written to ``path`` when given."""
    import numpy as np  # only when a fine-tuning starts or a result comes in: the module's setup stays light

    ids = vtk.vtkStringArray()
    for identifier in identifiers:
        ids.InsertNextValue(identifier)
    labelmap_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap_node, volume_node):
            raise RuntimeError("the segmentation '%s' could not be exported to a label map" % segmentation_node.GetName())
        exported = slicer.util.arrayFromVolume(labelmap_node)  # segments numbered 1, 2, ... in the order given
        lookup = np.array([0] + list(label_values), dtype=np.uint16 if max(label_values) > 255 else np.uint8)
        labels = lookup[np.asarray(exported)]
        if path is not None:
            slicer.util.updateVolumeFromArray(labelmap_node, labels)
            matrix = vtk.vtkMatrix4x4()
            volume_node.GetIJKToRASMatrix(matrix)
            labelmap_node.SetIJKToRASMatrix(matrix)  # the volume's own grid, as the volume is written (no parent transform)
            storage = labelmap_node.CreateDefaultStorageNode()
            storage.SetFileName(str(path))
            storage.UseCompressionOff()
            if not storage.WriteData(labelmap_node) or not Path(path).is_file():
                raise RuntimeError("the segmentation could not be written to a temporary file (%s)" % path)
        return labels
    finally:
        slicer.mrmlScene.RemoveNode(labelmap_node)


def new_fine_tune(checkpoint, volume_node, models_folder: Path, python: str, temp_root, train_slices: str = "",
                  epochs=None, steps_per_epoch=None, on_log=None) -> FineTuneRun:
    """A :class:`FineTuneRun` of ``checkpoint`` on ``volume_node``, its model named after both, landing in ``models_folder``."""
    name = model_file_stem(Path(checkpoint), volume_node.GetName() if volume_node is not None else "")
    count = slices.slice_count(volume_node) if volume_node is not None else None
    parameters = FineTuneParameters(Path(checkpoint), Path(models_folder), name, train_slices, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                    slice_count=count)
    return FineTuneRun(parameters, python=python, temp_root=temp_root, on_log=on_log)


def start_fine_tune(run: FineTuneRun, volume_node, segmentation_node) -> None:
    """Export the training pair into the run's folder and start the training child."""
    if volume_node is None:
        raise RuntimeError("choose the volume to learn from")
    run.begin_exporting()
    exported = export_training_pair(volume_node, segmentation_node, run.parameters.base_metadata.classes, run.image_path, run.label_path)
    run.add_log("Learning from the segments %s of '%s'" % (", ".join(exported.used), segmentation_node.GetName()))
    if exported.left_out:
        run.add_log("Left out (not among the model's classes): %s" % ", ".join(exported.left_out))
    run.add_log("Corrected by you: %s" % (", ".join(exported.corrected) or "none (every segment is still the model's own result)"))
    run.corrected_classes = exported.corrected
    run.start_training()


def fine_tune_and_wait(run: FineTuneRun, volume_node, segmentation_node, timeout_s=None, on_poll=None) -> Path:
    """Start ``run`` on the pair and block until its model is saved (for scripts and the self-test); returns
    the new model's path. RuntimeError with the engine's own message when it fails."""
    try:
        start_fine_tune(run, volume_node, segmentation_node)
        run.wait(timeout_s=timeout_s, on_poll=on_poll)
    except Exception as error:
        run.fail(str(error))
        raise
    if run.state != DONE:
        run.fail(run.message or "stopped")
        raise RuntimeError("Fine-tuning failed: %s" % run.message)
    return run.model_path
