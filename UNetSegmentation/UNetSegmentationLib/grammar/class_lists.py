"""Class lists as the user types them: ``--classes``, ``--partial-classes`` and ``--label-map``.

One grammar for the command line and the panel. A ``--label-map`` key is the user's label value
(ASCII digits) or a segment name; its value is the model's class (name or value). Background is no
class: a key ``0`` is refused (issue 23 item 10: ``0:ribs`` made the tuned model call air "ribs").
Digits that are not ASCII (``²``, ``٣``) are refused with a message, not read as a value.
"""

from __future__ import annotations

import unicodedata
from typing import Dict, List, Optional, Union

from UNetSegmentationLib.errors import UserError

AUTO, NONE = "auto", "none"
#: ``--other-labels``: what segments and label values that no class takes become, in ``train`` and
#: ``evaluate`` alike: an error by default (a score against labels read the wrong way gave Dice 0.002 and
#: exit 0: issue 22, defect 10), or background with a warning that names them
OTHER_LABELS = ("error", "background")
DEFAULT_OTHER_LABELS = "error"
LABEL_MAP_EXAMPLE = '"3:left lung,7:ribs"'


def parse_class_names(text: Optional[str], *, option: str = "--classes") -> Optional[List[str]]:
    """``"liver, spleen"`` → ``["liver", "spleen"]`` (None when not given); empty or repeated names are refused."""
    if text is None or not str(text).strip():
        return None
    names = [n.strip() for n in str(text).split(",")]
    if any(not n for n in names):
        raise UserError(f"{option} needs non-empty names separated by commas")
    seen = set()
    for name in names:
        key = class_key(name)
        if key in seen:
            raise UserError(f"{option}: duplicate class name {name!r} (names are compared ignoring case and spacing); name each class once")
        seen.add(key)
    return names


def parse_partial_classes(text: Optional[str]) -> Union[str, List[str]]:
    """``--partial-classes``: ``auto`` (default), ``none``, or class names separated by commas."""
    if text is None or str(text).strip().lower() == AUTO:
        return AUTO
    if str(text).strip().lower() == NONE:
        return NONE
    names = parse_class_names(text, option="--partial-classes")
    if not names:
        raise UserError("--partial-classes needs auto, none, or class names separated by commas")
    return names


def class_key(name: str) -> str:
    """How names are compared: case-insensitive, runs of white space as one space."""
    return " ".join(str(name).strip().lower().split())


def label_value(key: str, *, option: str = "--label-map") -> Optional[int]:
    """The label value a ``--label-map`` key stands for (ASCII digits), or None for a segment name.

    A key written in other digits (``²``, Arabic-Indic ``٣``) is refused: Python's ``isdigit`` says
    yes to them, ``int`` then fails or reads a different number than the user sees."""
    key = key.strip()
    if key.isascii() and key.isdecimal():
        return int(key)
    if any(unicodedata.category(ch) == "No" or (ch.isdigit() and not ch.isascii()) for ch in key) and not any(ch.isalpha() for ch in key):
        raise UserError(f"{option}: {key[:40]!r} is neither a label value (write it with the digits 0-9) nor a segment name")
    return None


def parse_label_map(text: str, *, option: str = "--label-map") -> Dict[str, str]:
    """``'3:left lung,7:ribs'`` → ``{"3": "left lung", "7": "ribs"}``: the user's label value (or
    segment name) → the model's class (name or value). ``0`` (background) maps to no class."""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{option} must be USERVALUE:CLASS pairs separated by commas, e.g. {LABEL_MAP_EXAMPLE}")
    mapping: Dict[str, str] = {}
    for part in text.split(","):
        user, colon, model = part.rpartition(":")
        user, model = user.strip(), model.strip()
        if not colon or not user or not model:
            raise UserError(f"{option} must be USERVALUE:CLASS pairs separated by commas, e.g. {LABEL_MAP_EXAMPLE}; got {part.strip()[:60]!r}")
        value = label_value(user, option=option)
        if value == 0:
            raise UserError(f"{option}: {part.strip()!r} maps the background (label value 0) to a class; background is no class, leave 0 out")
        if value is not None:
            user = str(value)  # "007" and "7" are the same label value
        if user in mapping or class_key(user) in {class_key(k) for k in mapping}:
            raise UserError(f"{option} maps {user!r} twice")
        mapping[user] = model
    return mapping


def format_label_map(mapping: Dict[str, str]) -> str:
    """The ``--label-map`` text of ``mapping`` (what the panel's command line carries)."""
    for user, model in mapping.items():
        if any(c in str(user) + str(model) for c in ",:"):
            raise UserError(f"--label-map: {user!r} → {model!r} holds ',' or ':', which the map's text cannot carry; rename the segment or class")
    return ",".join(f"{user}:{model}" for user, model in mapping.items())
