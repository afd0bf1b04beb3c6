"""Re-saves the bundled model's metadata without the build machine's paths (issue 22, defect 14):
``training.config`` held ``/tmp/bundled/train.csv`` and ``/tmp/bundled/train.resume.pt``. The weights
are copied byte for byte (the tensors are read and written unchanged); only the metadata changes, as
:meth:`~UNetSegmentationLib.training.config.TrainConfig.to_json` now records every run's files (names only).

The shipped ONNX export is bound to the checkpoint's bytes and metadata, so it must be made again
afterwards: ``python Resources/Tools/ship_onnx_export.py`` (and the old one removed, CMakeLists updated).

    python bench/portable_bundled_metadata.py [CHECKPOINT]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "UNetSegmentation"))

from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from UNetSegmentationLib.model.bundled import bundled_model_path  # noqa: E402
from UNetSegmentationLib.model.checkpoint import METADATA_KEY  # noqa: E402
from UNetSegmentationLib.model.header import read_metadata  # noqa: E402


def main(argv) -> int:
    path = Path(argv[0]) if argv else bundled_model_path()
    metadata = read_metadata(path)
    config = dict(metadata.training.get("config") or {})
    changed = {k: Path(v).name for k, v in config.items() if k in ("init", "log", "state") and isinstance(v, str) and Path(v).name != v}
    if not changed:
        print(f"{path}: no paths to strip")
        return 0
    metadata.training["config"] = {**config, **changed}
    with safe_open(str(path), framework="pt") as source:
        tensors = {key: source.get_tensor(key) for key in source.keys()}
    temporary = path.with_name(path.name + ".partial")
    save_file(tensors, str(temporary), metadata={METADATA_KEY: metadata.checked(path.name).dumps()})
    os.replace(temporary, path)
    print(f"{path}: {', '.join(f'{k} -> {v}' for k, v in changed.items())}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
