"""ITK's own messages kept off the user's terminal while the engine reads and writes volumes.

ITK's C and C++ code writes to the process's standard error directly (niftilib's ``** ERROR: NWAD:
wrote only 65184 of 163840 bytes``, MetaIO's ``M_ReadElementsData: data not read completely``, ITK
warnings), next to the engine's one-line message about the same problem, and Python cannot catch
those writes. :func:`quiet_itk` turns ITK's warnings off and points file descriptor 2 at a temporary
file while the block runs; the engine then says what happened in its own words. What was captured is
kept (:attr:`CapturedText.text`) for messages that want the native detail.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Iterator

import SimpleITK as sitk

#: the most captured text kept (a reader can print a line per slice)
_KEPT = 8192


@dataclass
class CapturedText:
    """What native code wrote to standard error inside a :func:`quiet_itk` block (set when the block ends)."""

    text: str = ""


@contextlib.contextmanager
def quiet_itk() -> Iterator[CapturedText]:
    """ITK's warnings off and native writes to standard error captured while the block runs."""
    captured = CapturedText()
    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        with _captured_descriptor(2, captured):
            yield captured
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


@contextlib.contextmanager
def _captured_descriptor(descriptor: int, captured: CapturedText) -> Iterator[None]:
    """Point ``descriptor`` at a temporary file for the block (nothing to do when it is not open, e.g. a GUI process)."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()  # what Python buffered goes out first, where it belongs
    try:
        saved = os.dup(descriptor)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), descriptor)
        try:
            yield
        finally:
            os.dup2(saved, descriptor)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read(_KEPT).decode("utf-8", "replace")


#: ITK's words for a cause, and the engine's (the native text's last line is often a row of a matrix)
_KNOWN_CAUSES = (
    ("determinant is 0", "its direction matrix is singular (determinant 0: two of its axes point the same way, or one is zero), so its voxels are placed nowhere; fix its space directions"),
)


def native_reason(error: BaseException, limit: int = 200) -> str:
    """The cause in an ITK or SimpleITK exception's text, in one line: a known cause in the engine's words, else the
    line ITK marks as its error (``ITK ERROR: ImageIO(0x...): ...`` without the object's address), else the last line."""
    text = str(error).strip()
    for marker, words in _KNOWN_CAUSES:
        if marker in text:
            return words
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    marked = [line for line in lines if line.startswith(("ITK ERROR:", "sitk::ERROR:"))]
    line = marked[0] if marked else (lines[-1] if lines else type(error).__name__)
    line = re.sub(r"^ITK ERROR: \w+\(0x[0-9a-fA-F]+\): ", "", line)
    return line[:limit]
