"""The README's QC report picture: the slicerio chest CT in several resamplings and croppings, segmented
as a cohort by the bundled model, with the QC report's contact sheet copied to
``Resources/Screenshots/CohortQCReport.png``.

Usage: ``python Resources/Tools/render_qc_report.py [--work DIR]`` (from the repository root; a few minutes
on a CPU). ``cohort_volumes`` is also the cohort of ``bench/cohort_overhead.py``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "UNetSegmentation" / "Resources" / "Models" / "ct-organs-unetplusplus.safetensors"
PICTURE = ROOT / "Resources" / "Screenshots" / "CohortQCReport.png"


def resampled(image, spacing):
    """``image`` resampled (linear) onto a grid of ``spacing`` mm covering the same extent."""
    import SimpleITK as sitk

    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing, image.GetDirection(), -1024, image.GetPixelID())


def cohort_volumes(folder: Path, copies: int = 0) -> List[Path]:
    """The slicerio chest CT as it is, cropped and resampled (six volumes; ``copies`` > 0: that many copies of it instead)."""
    import SimpleITK as sitk
    import slicerio

    folder.mkdir(parents=True, exist_ok=True)
    ct = sitk.ReadImage(slicerio.get_testdata_file("CTChest4.nrrd"))
    if copies:
        variants = {f"copy{i + 1:02d}": ct for i in range(copies)}
    else:
        x, y, z = ct.GetSize()
        variants = {
            "original": ct,
            "fewer-slices": ct[:, :, 4 : z - 4],
            "finer-in-plane": resampled(ct, (2.5, 2.5, ct.GetSpacing()[2])),
            "coarser-in-plane": resampled(ct, (3.6, 3.6, ct.GetSpacing()[2])),
            "thinner-slices": resampled(ct, (ct.GetSpacing()[0], ct.GetSpacing()[1], 7.5)),
            "upper-half-only": ct[:, :, z // 2 :],
        }
    paths = []
    for name, image in variants.items():
        path = folder / f"{name}.nrrd"
        sitk.WriteImage(image, str(path), useCompression=True)
        paths.append(path)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="unetseg-qc-"))
    cohort_volumes(work / "cohort")
    command = [sys.executable, "-m", "UNetSegmentationLib", "predict", "--checkpoint", str(MODEL), "--output-dir", str(work / "labels"),
               "--qc-report", str(work / "qc"), "--progress", "none", str(work / "cohort")]
    code = subprocess.run(command).returncode
    shutil.copyfile(work / "qc" / "contact_sheet.png", PICTURE)
    print(f"exit status {code}; wrote {PICTURE} ({PICTURE.stat().st_size // 1024} KB); the report is in {work / 'qc'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
