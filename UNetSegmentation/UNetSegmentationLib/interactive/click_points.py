"""A click or a scribble as a user gives it, read once for ``unetseg refine``'s clicks file and the warm
engine's ``refine_click`` / ``refine_scribble`` requests (numpy-free: the request schema reads it).

A click is ``{"ijk": [i, j, k], "positive": true}`` (voxel indices of the input, continuous: 0 is the
first voxel's centre) or ``{"lps": [x, y, z], "positive": false}`` (millimetres in the input's physical
space, LPS as ITK and DICOM give it); ``positive`` defaults to true. A scribble is the same with a list
of points: ``{"ijk": [[i, j, k], [i, j, k], ...], "positive": true}`` (a polyline drawn as a row of
dense clicks, :func:`~.guidance.scribble_clicks`). Where on the model grid a point falls, and whether it
lies in the volume at all, is the session's to say (:mod:`.session_grid`): here only the form is read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Sequence, Tuple, Union

from UNetSegmentationLib.errors import UserError

IJK, LPS = "ijk", "lps"
SPACES = (IJK, LPS)
#: clicks and scribbles in one clicks file, and points in one scribble: far more than a user makes
MAX_CLICKS, MAX_POINTS = 10_000, 10_000
#: bytes of a clicks file read at all
MAX_FILE_BYTES = 16 * 1024 * 1024

Point = Tuple[float, float, float]


@dataclass(frozen=True)
class ClickPoints:
    """One click (one point) or one scribble (several points), in ``space`` (``ijk`` or ``lps``)."""

    space: str
    points: Tuple[Point, ...]
    positive: bool
    scribble: bool = False

    def to_json(self) -> dict:
        """The object this was read from (:func:`parse_click` reads it back)."""
        points: Any = [list(p) for p in self.points] if self.scribble else list(self.points[0])
        return {self.space: points, "positive": self.positive}


def _point(value: Any, where: str) -> Point:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise UserError(f"{where}: a point is three numbers, e.g. [120, 96, 14]; got {json.dumps(value, default=str)[:60]}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value):
        raise UserError(f"{where}: a point's coordinates must be finite numbers; got {json.dumps(value, default=str)[:60]}")
    return float(value[0]), float(value[1]), float(value[2])


def parse_click(value: Any, where: str = "click", scribble: Union[bool, None] = None) -> ClickPoints:
    """The :class:`ClickPoints` of one JSON object; ``scribble`` True/False insists on a scribble (a list of
    points) or a click (one point), None takes either. A :class:`UserError` naming ``where`` otherwise."""
    if not isinstance(value, dict):
        raise UserError(f"{where}: a click is an object such as {{\"ijk\": [i, j, k], \"positive\": true}} or {{\"lps\": [x, y, z], ...}}")
    spaces = [space for space in SPACES if space in value]
    unknown = sorted(set(value) - {*SPACES, "positive"})
    if unknown:
        raise UserError(f"{where}: unknown field {str(unknown[0])[:40]!r}; a click has \"ijk\" or \"lps\", and \"positive\"")
    if len(spaces) != 1:
        raise UserError(f"{where}: give exactly one of \"ijk\" (voxel indices of the input) or \"lps\" (mm)")
    positive = value.get("positive", True)
    if not isinstance(positive, bool):
        raise UserError(f"{where}: \"positive\" must be true or false; got {json.dumps(positive, default=str)[:40]}")
    space = spaces[0]
    coordinates = value[space]
    is_scribble = isinstance(coordinates, (list, tuple)) and bool(coordinates) and isinstance(coordinates[0], (list, tuple))
    if scribble is not None and is_scribble != scribble:
        raise UserError(f"{where}: {'a scribble is a list of points, e.g. [[i, j, k], [i, j, k]]' if scribble else 'a click is one point [i, j, k]; a list of points is a scribble'}")
    if not is_scribble:
        return ClickPoints(space, (_point(coordinates, where),), positive)
    if len(coordinates) > MAX_POINTS:
        raise UserError(f"{where}: a scribble has at most {MAX_POINTS} points; this one has {len(coordinates)}")
    return ClickPoints(space, tuple(_point(p, f"{where}, point {n + 1}") for n, p in enumerate(coordinates)), positive, scribble=True)


def parse_clicks(values: Any, where: str) -> List[ClickPoints]:
    """Clicks and scribbles in order from a JSON list (or ``{"clicks": [...]}``)."""
    if isinstance(values, dict) and set(values) == {"clicks"}:
        values = values["clicks"]
    if not isinstance(values, list):
        raise UserError(f"{where}: a clicks file holds a JSON list of clicks, e.g. [{{\"ijk\": [60, 64, 17], \"positive\": true}}]")
    if not values:
        raise UserError(f"{where}: the list of clicks is empty; give at least one click")
    if len(values) > MAX_CLICKS:
        raise UserError(f"{where}: at most {MAX_CLICKS} clicks; this file has {len(values)}")
    return [parse_click(value, f"{where}: click {n + 1}") for n, value in enumerate(values)]


def read_clicks_file(path: Union[str, Path]) -> List[ClickPoints]:
    """The clicks of a clicks file; one :class:`UserError` for a file that is missing, too large, not JSON
    or not a list of clicks."""
    path = Path(path)
    try:
        if not path.is_file():
            raise UserError(f"{path}: no such clicks file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise UserError(f"{path}: a clicks file is at most {MAX_FILE_BYTES // (1024 * 1024)} MiB")
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"{path}: cannot read the clicks file ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: a clicks file is UTF-8 JSON text") from None
    try:
        values = json.loads(text)
    except ValueError as error:
        raise UserError(f"{path}: the clicks file is not JSON ({error})") from None
    return parse_clicks(values, str(path))


def clicks_from_points(points: Sequence[Point], positive: bool, space: str = IJK) -> ClickPoints:
    """One click (one point) or scribble (several) made in code (tests, benchmarks, the simulated user)."""
    points = tuple((float(p[0]), float(p[1]), float(p[2])) for p in points)
    return ClickPoints(space, points, positive, scribble=len(points) > 1)
