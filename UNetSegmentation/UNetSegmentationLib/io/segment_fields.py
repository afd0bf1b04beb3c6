"""What a segment's name and terminology may hold, and the ``.seg.nrrd`` header fields of a segmentation.

A Slicer segmentation keeps every segment's metadata as ``key:=value`` lines of its NRRD header
(``Segment0_Name:=right lung``), and its terminology as one tag whose parts are separated by ``~``,
``^`` and ``|``. A value holding a line break therefore starts a header line of its own: a class
named ``"tissue\\nSegment4_Name:=left lung"`` would rename another segment, so that a reader shows
the wrong anatomy under the wrong name. Teem (the NRRD library of ITK and Slicer) escapes ``\\n`` and
``\\\\`` in values, but other readers (pynrrd, hence slicerio) do not unescape them, so the same file
would read differently in different tools. The rules here keep every value representable the same
way everywhere:

- a name or terminology string is non-empty text of at most :data:`MAX_TEXT_LENGTH` characters that
  can be written as UTF-8 (no lone surrogates), without control characters, line or paragraph
  separators, bidirectional overrides or backslashes;
- terminology parts additionally hold none of its separators ``~ ^ |``, and a code is three parts
  (coding scheme, value, meaning) as Slicer writes them.

Non-ASCII text (``右肺``) is allowed: the header is written as UTF-8 bytes, as Slicer writes it.
:mod:`~UNetSegmentationLib.model.metadata` applies these rules when a checkpoint is loaded (so a bad
name is refused before any work), and :mod:`.segmentations` again before it writes a header.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Dict, List, Optional, Sequence

#: longest name or terminology string accepted (a header line stays readable)
MAX_TEXT_LENGTH = 256
#: characters Python and many readers treat as line breaks, and the bidirectional embedding,
#: override and isolate controls (they can make a name display as another one)
_BREAKING = set("\u2028\u2029\u0085") | {chr(c) for c in range(0x202A, 0x202F)} | {chr(c) for c in range(0x2066, 0x206A)}
#: separators of Slicer's TerminologyEntry tag: ``context~scheme^value^meaning~...|``
TERMINOLOGY_SEPARATORS = "~^|"
#: the terminology fields Slicer writes: text fields, and codes (three parts each)
TERMINOLOGY_TEXT_FIELDS = ("contextName", "anatomicContextName")
TERMINOLOGY_CODE_FIELDS = ("category", "type", "typeModifier", "anatomicRegion", "anatomicRegionModifier")
TERMINOLOGY_REQUIRED = ("category", "type")


def text_problem(value: Any, allow_empty: bool = False) -> Optional[str]:
    """Why ``value`` cannot be a segment name or terminology string in a ``.seg.nrrd`` header (None: it can)."""
    if not isinstance(value, str):
        return f"must be text, got {type(value).__name__}"
    if not value.strip() and not allow_empty:
        return "must not be empty"
    if len(value) > MAX_TEXT_LENGTH:
        return f"is {len(value)} characters long; at most {MAX_TEXT_LENGTH} are allowed"
    for character in value:
        category = unicodedata.category(character)
        if category == "Cs":
            return "holds a lone surrogate (not valid Unicode text)"
        if category in ("Cc", "Zl", "Zp") or character in _BREAKING:
            return f"holds the control character {character!r} (U+{ord(character):04X}); a header line cannot hold it"
        if character == "\\":
            return "holds a backslash, which NRRD readers read back differently"
    return None


def terminology_problem(terminology: Any) -> Optional[str]:
    """Why ``terminology`` (slicerio's terminology dict) cannot be written as a TerminologyEntry tag (None: it can)."""
    if not isinstance(terminology, dict):
        return "must be an object"
    unknown = sorted(str(k) for k in terminology if k not in TERMINOLOGY_TEXT_FIELDS + TERMINOLOGY_CODE_FIELDS)
    if unknown:
        return f"has unknown field(s) {', '.join(repr(k) for k in unknown)[:200]}"
    missing = [k for k in TERMINOLOGY_REQUIRED if k not in terminology]
    if missing:
        return f"lacks {' and '.join(repr(k) for k in missing)}"
    for key, value in terminology.items():
        parts = [value] if key in TERMINOLOGY_TEXT_FIELDS else value
        if key in TERMINOLOGY_CODE_FIELDS and not (isinstance(value, list) and len(value) == 3):
            return f"{key!r} must be a code of three parts [scheme, value, meaning], got {value!r}"[:300]
        for part in parts:
            problem = text_problem(part, allow_empty=True)
            if problem is None and any(s in part for s in TERMINOLOGY_SEPARATORS):
                problem = f"holds one of the separators {' '.join(TERMINOLOGY_SEPARATORS)}"
            if problem:
                return f"{key!r} {problem}"
    return None


def canonical_terminology(terminology: Dict[str, Any]) -> Dict[str, Any]:
    """A checked terminology as readers give it back from a header: every part without surrounding
    whitespace (a reader strips it at a tag's end), optional fields that are empty (``""``, a code of
    three empty parts) left out, and a region modifier only with its region."""
    def cleaned(value):
        return value.strip() if isinstance(value, str) else [part.strip() for part in value]

    canonical = {"contextName": cleaned(terminology.get("contextName", "")), "category": cleaned(terminology["category"]), "type": cleaned(terminology["type"])}
    for key in ("typeModifier", "anatomicContextName", "anatomicRegion", "anatomicRegionModifier"):
        value = cleaned(terminology.get(key) or "")
        if value and (isinstance(value, str) or any(value)) and (key != "anatomicRegionModifier" or "anatomicRegion" in canonical):
            canonical[key] = value
    return canonical


def terminology_entry(terminology: Dict[str, Any]) -> str:
    """The TerminologyEntry tag value of a checked terminology dict (as slicerio and Slicer write it)."""
    def code(key: str) -> str:
        return "^".join(terminology.get(key) or ["", "", ""])

    return "~".join([
        terminology.get("contextName", ""), code("category"), code("type"), code("typeModifier"),
        terminology.get("anatomicContextName", ""), code("anatomicRegion"), code("anatomicRegionModifier"),
    ])


def segmentation_header(segments: Sequence[Dict[str, Any]]) -> Dict[str, str]:
    """The ``.seg.nrrd`` header fields (besides the image geometry) of ``segments``: one label layer,
    each segment a dict with ``value``, ``name``, ``color`` (three numbers in 0..1), ``extent``
    (``[i0, i1, j0, j1, k0, k1]``) and optionally ``terminology``. Raises :class:`ValueError` naming
    a value the header cannot hold."""
    header = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for index, segment in enumerate(segments):
        name, terminology = segment["name"], segment.get("terminology")
        problem = text_problem(name)
        if problem:
            raise ValueError(f"segment name {name!r} {problem}")
        tags: List[str] = []
        if terminology:
            problem = terminology_problem(terminology)
            if problem:
                raise ValueError(f"terminology of segment {name!r}: {problem}")
            tags.append(f"TerminologyEntry:{terminology_entry(terminology)}")
        prefix = f"Segment{index}_"
        header.update({
            prefix + "ID": f"Segment_{int(segment['value'])}",
            prefix + "Name": name,
            prefix + "NameAutoGenerated": "0",
            prefix + "Color": " ".join(repr(float(c)) for c in segment["color"]),
            prefix + "ColorAutoGenerated": "0",
            prefix + "LabelValue": str(int(segment["value"])),
            prefix + "Layer": "0",
            prefix + "Extent": " ".join(str(int(e)) for e in segment["extent"]),
            prefix + "Tags": "|".join(tags) + "|",
        })
    return header
