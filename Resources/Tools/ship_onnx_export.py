"""Writes the ONNX export that ships beside a checkpoint (by default the bundled model at its
recommended depth), so that its first run neither exports nor imports PyTorch or MONAI.

    python Resources/Tools/ship_onnx_export.py [CHECKPOINT [DEPTH]]

The export is made and checked against PyTorch exactly as ``predict`` does it
(``onnx_backend.export_checked``) and named by the checkpoint's portable key
(``shipped_export``): a changed checkpoint no longer finds it, and
``Testing/test_onnx_backend.py`` fails until it is made again. Add the new file to
``UNetSegmentation/CMakeLists.txt`` and remove the old one.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "UNetSegmentation"))

from UNetSegmentationLib.backends import onnx_export as onnx_backend  # noqa: E402
from UNetSegmentationLib.model.checkpoint import load_checkpoint  # noqa: E402
from UNetSegmentationLib.cli.demo import bundled_model  # noqa: E402
from UNetSegmentationLib.model.depth import resolve_depth  # noqa: E402
from UNetSegmentationLib.backends.onnx_cache import shipped_export  # noqa: E402


def main(argv) -> int:
    checkpoint = load_checkpoint(Path(argv[0]) if argv else bundled_model())
    depth = resolve_depth(checkpoint.metadata, int(argv[1]) if len(argv) > 1 else None)
    target = shipped_export(checkpoint, depth)
    onnx_backend.export_checked(checkpoint, depth, True, target, threads=1)
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
