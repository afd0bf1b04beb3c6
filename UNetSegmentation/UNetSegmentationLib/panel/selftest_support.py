"""Test data for the Slicer self-test and the pytest suite: known answers without a trained model.

- :func:`constant_checkpoint` rewrites an (untrained) safetensors checkpoint so that its network
  labels every voxel with one class: the output heads' weights become zero and their biases favour
  that class. The segmentation then covers exactly the input's voxel grid, which makes geometry
  checks (oblique directions, anisotropic spacing) exact. Done on the raw file with ``json``,
  ``struct`` and numpy: no torch in the process that runs the test.
- :func:`oblique_ijk_to_ras` and :func:`sample_volume_array` build the oblique, anisotropic volume.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Tuple

from UNetSegmentationLib.model.header import read_metadata, read_safetensors_header
from UNetSegmentationLib.errors import UserError

if TYPE_CHECKING:  # numpy is imported where it is used, so importing this module stays light
    import numpy as np

#: logit margin of the chosen class over the others (sigmoid/softmax saturate far below this)
_MARGIN = 30.0


def constant_checkpoint(source, destination, label_value: int) -> Path:
    """Copy ``source`` to ``destination`` with output heads that always choose ``label_value``.

    Every 1x1 convolution with ``out_channels`` outputs (weight ``[out, C, 1, 1]`` and bias ``[out]``
    of float32) is a head: its weight is zeroed and its bias set so the class wins everywhere (for a
    one-class sigmoid model: foreground everywhere). Metadata and all other tensors are unchanged.
    """
    import numpy as np

    source, destination = Path(source), Path(destination)
    metadata = read_metadata(source)
    values = [c.value for c in metadata.classes]
    if label_value not in values:
        raise UserError(f"label value {label_value} is not one of the checkpoint's classes {values}")
    out = metadata.out_channels
    target = np.zeros(out, dtype=np.float32)
    if metadata.uses_softmax:
        target[values.index(label_value) + 1] = _MARGIN
    else:
        target[0] = _MARGIN
    header = read_safetensors_header(source)
    raw = source.read_bytes()
    (header_length,) = struct.unpack("<Q", raw[:8])
    data = bytearray(raw[8 + header_length:])
    heads = 0
    for key, entry in header.items():
        if key == "__metadata__" or not key.endswith(".weight"):
            continue
        shape = entry.get("shape", [])
        bias_key = key[: -len("weight")] + "bias"
        bias = header.get(bias_key)
        if not (entry.get("dtype") == "F32" and len(shape) == 4 and shape[0] == out and shape[2:] == [1, 1]):
            continue
        if not (bias and bias.get("dtype") == "F32" and bias.get("shape") == [out]):
            continue
        start, end = entry["data_offsets"]
        data[start:end] = bytes(end - start)
        start, end = bias["data_offsets"]
        data[start:end] = target.astype("<f4").tobytes()
        heads += 1
    if heads == 0:
        raise UserError(f"{source}: no output head (1x1 convolution with {out} outputs) found")
    destination.write_bytes(raw[: 8 + header_length] + bytes(data))
    return destination


def rotation(angles_rad: Sequence[float]) -> np.ndarray:
    """A proper rotation from three Euler angles (x, then y, then z)."""
    import numpy as np

    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_ijk_to_ras(
    spacing: Tuple[float, float, float] = (0.8, 1.1, 3.5),
    angles_rad: Tuple[float, float, float] = (0.35, -0.26, 0.61),
    origin_ras: Tuple[float, float, float] = (12.5, -30.25, 101.0),
) -> np.ndarray:
    """4x4 IJK→RAS matrix of an oblique volume with anisotropic spacing."""
    import numpy as np

    matrix = np.eye(4)
    matrix[:3, :3] = rotation(angles_rad) @ np.diag(spacing)
    matrix[:3, 3] = origin_ras
    return matrix


def sample_volume_array(shape_kji: Tuple[int, int, int] = (10, 28, 32), seed: int = 0) -> np.ndarray:
    """A small CT-like int16 [k, j, i] array: air around a soft-tissue ellipsoid with a bright core."""
    import numpy as np

    rng = np.random.default_rng(seed)
    k, j, i = shape_kji
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, k), np.linspace(-1, 1, j), np.linspace(-1, 1, i), indexing="ij")
    body = (xx / 0.8) ** 2 + (yy / 0.7) ** 2 + (zz / 0.95) ** 2 < 1
    core = (xx / 0.25) ** 2 + (yy / 0.25) ** 2 < 1
    array = np.full(shape_kji, -1000.0)
    array[body] = 40.0
    array[body & core] = 700.0
    array += rng.normal(0.0, 10.0, shape_kji)
    return array.astype(np.int16)


def lps_from_ras(matrix) -> np.ndarray:
    """An IJK→RAS 4x4 matrix as IJK→LPS (what .nrrd/.seg.nrrd files store)."""
    import numpy as np

    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(matrix, dtype=float)
