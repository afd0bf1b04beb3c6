"""A cohort case's output file name: the ``--name`` rule, bounded, and each case's resolved name, checked.

Why here, in one place: a case name comes from the user's files (a CSV's ``name`` column, a datalist's
paths, folder names) and becomes a file name through the ``--name`` rule. Checking the rule once with a
stand-in name let ``../x`` or ``/etc/x`` from a CSV write outside the output folder (issue 23, HIGH 1),
and a format width (``{index:>2000000000}``) built a 2 GB string before any check (HIGH 3). So:

- the rule is parsed, not just tried: only the fields ``{name}``, ``{stem}`` and ``{index}`` (no
  attribute or item access), each with a short format spec whose width and precision are at most
  :data:`MAX_WIDTH`; nothing is formatted before the spec is known to be small;
- every case's own result is checked (:func:`check_case_file_name`): one plain, visible file name
  component, valid UTF-8, short enough for the file system together with the engine's temporary and
  lock names (:data:`MAX_NAME_BYTES`), and then the output gate keeps the path inside the output folder
  (links included). A case that fails gets a refusal recorded as its failure; the other cases go on.
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import Optional

from UNetSegmentationLib.errors import UserError

#: the fields a rule may use
NAME_FIELDS = ("name", "stem", "index")
#: the largest width or precision a rule's format spec may ask for (file names are short anyway)
MAX_WIDTH = 64
#: a rule's own length bound (it is a file-name template)
MAX_RULE_CHARACTERS = 1024
#: an output's name in bytes: 255 (NAME_MAX of common file systems) less what the engine adds for its
#: temporary file (``.NAME.unetseg-PID.partial.EXT``: 25 bytes with a 7-digit process id)
MAX_NAME_BYTES = 255 - 25
#: ``[[fill]align][sign][0][width][.precision][type]`` with a string or integer type only
_SPEC = re.compile(r"^(?:.?[<>^=])?[+\- ]?0?(?P<width>\d+)?(?:\.(?P<precision>\d+))?[sd]?$", re.DOTALL)


def check_name_rule(rule: str) -> None:
    """Refuse a ``--name`` rule that is no bounded file-name template (before anything is formatted)."""
    if len(rule) > MAX_RULE_CHARACTERS:
        raise UserError(f"--name is {len(rule)} characters long; a file-name rule needs at most {MAX_RULE_CHARACTERS}")
    try:
        parsed = list(string.Formatter().parse(rule))
    except ValueError as error:
        raise UserError(f"--name {_shown(rule)}: {error} (write a literal brace as {{{{ or }}}})") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in NAME_FIELDS:
            raise UserError(f"--name {_shown(rule)}: use the fields {{name}}, {{stem}} and {{index}} only, not {{{field[:40]}}}")
        if conversion is not None:
            raise UserError(f"--name {_shown(rule)}: no conversion (!{conversion}) in a file-name rule")
        _check_spec(rule, field, spec or "")
    example = format_name(rule, "case", "case", 1)  # safe now: every width is small; a spec that does not fit its field fails here
    if "/" in example or os.sep in example or example.startswith("."):
        raise UserError(f"--name {_shown(rule)} must give a plain file name (no folder, not hidden)")


def _check_spec(rule: str, field: str, spec: str) -> None:
    match = _SPEC.match(spec)
    if match is None:
        raise UserError(f"--name {_shown(rule)}: {{{field}:{spec[:20]}}} is no format a file name can use (e.g. {{index:04d}})")
    for part in ("width", "precision"):
        value = match.group(part)
        if value is not None and (len(value) > 3 or int(value) > MAX_WIDTH):
            raise UserError(f"--name {_shown(rule)}: a {part} of {value[:12]} in {{{field}:...}}; at most {MAX_WIDTH}")


def format_name(rule: str, name: str, stem: str, index: int) -> str:
    """The rule applied (it was checked by :func:`check_name_rule`: every spec is small and fits its field)."""
    try:
        return rule.format(name=name, stem=stem, index=index)
    except (KeyError, IndexError, ValueError, AttributeError) as error:
        raise UserError(f"--name {_shown(rule)}: {error}") from None


def check_case_file_name(file_name: str, case: str) -> Optional[str]:
    """Why ``file_name`` (a case's output name by the rule) cannot be written, or None when it can:
    one plain component, visible, valid UTF-8, no control character, short enough."""
    shown = _shown(file_name)
    if not file_name or file_name in (".", ".."):
        return f"case {_shown(case)}: its output name {shown} is no file name"
    if "/" in file_name or os.sep in file_name or (os.altsep and os.altsep in file_name) or Path(file_name).is_absolute():
        return f"case {_shown(case)}: its output name {shown} holds a folder separator or is an absolute path; case names must be plain names (fix the name column, or use --name with {{index}})"
    if file_name.startswith("."):
        return f"case {_shown(case)}: its output name {shown} would be hidden (starts with '.')"
    if any(ord(c) < 32 or ord(c) == 127 for c in file_name):
        return f"case {_shown(case)}: its output name {shown} holds a control character"
    try:
        size = len(file_name.encode("utf-8"))
    except UnicodeEncodeError:
        return f"case {_shown(case)}: its output name {shown} is not valid UTF-8 (a file name in another encoding); rename the input"
    if size > MAX_NAME_BYTES:
        return f"case {_shown(case)}: its output name is {size} bytes long, more than the {MAX_NAME_BYTES} a file name may have here; shorten the name (or use --name \"{{index:04d}}.nrrd\")"
    return None


def checked_output(output_dir: Path, file_name: str, case: str) -> Path:
    """``output_dir / file_name`` once the name and the output gate allow it (kept inside ``output_dir``);
    a :class:`UserError` (the case's refusal) otherwise. The gate's existing-file rule is the case's own
    (resume, ``--overwrite``), checked when it runs."""
    from UNetSegmentationLib.io.output_gate import check_output

    problem = check_case_file_name(file_name, case)
    if problem:
        raise UserError(problem)
    output = Path(output_dir) / file_name
    check_output(output, what=f"case {_shown(case)}: output", overwrite=True, inside=output_dir)
    return output


def display_name(text: str, limit: int = 120) -> str:
    """``text`` safe to print and to write in a report: no control characters, undecodable bytes shown as U+FFFD, cut at ``limit``."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = "".join(c if ord(c) >= 32 and ord(c) != 127 else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shown(text: str) -> str:
    return repr(display_name(text, 80))
