"""A montage of each training volume with its labels, for the model card: a few axial slices and one coronal one.

Every case of a datalist (``Resources/Tools/prepare_training_data.py`` writes it) is drawn as one PNG:
``--axial`` axial slices spread over the slices that hold labels, and the coronal slice through the labels'
centre, the CT in a wide window (-1000..800 HU, lungs and bone both visible) under its labels in the class
colours of ``classes.json`` (half transparent), with a legend of the classes present. Orientation is the
radiological convention: the volume is reoriented to LPS (SimpleITK ``DICOMOrient``), so an axial slice
shows the patient's right on the left and anterior at the top, and the coronal one the right on the left
and superior at the top; pixels keep their physical aspect. Each PNG is written through the engine's
output gate (complete or absent; an existing one only with ``--overwrite``).

    python Resources/Tools/render_label_montage.py --datalist training-data/datalist.json \\
        [--classes training-data/classes.json] [--output-dir docs/images/montage] [--axial 4] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "UNetSegmentation"))

#: the display window in HU: air to dense bone
WINDOW = (-1000.0, 800.0)
#: label opacity over the CT
ALPHA = 0.5


def oriented(path: Path) -> Tuple[np.ndarray, Tuple[float, float, float]]:
    """``(array [S, P, L] = [k, j, i] in LPS, spacing (i, j, k) mm)``: row 0 anterior, column 0 the patient's right, slice 0 inferior."""
    image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    return sitk.GetArrayFromImage(image), image.GetSpacing()


def overlay(labels: np.ndarray, colours: Dict[int, Tuple[float, float, float]]) -> np.ndarray:
    """RGBA of a label slice: each value's class colour at :data:`ALPHA`, transparent background."""
    rgba = np.zeros(labels.shape + (4,), dtype=np.float32)
    for value, colour in colours.items():
        mask = labels == value
        rgba[mask, :3] = colour
        rgba[mask, 3] = ALPHA
    return rgba


def panels(volume: np.ndarray, labels: np.ndarray, axial: int) -> List[Tuple[str, np.ndarray, np.ndarray, str]]:
    """``(title, CT slice, label slice, kind)``: ``axial`` axial slices over the labelled range, then the coronal one."""
    labelled_slices = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    first, last = (labelled_slices[0], labelled_slices[-1]) if labelled_slices.size else (0, labels.shape[0] - 1)
    chosen = np.unique(np.round(np.linspace(first, last, axial + 2)[1:-1]).astype(int))
    result = [(f"axial {k + 1}/{labels.shape[0]}", volume[k], labels[k], "axial") for k in chosen]
    rows = np.flatnonzero(labels.any(axis=(0, 2)))
    row = int(np.round(rows.mean())) if rows.size else labels.shape[1] // 2
    result.append((f"coronal {row + 1}/{labels.shape[1]}", volume[::-1, row, :], labels[::-1, row, :], "coronal"))  # superior at the top
    return result


def render(case: dict, root: Path, classes: list, output: Path, axial: int) -> None:
    """One case's montage into ``output`` (a PNG)."""
    from UNetSegmentationLib.evaluation.plotting import pyplot

    plt = pyplot()
    from matplotlib.patches import Patch

    volume, spacing = oriented(root / case["image"])
    labels, _ = oriented(root / case["label"])
    colours = {int(c["value"]): tuple(c["color"]) for c in classes}
    names = {int(c["value"]): c["name"] for c in classes}
    shown = panels(volume, labels, axial)
    figure, axes = plt.subplots(1, len(shown), figsize=(2.3 * len(shown), 2.9))
    for axis, (title, picture, label, kind) in zip(np.atleast_1d(axes), shown):
        aspect = spacing[1] / spacing[0] if kind == "axial" else spacing[2] / spacing[0]
        axis.imshow(np.clip(picture, *WINDOW), cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=aspect, interpolation="nearest")
        axis.imshow(overlay(label, colours), aspect=aspect, interpolation="nearest")
        axis.set_title(title, fontsize=8)
        axis.text(0.02, 0.5, "R", color="yellow", fontsize=7, transform=axis.transAxes, va="center")
        axis.axis("off")
    present = [value for value in sorted(np.unique(labels)) if value in names]
    figure.legend(handles=[Patch(color=colours[v], label=names[v]) for v in present], loc="lower center", ncol=min(len(present), 5) or 1, fontsize=7, frameon=False)
    unlabelled = [c["name"] for c in classes if case.get("labelled_classes") is not None and c["name"] not in case["labelled_classes"]]
    subtitle = f"{case.get('name', Path(case['image']).name)} (patient {case.get('patient', '?')}), {volume.shape[2]}x{volume.shape[1]}x{volume.shape[0]} voxels of " \
               f"{spacing[0]:.2g}x{spacing[1]:.2g}x{spacing[2]:.2g} mm" + (f"; not labelled: {', '.join(unlabelled)}" if unlabelled else "")
    figure.suptitle(subtitle, fontsize=8)
    figure.tight_layout(rect=(0, 0.12, 1, 0.95))
    figure.savefig(output, dpi=80, format="png")
    plt.close(figure)


def main(argv=None) -> int:
    from UNetSegmentationLib.errors import UserError
    from UNetSegmentationLib.io.output_gate import check_output
    from UNetSegmentationLib.io.outputs import atomic_output

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", type=Path, required=True)
    parser.add_argument("--classes", type=Path, help="the class table (default: classes.json beside the datalist)")
    parser.add_argument("--output-dir", type=Path, default=Path("docs/images/montage"))
    parser.add_argument("--axial", type=int, default=4, help="axial slices per volume (default 4)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    root = args.datalist.resolve().parent
    classes = json.loads((args.classes or root / "classes.json").read_text())
    cases = json.loads(args.datalist.read_text())["training"]
    try:
        folder = check_output(args.output_dir, what="--output-dir", overwrite=True, kind="folder")
        folder.mkdir(parents=True, exist_ok=True)
        for case in cases:
            output = folder / f"{case.get('name', Path(case['image']).name.split('.')[0])}.png"
            with atomic_output([output], overwrite=args.overwrite) as (temporary,):
                render(case, root, classes, temporary, args.axial)
            print(f"wrote {output} ({output.stat().st_size // 1024} KB)")
    except UserError as error:
        print(f"render_label_montage: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
