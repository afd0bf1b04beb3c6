"""Replace the generated part of a Markdown document, between two HTML comment markers.

The benchmark scripts write their tables into documents that also hold hand-written text
(``docs/architectures.md``, ``BENCHMARKS.md``): only the part between ``start`` and ``end`` is
theirs. A document without the markers gets them, with the text, appended.
"""

from __future__ import annotations

import re
from pathlib import Path


def write_marked_section(path: Path, start: str, end: str, text: str) -> None:
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if start in current and end in current:
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
        current = pattern.sub(lambda _: f"{start}\n{text}{end}", current, count=1)
    else:
        current = current + f"\n{start}\n{text}{end}\n"
    path.write_text(current, encoding="utf-8")
