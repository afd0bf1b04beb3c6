"""How outputs are compressed: gzip inside the NRRD (and MetaImage) files ITK writes, at a level chosen
by measurement, with ``--compress`` to override. Numpy- and SimpleITK-free (the options parse it).

Measured on a 512 × 512 × 300 chest CT (BENCHMARKS.md, *Clinical CT speed*; SimpleITK, one core):

| output | level | seconds | MB |
| --- | --- | --- | --- |
| label map (uint8) | ITK's default | 0.11 | 1.6 |
| label map | 1 | 0.07 | 2.6 |
| label map | 6 | 0.51 | 0.9 |
| label map | 9 | 2.2 | 0.8 |
| label map | none | 0.07 | 78.6 |
| confidence (float32) | ITK's default | 4.1 | 116 |
| confidence | 1 | 2.5 | 140 |
| confidence | 6 | 6.7 | 115 |
| confidence | none | 0.8 | 315 |

So a label map keeps ITK's default level (a 50 times smaller file for 0.04 s more than level 1) and a
float map level 1 (1.6 s less than the default for a fifth more bytes). ``.nii.gz`` files are always
gzipped (their name says so; ITK's NIfTI writer takes no level): ``--compress`` applies to NRRD and
MetaImage outputs.
"""

from __future__ import annotations

from typing import Optional, Union

from UNetSegmentationLib.errors import UserError

#: ``--compress``'s default: the measured choice per output (:func:`level_for`)
AUTO = "auto"
#: ``--compress none``: no compression at all
NONE = "none"
#: ITK's own default level (``compressionLevel=-1``)
ITK_DEFAULT = -1
#: the measured levels when ``--compress auto``: a label map, a float map
LABELS_LEVEL, FLOAT_LEVEL = ITK_DEFAULT, 1


def parse_compress(value: Union[str, int, None]) -> Optional[int]:
    """``--compress``: ``auto`` (None: the measured level of each output), ``none`` (0) or a gzip level 1-9."""
    if value is None or str(value).strip().lower() == AUTO:
        return None
    text = str(value).strip().lower()
    if text in (NONE, "0"):
        return 0
    if text.isdigit() and 1 <= int(text) <= 9:
        return int(text)
    raise UserError(f"--compress {value}: give auto, none or a gzip level 1-9")


def compress_text(level: Optional[int]) -> str:
    """The ``--compress`` value of ``level`` (what :func:`parse_compress` reads back)."""
    return AUTO if level is None else NONE if level == 0 else str(level)


def level_for(requested: Optional[int], floats: bool) -> int:
    """The gzip level to write an output with (0: uncompressed; :data:`ITK_DEFAULT`: ITK's own)."""
    if requested is not None:
        return requested
    return FLOAT_LEVEL if floats else LABELS_LEVEL


def write_arguments(path: str, level: int) -> dict:
    """``useCompression`` and ``compressionLevel`` for ``sitk.WriteImage`` of ``path`` at ``level``
    (a ``.nii.gz`` is always gzipped: an uncompressed file under that name would not be read back)."""
    if str(path).lower().endswith(".gz"):
        return {"useCompression": True}
    return {"useCompression": level != 0, "compressionLevel": level if level > 0 else ITK_DEFAULT}
