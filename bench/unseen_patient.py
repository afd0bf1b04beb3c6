"""The bundled model on a patient no training run saw (issue 24): TotalSegmentator's DICOM example.

    python bench/unseen_patient.py [--sdist ~/.cache/unetseg/training-data/totalsegmentator-2.18.0.tar.gz] \\
        [--checkpoint bundled --checkpoint Testing/Data/chest-ct-unetplusplus.safetensors] [--work DIR]

``Resources/Tools/prepare_training_data.py`` keeps ``tests/reference_files/example_ct_dicom/`` and
``example_seg_dicom.nii.gz`` of the TotalSegmentator 2.18.0 sdist out of training for exactly this. This script
reads them from the sdist (the file prepare_training_data.py fetched and checked against its pinned SHA-256),
maps TotalSegmentator's ``total`` labels to the model's classes with the training data's own rules
(``training_data_scheme.remap_labels``; body derived as for training), puts them on the CT's grid (the label
file's rows run the other way: resampled by SimpleITK, nearest neighbour), and runs ``unetseg evaluate`` with
each checkpoint (every class of the scheme is labelled there; other values are background). It prints one Dice
table: class x checkpoint, at each checkpoint's recommended depth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Resources" / "Tools"))

import training_data_scheme as scheme  # noqa: E402
from prepare_training_data import total_class_map  # noqa: E402

MEMBER = "totalsegmentator-2.18.0/"
REFERENCE = MEMBER + "tests/reference_files/"
DEFAULT_SDIST = Path.home() / ".cache" / "unetseg" / "training-data" / "totalsegmentator-2.18.0.tar.gz"


def unpack(sdist: Path, folder: Path) -> Path:
    """The DICOM series, its labels and map_to_binary.py out of the sdist, into ``folder``."""
    with tarfile.open(sdist) as archive:
        wanted = [m for m in archive.getmembers() if m.isfile() and (m.name.startswith(REFERENCE + "example_ct_dicom/")
                  or m.name in (REFERENCE + "example_seg_dicom.nii.gz", MEMBER + "totalsegmentator/map_to_binary.py"))]
        archive.extractall(folder, members=wanted, filter="data")
    return folder / MEMBER


def build_case(root: Path, folder: Path) -> Path:
    """``ct.nii.gz`` + ``labels.nii.gz`` (the scheme's values on the CT's grid) and a one-case datalist."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(root / "tests/reference_files/example_ct_dicom")))
    ct = reader.Execute()
    labels = sitk.ReadImage(str(root / "tests/reference_files/example_seg_dicom.nii.gz"))
    mapped = sitk.GetImageFromArray(scheme.remap_labels(sitk.GetArrayFromImage(labels), total_class_map((root / "totalsegmentator/map_to_binary.py").read_bytes())))
    mapped.CopyInformation(labels)
    on_ct = sitk.GetArrayFromImage(sitk.Resample(mapped, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    on_ct = scheme.add_body(np.where(on_ct == scheme.CLASS_BY_NAME[scheme.BODY].value, 0, on_ct), sitk.GetArrayFromImage(ct).astype(np.int16))
    image = sitk.GetImageFromArray(on_ct.astype(np.uint8))
    image.CopyInformation(ct)
    sitk.WriteImage(ct, str(folder / "ct.nii.gz"))
    sitk.WriteImage(image, str(folder / "labels.nii.gz"))
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"name": "example_ct_dicom", "image": "ct.nii.gz", "label": "labels.nii.gz", "fold": 0,
                                                  "labelled_classes": [c.name for c in scheme.CLASSES]}]}), encoding="utf-8")
    return datalist


def evaluate(checkpoint: str, datalist: Path, output: Path) -> Dict[str, float]:
    """Dice per class at the checkpoint's recommended depth (``unetseg evaluate --datalist D --fold 0``)."""
    subprocess.run([sys.executable, "-m", "UNetSegmentationLib", "evaluate", "--checkpoint", checkpoint, "--datalist", str(datalist), "--fold", "0",
                    "--other-labels", "background", "--output-dir", str(output), "--overwrite", "--progress", "none"], check=True,
                   cwd=REPO / "UNetSegmentation", stdout=subprocess.DEVNULL)
    report = json.loads((output / "evaluation.json").read_text(encoding="utf-8"))
    from UNetSegmentationLib.model.bundled import checkpoint_path
    from UNetSegmentationLib.model.header import read_metadata

    recommended = read_metadata(checkpoint_path(checkpoint)).recommended_depth  # what predict runs
    depth = f"L{recommended}" if recommended else max(report["summary"], key=lambda name: report["summary"][name]["mean_dice"])
    return {row["class"]: row["dice"] for row in report["rows"] if row["depth"] == depth and row["dice"] is not None}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdist", type=Path, default=DEFAULT_SDIST, help="the TotalSegmentator 2.18.0 sdist (prepare_training_data.py fetches it)")
    parser.add_argument("--checkpoint", action="append", help="a checkpoint to score (repeatable; default: bundled and the chest model)")
    parser.add_argument("--work", type=Path, help="folder for the case and the evaluations (default: a temporary one)")
    args = parser.parse_args(argv)
    if not args.sdist.is_file():
        parser.error(f"{args.sdist} not found: run Resources/Tools/prepare_training_data.py first (it fetches and checks it)")
    checkpoints = args.checkpoint or ["bundled", str(REPO / "Testing" / "Data" / "chest-ct-unetplusplus.safetensors")]
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        datalist = build_case(unpack(args.sdist, work / "sdist"), work)
        scores = {name: evaluate(name, datalist, work / f"evaluation-{index}") for index, name in enumerate(checkpoints)}
    names = [Path(name).stem for name in checkpoints]
    print("| class | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    for info in scheme.CLASSES:
        cells = [f"{scores[name][info.name]:.3f}" if info.name in scores[name] else "n/a" for name in checkpoints]
        if any(cell != "n/a" for cell in cells):
            print(f"| {info.name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
