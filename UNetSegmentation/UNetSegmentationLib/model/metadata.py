"""Checkpoint metadata: what a model needs besides its weights, validated on the way in.

Stored as JSON under the key ``"unetseg"`` of the safetensors header. This module is pure Python
(no torch), so the Slicer panel can read a checkpoint's classes and per-depth metrics cheaply.

Example::

    {"format_version": 1,
     "architecture": {"name": "unetplusplus", "kwargs": {"in_channels": 3, "out_channels": 8, ...}},
     "context": 1,
     "normalization": {"kind": "ct", "window": [-1000, 1000]},
     "classes": [{"value": 1, "name": "right lung", "color": [0.09, 0.77, 0.28],
                  "terminology": {...slicerio terminology dict...}}],
     "training_spacing": [0.78, 0.78],
     "slice_distance": 2.5,
     "depth_metrics": {"1": {"dice": 0.81, "ms_per_slice": 3.1}, ...},
     "recommended_depth": 2,
     "temperature": 1.4}

Every field is validated when a checkpoint is loaded (:meth:`ModelMetadata.loads`), before any work:
class names and terminology must be what a ``.seg.nrrd`` header can hold
(:mod:`~UNetSegmentationLib.io.segment_fields`: no line breaks or other control characters, so a name
cannot inject header fields; non-ASCII text is fine), colours three numbers in [0, 1], label values
1..65535, a CT window a real one (within ±:data:`CT_WINDOW_LIMIT` HU, at least
:data:`CT_WINDOW_MIN_WIDTH` HU wide).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.class_info import DEFAULT_COLORS, ClassInfo  # noqa: F401 (re-exported: the checkpoint's classes)
from UNetSegmentationLib.io.segment_fields import canonical_terminology, terminology_problem, text_problem

FORMAT_VERSION = 1
METADATA_KEY = "unetseg"
#: a CT window (HU) must lie within ±this: the Hounsfield scale of real scanners (extended scales
#: included) stays far inside it; beyond it the window cannot be meant as one
CT_WINDOW_LIMIT = 100_000.0
#: ... and be at least this wide: a narrower window turns every voxel into 0 or 1 (or divides by ~0)
CT_WINDOW_MIN_WIDTH = 1.0
#: a calibration temperature (:attr:`ModelMetadata.temperature`) must lie within these: beyond them the
#: probabilities are all but one-hot (below) or all but uniform (above), which no fit to held-out data gives
TEMPERATURE_RANGE = (0.01, 100.0)
#: an interactive network's guidance channels (interactive/guidance.GUIDANCE_CHANNELS; model/ cannot import it)
INTERACTIVE_GUIDANCE_CHANNELS = 3

def out_channels_for(class_count: int) -> int:
    """One foreground class is one sigmoid channel; several are softmax over background + classes."""
    return 1 if class_count == 1 else class_count + 1


@dataclass(frozen=True)
class Normalization:
    """``ct``: clip to ``window`` (HU) and scale to [0, 1]. ``mr``: clip to the volume's ``percentiles``, z-score."""

    kind: str
    window: Optional[Tuple[float, float]] = None
    percentiles: Optional[Tuple[float, float]] = None

    def to_json(self) -> Dict[str, Any]:
        if self.kind == "ct":
            return {"kind": "ct", "window": list(self.window)}
        return {"kind": "mr", "percentiles": list(self.percentiles)}

    @staticmethod
    def parse(text: str) -> "Normalization":
        """From the command line: ``ct:LO,HI``, ``mr`` or ``mr:PLO,PHI``."""
        kind, _, values = text.partition(":")
        try:
            numbers = tuple(float(v) for v in values.split(",")) if values else ()
        except ValueError:
            numbers = None
        if kind == "ct" and numbers and len(numbers) == 2:
            return _validated_normalization({"kind": "ct", "window": list(numbers)})
        if kind == "mr" and numbers is not None and len(numbers) in (0, 2):
            return _validated_normalization({"kind": "mr", "percentiles": list(numbers or (0.5, 99.5))})
        raise UserError(f"--norm must be ct:LO,HI (e.g. ct:-1000,1000), mr or mr:PLO,PHI; got {text!r}")


@dataclass
class ModelMetadata:
    """Everything about a checkpoint except its tensors."""

    architecture: str
    kwargs: Dict[str, Any]
    context: int
    normalization: Normalization
    classes: List[ClassInfo]
    training_spacing: Optional[List[float]] = None  # mm: the in-plane (row, column) spacing it trained at (last two numbers)
    slice_distance: Optional[float] = None  # mm between the slice and each 2.5D neighbour channel in training
    depth_metrics: Dict[int, Dict[str, float]] = field(default_factory=dict)
    recommended_depth: Optional[int] = None
    training: Dict[str, Any] = field(default_factory=dict)
    #: the logits are divided by it before the softmax/sigmoid (temperature scaling, Guo et al. 2017, "On
    #: Calibration of Modern Neural Networks"), fitted on held-out patients so that a probability of 0.9 is
    #: right about 9 times in 10 (``Resources/Tools/calibrate_model.py``). 1.0: the network's own
    #: probabilities (every checkpoint made before it was recorded). It never changes a voxel's argmax.
    temperature: float = 1.0
    format_version: int = FORMAT_VERSION
    #: an interactive network's guidance encoding (interactive/guidance.GuidanceSpec.to_dict()); None: an automatic one
    guidance: Optional[Dict[str, Any]] = None

    @property
    def role(self) -> str:
        """``interactive`` (segments the object under clicks: guidance channels after the image's) or ``automatic``."""
        return "automatic" if self.guidance is None else "interactive"

    def check_automatic(self, name: str) -> "ModelMetadata":
        """This metadata when the model segments on its own; one :class:`UserError` for an interactive one,
        whose input needs guidance channels no automatic run has (every automatic predictor asks this)."""
        if self.role != "automatic":
            raise UserError(f"{name} is an interactive model (it refines the object under clicks: unetseg refine, or Slicer's "
                            "UNet refine effect); segmenting a volume needs an automatic model, e.g. --checkpoint bundled")
        return self

    @property
    def in_channels(self) -> int:
        """Input channels: the slice and ``context`` neighbours on each side (2.5D); an interactive network's
        three guidance channels after them (previous mask, positive and negative clicks: interactive/guidance.py)."""
        return 2 * self.context + 1 + (0 if self.guidance is None else INTERACTIVE_GUIDANCE_CHANNELS)

    @property
    def out_channels(self) -> int:
        """Logit channels: see :func:`out_channels_for`."""
        return out_channels_for(len(self.classes))

    @property
    def in_plane_spacing(self) -> Optional[Tuple[float, float]]:
        """The (row, column) spacing in mm the network learned at, or None where the checkpoint does not say."""
        return None if not self.training_spacing else (float(self.training_spacing[-2]), float(self.training_spacing[-1]))

    @property
    def context_distance(self) -> Optional[float]:
        """mm between a slice and its 2.5D neighbours in training: :attr:`slice_distance`, else (a checkpoint
        made before it was recorded) the first of three recorded training spacings; None where unknown."""
        if self.slice_distance is not None:
            return self.slice_distance
        if self.training_spacing and len(self.training_spacing) == 3:
            return float(self.training_spacing[0])
        return None

    @property
    def uses_softmax(self) -> bool:
        """Softmax over background and classes (several classes); else one sigmoid channel."""
        return len(self.classes) > 1

    def to_json(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {
            "format_version": self.format_version,
            "architecture": {"name": self.architecture, "kwargs": self.kwargs},
            "context": self.context,
            "normalization": self.normalization.to_json(),
            "classes": [c.to_json() for c in self.classes],
        }
        if self.training_spacing is not None:
            data["training_spacing"] = list(self.training_spacing)
        if self.slice_distance is not None:
            data["slice_distance"] = self.slice_distance
        if self.depth_metrics:
            data["depth_metrics"] = {str(k): v for k, v in sorted(self.depth_metrics.items())}
        if self.recommended_depth is not None:
            data["recommended_depth"] = self.recommended_depth
        if self.training:
            data["training"] = self.training
        if self.temperature != 1.0:  # absent at 1.0: an uncalibrated checkpoint keeps its bytes (and its ONNX exports' binding)
            data["temperature"] = self.temperature
        if self.guidance is not None:
            data["role"], data["guidance"] = self.role, dict(self.guidance)
        return data

    def dumps(self) -> str:
        """The JSON text stored in the checkpoint header (keys sorted: the same metadata, the same bytes)."""
        return json.dumps(self.to_json(), sort_keys=True)

    def checked(self, source: str) -> "ModelMetadata":
        """This metadata as a checkpoint would give it back: validated as on loading (a :class:`UserError`
        naming ``source`` otherwise), so nothing is written or trained that could not be loaded."""
        return ModelMetadata.loads(self.dumps(), source)

    @staticmethod
    def from_json(data: Any, source: str = "checkpoint") -> "ModelMetadata":
        """Validated metadata from parsed JSON; a :class:`UserError` naming ``source`` otherwise."""
        return _validated_metadata(data, source)

    @staticmethod
    def loads(text: str, source: str = "checkpoint") -> "ModelMetadata":
        """Validated metadata from JSON text; a :class:`UserError` naming ``source`` otherwise."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError, RecursionError) as error:
            raise UserError(f"{source}: metadata is not valid JSON ({error})") from None
        return _validated_metadata(data, source)


def make_classes(names: List[str]) -> List[ClassInfo]:
    """Classes 1..N with default colours, from names given on the command line."""
    names = [n.strip() for n in names]
    return _validated_classes(
        [{"value": i, "name": n, "color": list(DEFAULT_COLORS[(i - 1) % len(DEFAULT_COLORS)])} for i, n in enumerate(names, 1)],
        "--classes",
    )


# --- validation -------------------------------------------------------------------------------------


def read_class_table(path: Path) -> List[ClassInfo]:
    """A JSON class table (a list of ``{"value", "name", "color", "terminology"}``, as
    ``Resources/Tools/prepare_training_data.py`` writes ``classes.json``), checked as a checkpoint's classes are."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"cannot read the class table {path}: {error}") from None
    return classes_from_json(data, f"class table {path}")


def classes_from_json(data: Any, source: str) -> List[ClassInfo]:
    """Class records from their JSON form, checked as a checkpoint's are (values, names, colours, terminology)."""
    return _validated_classes(data, source)


def _fail(source: str, message: str) -> UserError:
    return UserError(f"{source}: {message}")


def _is_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validated_normalization(data: Any, source: str = "--norm") -> Normalization:
    if not isinstance(data, dict) or data.get("kind") not in ("ct", "mr"):
        raise _fail(source, "normalization must be {'kind': 'ct', 'window': [lo, hi]} or {'kind': 'mr', 'percentiles': [lo, hi]}")
    key = "window" if data["kind"] == "ct" else "percentiles"
    pair = data.get(key)
    if not (isinstance(pair, list) and len(pair) == 2 and all(_is_number(v) for v in pair) and pair[0] < pair[1]):
        raise _fail(source, f"normalization {key} must be two increasing finite numbers, got {pair!r}")
    if key == "percentiles" and not (0 <= pair[0] and pair[1] <= 100):
        raise _fail(source, f"normalization percentiles must lie in [0, 100], got {pair!r}")
    if key == "window" and not (-CT_WINDOW_LIMIT <= pair[0] and pair[1] <= CT_WINDOW_LIMIT and pair[1] - pair[0] >= CT_WINDOW_MIN_WIDTH):
        raise _fail(
            source,
            f"normalization window {pair!r} cannot be a CT window: it must lie within ±{CT_WINDOW_LIMIT:g} HU and be at least "
            f"{CT_WINDOW_MIN_WIDTH:g} HU wide (e.g. [-1000, 1000])",
        )
    return Normalization(data["kind"], **{key: (float(pair[0]), float(pair[1]))})


def _validated_classes(data: Any, source: str) -> List[ClassInfo]:
    if not isinstance(data, list) or not data:
        raise _fail(source, "the class list is empty: a model needs at least one class")
    classes = []
    for index, item in enumerate(data):
        where = f"class #{index + 1}"
        if not isinstance(item, dict):
            raise _fail(source, f"{where} must be an object with value, name and color")
        value, name, color = item.get("value"), item.get("name"), item.get("color")
        if not _is_int(value) or not 1 <= value <= 65535:
            raise _fail(source, f"{where}: label value must be an integer in 1..65535, got {value!r}")
        if not isinstance(name, str) or not name.strip():
            raise _fail(source, f"{where}: name must be a non-empty string, got {name!r}")
        problem = text_problem(name)  # what a .seg.nrrd header can hold (a line break would inject header fields)
        if problem:
            raise _fail(source, f"{where}: name {name!r} {problem}"[:400])
        if not (isinstance(color, list) and len(color) == 3 and all(_is_number(c) and 0 <= c <= 1 for c in color)):
            raise _fail(source, f"{where} ({name}): color must be three numbers in [0, 1], got {color!r}")
        terminology = item.get("terminology")
        problem = None if terminology is None or terminology == {} else terminology_problem(terminology)
        if problem:
            raise _fail(source, f"{where} ({name}): terminology {problem}"[:400])
        canonical = canonical_terminology(terminology) if terminology else None  # as a reader of the .seg.nrrd gives it back
        classes.append(ClassInfo(value, name.strip(), tuple(float(c) for c in color), canonical))
    for attribute in ("name", "value"):
        seen = [getattr(c, attribute) for c in classes]
        duplicates = sorted({str(v) for v in seen if seen.count(v) > 1})
        if duplicates:
            raise _fail(source, f"duplicate class {attribute}(s): {', '.join(duplicates)}")
    return classes


def _validated_metadata(data: Any, source: str) -> ModelMetadata:
    if not isinstance(data, dict):
        raise _fail(source, "metadata must be a JSON object")
    version = data.get("format_version")
    if not _is_int(version):
        raise _fail(source, "metadata has no integer format_version: not a UNetSegmentation checkpoint")
    if version > FORMAT_VERSION:
        raise _fail(source, f"checkpoint format {version} is newer than this version of UNetSegmentation understands ({FORMAT_VERSION}); update the extension")
    for required in ("architecture", "context", "normalization", "classes"):
        if required not in data:
            raise _fail(source, f"metadata is missing the field {required!r}")
    architecture = data["architecture"]
    if not (isinstance(architecture, dict) and isinstance(architecture.get("name"), str) and isinstance(architecture.get("kwargs"), dict)):
        raise _fail(source, "metadata 'architecture' must be {'name': str, 'kwargs': {...}}")
    features = architecture["kwargs"].get("features")
    if features is not None and not (isinstance(features, list) and len(features) >= 2 and all(_is_int(f) and 1 <= f <= 65536 for f in features)):
        raise _fail(source, f"metadata architecture 'features' must be a list of two or more channel counts in 1..65536, got {features!r}"[:300])
    context = data["context"]
    if not _is_int(context) or not 0 <= context <= 16:
        raise _fail(source, f"metadata 'context' must be an integer in 0..16, got {context!r}")
    metadata = ModelMetadata(
        architecture=architecture["name"],
        kwargs=dict(architecture["kwargs"]),
        context=context,
        normalization=_validated_normalization(data["normalization"], source),
        classes=_validated_classes(data["classes"], source),
        format_version=version,
    )
    spacing = data.get("training_spacing")
    if spacing is not None:
        if not (isinstance(spacing, list) and len(spacing) in (2, 3) and all(_is_number(s) and s > 0 for s in spacing)):
            raise _fail(source, f"training_spacing must be 2 or 3 positive numbers, got {spacing!r}")
        metadata.training_spacing = [float(s) for s in spacing]
    distance = data.get("slice_distance")
    if distance is not None:
        if not (_is_number(distance) and 0 < distance <= 1000):
            raise _fail(source, f"slice_distance must be a positive number of mm (at most 1000), got {distance!r}")
        metadata.slice_distance = float(distance)
    metrics = data.get("depth_metrics", {})
    if not isinstance(metrics, dict):
        raise _fail(source, "depth_metrics must be an object keyed by depth")
    for key, values in metrics.items():
        if not (str(key).isascii() and str(key).isdigit() and isinstance(values, dict) and all(_is_number(v) for v in values.values())):
            raise _fail(source, f"depth_metrics[{key!r}] must map a depth to numbers")
        metadata.depth_metrics[int(key)] = {k: float(v) for k, v in values.items()}
    recommended = data.get("recommended_depth")
    if recommended is not None and not (_is_int(recommended) and recommended >= 1):
        raise _fail(source, f"recommended_depth must be a positive integer, got {recommended!r}")
    metadata.recommended_depth = recommended
    training = data.get("training", {})
    if not isinstance(training, dict):
        raise _fail(source, "'training' must be an object")
    metadata.training = training
    temperature = data.get("temperature", 1.0)
    low, high = TEMPERATURE_RANGE
    if not (_is_number(temperature) and low <= temperature <= high):
        raise _fail(source, f"temperature must be a number in [{low:g}, {high:g}], got {temperature!r}"[:300])
    metadata.temperature = float(temperature)
    role, guidance = data.get("role", "automatic"), data.get("guidance")
    if role not in ("automatic", "interactive") or (role == "interactive") != isinstance(guidance, dict):
        raise _fail(source, f"role must be 'automatic', or 'interactive' with a 'guidance' object, got role {role!r} and guidance {guidance!r}"[:300])
    metadata.guidance = guidance
    for name, expected in (("in_channels", metadata.in_channels), ("out_channels", metadata.out_channels)):
        given = metadata.kwargs.get(name)
        if given != expected:
            guided = f"+{INTERACTIVE_GUIDANCE_CHANNELS} (interactive)" if guidance is not None else ""
            what = f"context {context} needs 2*{context}+1{guided}" if name == "in_channels" else f"{len(metadata.classes)} class(es) need"
            raise _fail(source, f"class/channel mismatch: architecture {name}={given!r} but {what} = {expected}")
    return metadata
