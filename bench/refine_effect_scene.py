"""What the "UNet refine" Segment Editor effect costs on Slicer's side of a click (issue 26), on a clinical
grid: the engine's answer put into the preview, Apply through Segment Editor's own logic, and Undo.

The engine's click latency is measured by ``bench/refine_latency.py``; this is what the Slicer process adds
to it (``UNetSegmentationSlicer/refine_logic.py`` on slicer-core's MRML, the classes Slicer runs). The
slicerio chest CT resampled to 512 × 512 × 300 (0.76 × 0.76 × 1.13 mm, linear; its segmentation's
labels resampled the same way, ``Testing/clinical_volumes.py``), the right lung the selected segment, the
Segment Editor settings at their defaults (editable everywhere, overwrite all). The engine's answers are
made here: a click's slice (the lung grown by 3 voxels) and a propagation's ±30 slices, as ``.npy``
files read the way the effect reads them. Each step timed ``--rounds`` times (the first refinement of a
process pays the first allocation of the volume-sized arrays: reported apart).

    nice -n 10 python bench/refine_effect_scene.py [--rounds 5] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "Testing"), str(REPO / "UNetSegmentation")]

#: the clinical grid: factors on the chest CT's spacing (3.05 × 3.05 × 10 mm → 0.76 × 0.76 × 1.13 mm)
FACTORS = (0.25, 0.25, 34 / 300)
TARGET = "right lung"
CHEST_MODEL = REPO / "Testing" / "Data" / "chest-ct-unetplusplus.safetensors"  # its classes name the CT's segments
PROPAGATED = 30  # slices on each side of the clicked one


def clinical_scene(folder: Path):
    """The scene: the clinical CT and its segmentation read as Slicer reads them, a Segment Editor node."""
    import SimpleITK as sitk
    import slicer
    import slicerio

    import clinical_volumes
    from mrml_support import build_mrml

    ct_path, segmentation_path = Path(slicerio.get_testdata_file("CTChest4.nrrd")), Path(slicerio.get_testdata_file("Segmentation.seg.nrrd"))
    clinical_volumes.VERSIONS["512x512x300"] = FACTORS
    ct_file, truth_file = clinical_volumes.write_version(ct_path, segmentation_path, CHEST_MODEL, "512x512x300", folder)
    mrml = build_mrml(slicer, folder / "slicer-home")
    volume = mrml.read_volume(ct_file, "clinical CT")
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "clinical segmentation")
    mrml.layer("scene").read_segmentation(truth_file, segmentation)
    mrml.layer("scene").place_on_volume(segmentation, volume)
    target = segmentation.GetSegmentation().GetSegmentIdBySegmentName(TARGET)
    editor_node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor_node.SetAndObserveSegmentationNode(segmentation)
    editor_node.SetAndObserveSourceVolumeNode(volume)
    editor_node.SetSelectedSegmentID(target)
    assert sitk.ReadImage(str(ct_file)).GetSize() == (512, 512, 300)
    return mrml, volume, segmentation, target, editor_node


def answers(lung: np.ndarray, folder: Path, centre: int) -> Dict[str, tuple]:
    """The engine's answers as files: one clicked slice, and a propagation's ±PROPAGATED slices."""
    from scipy import ndimage

    files = {}
    for name, slices in (("click", [centre]), ("propagation", list(range(centre - PROPAGATED, centre + PROPAGATED + 1)))):
        masks = np.stack([ndimage.binary_dilation(lung[index], iterations=3) for index in slices]).astype(np.uint8)
        path = folder / f"{name}.npy"
        np.save(path, masks)
        files[name] = (path, slices)
    return files


def timed(step: Callable[[], object]) -> float:
    started = time.perf_counter()
    step()
    return (time.perf_counter() - started) * 1000.0


def measure(rounds: int) -> Dict[str, List[float]]:
    with tempfile.TemporaryDirectory(prefix="refine-effect-scene-") as temp:
        folder = Path(temp)
        mrml, volume, segmentation, target, editor_node = clinical_scene(folder)
        logic_module = mrml.layer("refine_logic")
        editing = logic_module.EditorLogicEditing(editor_node)
        logic = logic_module.RefineLogic(editing)
        logic.start(segmentation, target, volume)
        lung = logic.target_array()
        centre = int(np.argmax(lung.sum(axis=(1, 2))))
        files = answers(lung, folder, centre)
        times: Dict[str, List[float]] = {name: [] for name in ("start", "first preview", "click preview", "propagation preview", "apply", "undo")}
        for _ in range(rounds):
            times["start"].append(timed(lambda: logic.start(segmentation, target, volume)))
            click_path, click_slices = files["click"]
            times["first preview"].append(timed(lambda: logic.show(logic_module.proposal_from_file(click_path, click_slices, 0))))
            for _ in range(10):
                times["click preview"].append(timed(lambda: logic.show(logic_module.proposal_from_file(click_path, click_slices, 0))))
            path, slices = files["propagation"]
            times["propagation preview"].append(timed(lambda: logic.show(logic_module.proposal_from_file(path, slices, 0))))
            times["apply"].append(timed(logic.apply))
            times["undo"].append(timed(editing.undo))
        mrml.scene.Clear(1)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the timings (ms) here too")
    args = parser.parse_args()
    times = measure(args.rounds)
    print(f"Slicer side of the refine effect, 512 x 512 x 300, {args.rounds} rounds (ms): first round | median of the others")
    summary = {}
    for name, values in times.items():
        per_round = len(values) // args.rounds
        first, rest = values[:per_round], values[per_round:] or values
        summary[name] = {"first_ms": round(statistics.median(first), 1), "median_ms": round(statistics.median(rest), 1),
                         "max_ms": round(max(rest), 1)}
        print(f"  {name:20s} {summary[name]['first_ms']:8.1f} | {summary[name]['median_ms']:8.1f} (max {summary[name]['max_ms']:.1f})")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
