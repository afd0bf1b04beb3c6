"""Headers that ITK's readers are known to crash or hang on: refused before a reader sees them.

Fuzzing the engine with generated headers (``Testing/test_header_fuzzing.py``) found two:

- **NRRD**: NrrdIO (inside ITK) overruns a fixed buffer of about 1000 characters when a header
  field line (``spacings: ...``, ``data file: ...``) or a line of a ``data file: LIST`` is longer;
  the process dies with a segmentation fault. Comment and ``key:=value`` lines are not affected.
- **NIfTI**: a transform with an infinite or NaN entry (``srow_*``, the quaternion, ``qoffset_*``,
  ``pixdim``) makes ITK's orthogonalisation loop forever.

Standard library only, like :mod:`.payload` whose header readers it shares.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from UNetSegmentationLib.io.nifti_header import NiftiHeader, read_nifti_header
from UNetSegmentationLib.io.payload import file_start, text_header

#: the longest NRRD header field line (and ``data file: LIST`` line) handed to NrrdIO; it crashes from about 980
NRRD_LINE_LIMIT = 900


def reader_hazard(path: Path) -> Optional[str]:
    """Why ``path`` must not be given to ITK's reader (a known crash or hang), as a phrase; None when it may."""
    start = file_start(path)
    if start is None:
        return None
    if start.startswith(b"NRRD000"):
        return _nrrd_hazard(path)
    nifti = read_nifti_header(path)
    return _nifti_hazard(nifti) if nifti is not None else None


def _nrrd_hazard(path: Path) -> Optional[str]:
    lines, _, _ = text_header(path, lambda line: line == "")
    fields = [line for line in lines[1:] if not line.startswith("#") and ":=" not in line]
    if any(line.replace(" ", "").lower().startswith("datafile:list") for line in fields):
        fields += text_header(path, lambda line: False)[0][len(lines) + 1:]  # the list of data files follows the header
    for line in fields:
        if len(line) > NRRD_LINE_LIMIT:
            return f"its header line {ascii(line[:30])}... is {len(line)} characters long; ITK's NRRD reader fails on lines over {NRRD_LINE_LIMIT}"
    return None


def _nifti_hazard(header: NiftiHeader) -> Optional[str]:
    used = {"pixdim": header.pixdim[1:4]}
    if header.qform_code > 0:
        used.update({"quatern_b/c/d": header.quaternion, "qoffset": header.qoffset})
    if header.sform_code > 0:
        used.update({"srow_x": header.srow[0], "srow_y": header.srow[1], "srow_z": header.srow[2]})
    for name, values in used.items():
        if not all(math.isfinite(v) for v in values):
            return f"its NIfTI {name} holds {', '.join(f'{v:g}' for v in values)}: a transform with infinite or NaN entries places the volume nowhere"
    return None
