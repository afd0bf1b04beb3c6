"""What a path's text must be before ITK or GDCM is given it: UTF-8, no NUL, no name over 255 bytes.

Python keeps a file name that is not valid UTF-8 (a Latin-1 name copied from an old disk, a name
cut inside a multi-byte character) as text with "surrogate" escapes. SimpleITK converts every path
to UTF-8 on its way into C++, and such a name ends the process there with ``std::logic_error``
(abort, no message); GDCM does the same with such a name inside a DICOM folder. A name over 255
bytes cannot exist on Linux, macOS or Windows file systems, and ``os.stat`` says only "File name too
long". :func:`path_problem` names both before any reader runs (:mod:`.volumes`) and before any work
for an output (:mod:`.output_gate`: a writer aborted the same way after the whole run); standard
library only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

#: the longest file or folder name (in bytes) of the common file systems (ext4, XFS, APFS, NTFS in UTF-16 units)
NAME_MAX_BYTES = 255


def name_problem(name: str) -> Optional[str]:
    """Why the single file or folder ``name`` cannot be handed to ITK, as a phrase; None when it can."""
    if "\0" in name:
        return f"the name {ascii(name)} holds a NUL character"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")  # the bytes that are not UTF-8 as \xff
        return f"the name '{shown}' is not valid UTF-8 text, which ITK cannot open or write; rename it (e.g. convmv -f latin1 -t utf8) or choose another name"
    if len(encoded) > NAME_MAX_BYTES:
        return f"the name {ascii(name[:40])}... is {len(encoded)} bytes long, more than the {NAME_MAX_BYTES} bytes a file system allows; shorten it"
    return None


def path_problem(path: Union[str, Path]) -> Optional[str]:
    """Why ``path`` cannot be handed to ITK (the first of its names that cannot), as a phrase; None when it can."""
    for part in Path(os.fspath(path)).parts:
        problem = name_problem(part)
        if problem:
            return problem
    return None
