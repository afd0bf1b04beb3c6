"""What a training or fine-tuning run lets the user choose: declared, defaulted and validated here only.

:class:`TrainOptions` is to ``unetseg train`` what :class:`~UNetSegmentationLib.inference.options.SegmentationOptions`
is to ``predict``: the CLI parser takes its defaults from here and builds the object with
:meth:`TrainOptions.from_namespace`; the Slicer panel writes the fine-tuning's command line with
:meth:`TrainOptions.to_arguments`, so a setting is spelt once from the panel's click to the engine's
run. Every bad value raises one :class:`UserError` naming the option, *before* torch or any file is
touched (a refused ``--train-slices 0-99999999999`` peaks at ~130 MB instead of being OOM-killed).
Torch-, numpy- and SimpleITK-free: the panel imports it in its GUI process; :meth:`TrainOptions.to_config`
imports the training stack only when a run is really made.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.grammar.axis_names import axis_name, parse_axis
from UNetSegmentationLib.grammar.class_lists import DEFAULT_OTHER_LABELS, OTHER_LABELS, parse_class_names, parse_label_map, parse_partial_classes
from UNetSegmentationLib.grammar.slice_ranges import check_slice_ranges
from UNetSegmentationLib.model.bundled import checkpoint_path

if TYPE_CHECKING:  # MONAI and torch: imported by to_config only
    from UNetSegmentationLib.training.config import TrainConfig

#: what ``--init`` changes when the user did not set it (a from-scratch run keeps the others). Chosen by
#: ``bench/finetune_demo.py --sweep`` (BENCHMARKS.md, "Training"). ``crop`` is the largest crop side: on
#: smaller slices the crop shrinks to them (training/adapt.py, measured by bench/small_volume_finetune.py)
FINE_TUNING_DEFAULTS: Dict[str, Any] = {"epochs": 4, "steps_per_epoch": 25, "lr": 3e-4, "batch_size": 8, "crop": (128, 128)}
#: ... and a run from scratch
TRAINING_DEFAULTS: Dict[str, Any] = {"epochs": 50, "steps_per_epoch": 50, "lr": 1e-3, "batch_size": 8, "crop": (96, 96)}
#: the share of a volume's slices held out for validation must stay below this: holding out half or
#: more leaves fewer slices to learn from than to measure on. One rule for ``--val-slices`` and the panel
HOLD_OUT_LIMIT = 0.5
#: the panel's hold-out share when the whole segmentation is the user's truth
DEFAULT_HOLD_OUT = 0.2
DEFAULT_VAL_BLOCKS = 3
NATIVE_SPACING = "native"
SCHEDULES, OPTIMIZERS, LOSSES = ("poly", "cosine", "constant"), ("adamw", "adam"), ("auto", "unetplusplus", "unet3plus", "dice-ce")
DEFAULT_ARCHITECTURE, DEFAULT_CONTEXT, DEFAULT_NORM = "unetplusplus", 1, "ct:-1000,1000"
MAX_CONTEXT = 16
#: ``--interactive``: the kinds of interactive network (training/interactive_trainer.py): ``object``, class-agnostic
#: (the object under the clicks), or ``joint``, DeepEdit's one network for the automatic and interactive roles
INTERACTIVE_MODES = ("object", "joint")
#: ``--no-guidance``'s default per kind: the share of samples trained without any guidance (a class-agnostic network
#: need only learn that no guidance means no object; DeepEdit trains a quarter of its steps in the automatic role)
NO_GUIDANCE_DEFAULTS = {"object": 0.1, "joint": 0.25}
#: ``--pseudo-objects``' default: the share of a class-agnostic network's samples whose object is the intensity-
#: homogeneous region around a random point instead of a labelled structure (training/pseudo_objects.py). Off: measured
#: leaving one patient out (BENCHMARKS.md, *Longer training and pseudo-objects*), they took the held-out liver from
#: 0.07 to 0.66 after 5 clicks but cost the kidneys, lungs and aorta more, and no share beat none on the mean
PSEUDO_OBJECTS_DEFAULT = 0.0


def check_hold_out(share: Optional[float], option: str = "--val-slices") -> Optional[float]:
    """The hold-out share, or None: a number in (0, :data:`HOLD_OUT_LIMIT`)."""
    if share is None:
        return None
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < float(share) < HOLD_OUT_LIMIT:
        raise UserError(f"{option} must be a share of the slices above 0 and below {HOLD_OUT_LIMIT:g} (e.g. {DEFAULT_HOLD_OUT:g}); got {share!r}")
    return float(share)


def parse_corrected_classes(text: Optional[str]) -> Optional[List[str]]:
    """``--corrected-classes``: the class names the user changed, recorded in the model card (None: not
    known, the card names the classes the labels held); ``none``: the user changed none."""
    if text is None:
        return None
    if str(text).strip().lower() == "none":
        return []
    return parse_class_names(text, option="--corrected-classes")


def parse_crop(text: Union[str, Sequence[int], None]) -> Optional[Tuple[int, int]]:
    """``--crop N`` or ``ROWS,COLUMNS`` → ``(rows, columns)``; None: the default, fitted to the slices."""
    if text is None or text == "":
        return None
    parts = [str(v).strip() for v in (text.split(",") if isinstance(text, str) else text)]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isascii() and p.isdecimal() and len(p) <= 5 and int(p) > 0 for p in parts):
        raise UserError(f"--crop must be one size or ROWS,COLUMNS in pixels (positive, e.g. 96 or 64,96); got {text!r}")
    return int(parts[0]), int(parts[1])


def parse_spacing(text: Optional[str]) -> Union[None, str, List[float]]:
    """``--spacing``: ``native``, ``MM`` or ``ROW,COL`` (mm, in (0, 100]) → ``"native"`` or ``[row, col]``; None stays None."""
    if text is None:
        return None
    if str(text).strip().lower() == NATIVE_SPACING:
        return NATIVE_SPACING
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(math.isfinite(v) and 0 < v <= 100 for v in values):
        raise UserError(f"--spacing must be 'native', one spacing in mm or ROW,COLUMN mm (each in (0, 100]), e.g. 0.8 or 0.8,0.8; got {text!r}")
    return values


def _positive(value: Any, option: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{option} must be a positive whole number, got {value!r}")


def _from_zero(value: Any, option: str, allow_none: bool = True, what: str = "a whole number") -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{option} must be {what} from 0, got {value!r}")


def _within(value: Any, option: str, low: float, high: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value <= high):
        raise UserError(f"{option} must be {what} in [{low:g}, {high:g}], got {value!r}")


#: ``unetseg train`` options that take a value: (option, field); written by :meth:`TrainOptions.to_arguments`
_VALUED_OPTIONS = (
    ("--datalist", "datalist"), ("--data-root", "data_root"), ("--images", "images"), ("--labels", "labels"),
    ("--image", "image"), ("--label", "label"), ("--val-images", "val_images"), ("--val-labels", "val_labels"), ("--fold", "fold"),
    ("--val-slices", "val_slices"), ("--val-blocks", "val_blocks"), ("--val-gap", "val_gap"),
    ("--other-labels", "other_labels"), ("--label-map", "label_map"),
    ("--arch", "arch"), ("--features", "features"), ("--context", "context"), ("--norm", "norm"), ("--classes", "classes"), ("--spacing", "spacing"),
    ("--init", "init"), ("--train-slices", "train_slices"), ("--partial-classes", "partial_classes"), ("--corrected-classes", "corrected_classes"),
    ("--epochs", "epochs"), ("--steps-per-epoch", "steps_per_epoch"), ("--batch-size", "batch_size"), ("--crop", "crop"),
    ("--optimizer", "optimizer"), ("--lr", "lr"), ("--weight-decay", "weight_decay"), ("--schedule", "schedule"), ("--loss", "loss"),
    ("--foreground", "foreground"), ("--flip", "flip"), ("--rotate", "rotate"), ("--scale", "scale"), ("--intensity", "intensity"),
    ("--augment-prob", "augment_prob"), ("--contrast", "contrast"), ("--noise", "noise"),
    ("--low-resolution", "low_resolution"), ("--thickness", "thickness"), ("--cut", "cut"), ("--slice-distance", "slice_distance"), ("--seed", "seed"), ("--device", "device"), ("--threads", "threads"), ("--axis", "axis"),
    ("--val-every", "val_every"), ("--depth-tolerance", "depth_tolerance"), ("--log", "log"), ("--state", "state"), ("--stop-after", "stop_after"),
    ("--interactive", "interactive"), ("--no-guidance", "no_guidance"), ("--pseudo-objects", "pseudo_objects"),
)
#: flags: (option, field, the field's value that writes the flag)
_FLAGS = (("--freeze-encoder", "freeze_encoder", True), ("--no-amp", "amp", False), ("--resume", "resume", True), ("--overwrite", "overwrite", True))
#: what ``--init`` takes from its checkpoint (so these are refused beside it)
_FROM_INIT = ("arch", "features", "classes", "context", "norm", "spacing", "slice_distance")


@dataclass(frozen=True)
class TrainOptions:
    """What ``unetseg train`` and the panel's "Improve the model" let the user choose; checked on construction.

    Unset values (None) take :data:`TRAINING_DEFAULTS`, or :data:`FINE_TUNING_DEFAULTS` with ``init``.
    The panel's fine-tuning is ``TrainOptions(output, image=..., label=..., init=base, train_slices="12-18,40"
    or val_slices=0.2, label_map="1:ribs", partial_classes=None, epochs=..., steps_per_epoch=...)`` and
    its command line ``options.to_arguments()``.
    """

    output: Path
    # data
    image: Optional[Path] = None
    label: Optional[Path] = None
    datalist: Optional[Path] = None
    data_root: Optional[Path] = None
    images: Optional[Path] = None
    labels: Optional[Path] = None
    val_images: Optional[Path] = None
    val_labels: Optional[Path] = None
    fold: Optional[int] = None  # validate on the datalist's cases of this fold, train on the others
    val_slices: Optional[float] = None  # the share of every training volume's slices held out (< HOLD_OUT_LIMIT)
    val_blocks: int = DEFAULT_VAL_BLOCKS  # spread along the volume; fewer where the volume is short (training/adapt.py)
    val_gap: Optional[int] = None  # None: the slices the 2.5D neighbours reach
    other_labels: str = DEFAULT_OTHER_LABELS
    label_map: Optional[str] = None  # grammar/class_lists text: "3:left lung,7:ribs"
    # model (from scratch; --init takes them from its checkpoint)
    arch: Optional[str] = None
    features: Optional[str] = None
    context: Optional[int] = None
    norm: Optional[str] = None
    classes: Optional[str] = None
    spacing: Optional[str] = None
    slice_distance: Optional[float] = None  # mm between a slice and its 2.5D neighbours; None: the median slice spacing
    # fine-tuning
    init: Optional[Path] = None
    train_slices: Optional[str] = None  # grammar/slice_ranges text: "12-18,40"
    partial_classes: Optional[str] = None  # None: auto
    corrected_classes: Optional[str] = None  # the classes the user changed (the panel measures them), for the model card; "none": none
    freeze_encoder: bool = False
    # training
    epochs: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    batch_size: Optional[int] = None
    crop: Optional[Tuple[int, int]] = None  # None: the default, no larger than the training slices
    optimizer: str = "adamw"
    lr: Optional[float] = None
    weight_decay: float = 1e-4
    schedule: str = "poly"
    loss: str = "auto"
    foreground: float = 0.5
    flip: float = 0.0
    rotate: float = 15.0
    scale: float = 0.1
    intensity: float = 0.1
    augment_prob: float = 0.5
    contrast: float = 0.0
    noise: float = 0.0
    low_resolution: float = 0.0
    thickness: float = 0.0
    cut: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    threads: Optional[int] = None
    axis: Optional[int] = None
    val_every: int = 1
    depth_tolerance: float = 0.01
    # interactive refinement (issue 26): a network guided by clicks, trained by simulation
    interactive: Optional[str] = None  # one of INTERACTIVE_MODES; None: an automatic network
    no_guidance: Optional[float] = None  # the share of samples without guidance; None: NO_GUIDANCE_DEFAULTS
    pseudo_objects: Optional[float] = None  # ``object`` only: the share of samples with a pseudo-object; None: PSEUDO_OBJECTS_DEFAULT
    # outputs and runs
    log: Optional[Path] = None
    state: Optional[Path] = None
    resume: bool = False
    stop_after: Optional[int] = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Normalise the text forms and refuse every bad value (one :class:`UserError`); nothing is read."""
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen: normalised once, here)
        for name in ("output", "image", "label", "datalist", "data_root", "images", "labels", "val_images", "val_labels", "init", "log", "state"):
            value = getattr(self, name)
            set_(name, None if value in (None, "") else checkpoint_path(value) if name == "init" else Path(value))
        if self.output is None:
            raise UserError("give the checkpoint to write, e.g. tuned.safetensors")
        for name in ("label_map", "train_slices", "partial_classes", "corrected_classes", "classes", "features", "norm", "spacing"):
            value = getattr(self, name)
            set_(name, None if value is None or not str(value).strip() else str(value).strip())
        set_("axis", parse_axis(self.axis))
        set_("crop", parse_crop(self.crop))
        set_("val_slices", check_hold_out(self.val_slices))
        if self.init is not None:
            given = [f"--{name.replace('_', '-')}" for name in _FROM_INIT if getattr(self, name) is not None]
            if given:
                raise UserError(f"--init takes the architecture, features, classes, context, normalisation and spacing from the checkpoint; leave out {', '.join(given)}")
        elif self.freeze_encoder or self.corrected_classes is not None:
            raise UserError(f"{'--freeze-encoder' if self.freeze_encoder else '--corrected-classes'} fine-tunes a checkpoint: it needs --init")
        self._check_text_options()
        self._check_numbers()

    def _check_text_options(self) -> None:
        """The grammars (slices, label map, classes), the architecture, features, norm, spacing and choices."""
        from UNetSegmentationLib.model.metadata import Normalization
        from UNetSegmentationLib.networks.registry import get_architecture, resolve_features

        if self.train_slices is not None:
            check_slice_ranges(self.train_slices, None, option="--train-slices")  # bounded; each volume checks it again
        if self.label_map is not None:
            parse_label_map(self.label_map)
        parse_class_names(self.classes)
        parse_partial_classes(self.partial_classes)
        parse_corrected_classes(self.corrected_classes)
        architecture = get_architecture(self.arch or DEFAULT_ARCHITECTURE)
        if self.features is not None:
            resolve_features(architecture, self.features)
        Normalization.parse(self.norm or DEFAULT_NORM)
        parse_spacing(self.spacing)
        for value, choices, option in ((self.other_labels, OTHER_LABELS, "--other-labels"), (self.optimizer, OPTIMIZERS, "--optimizer"),
                                       (self.schedule, SCHEDULES, "--schedule"), (self.loss, LOSSES, "--loss")):
            if value not in choices:
                raise UserError(f"{option} must be one of {', '.join(choices)}; got {value!r}")

    def _check_numbers(self) -> None:
        for name in ("epochs", "steps_per_epoch", "batch_size", "threads", "stop_after"):
            _positive(getattr(self, name), f"--{name.replace('_', '-')}")
        if self.fold is not None:  # the datalist's cases of that fold validate (training/cases.split_fold)
            _from_zero(self.fold, "--fold")
            if self.datalist is None or self.val_images is not None:
                raise UserError(f"--fold {self.fold} picks the validation cases of a --datalist by their 'fold'; give a --datalist and leave out --val-images")
        _from_zero(self.val_gap, "--val-gap", what="a whole number of slices")
        _positive(self.val_blocks, "--val-blocks", allow_none=False)
        _positive(self.val_every, "--val-every", allow_none=False)
        if self.context is not None:
            _within(self.context, "--context", 0, MAX_CONTEXT, "a whole number of slices")
        if self.slice_distance is not None:
            _within(self.slice_distance, "--slice-distance", 0.1, 100, "a distance in mm")
        for name in ("foreground", "flip", "augment_prob", "cut"):
            _within(getattr(self, name), f"--{name.replace('_', '-')}", 0, 1, "a probability")
        for name, high in (("rotate", 180), ("scale", 0.9), ("intensity", 10), ("contrast", 0.9), ("noise", 1), ("low_resolution", 0.9), ("thickness", 1), ("depth_tolerance", 1), ("weight_decay", 1)):
            _within(getattr(self, name), f"--{name.replace('_', '-')}", 0, high, "a number")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise UserError(f"--lr must be a learning rate in (0, 1], got {self.lr!r}")
        _from_zero(self.seed, "--seed", allow_none=False)
        self._check_interactive()

    def _check_interactive(self) -> None:
        if self.interactive is None:
            if self.no_guidance is not None:
                raise UserError("--no-guidance is the share of an interactive network's samples without guidance: it needs --interactive")
            if self.pseudo_objects is not None:
                raise UserError("--pseudo-objects is the share of a class-agnostic interactive network's samples: it needs --interactive object")
            return
        if self.interactive not in INTERACTIVE_MODES:
            raise UserError(f"--interactive must be one of {', '.join(INTERACTIVE_MODES)}; got {self.interactive!r}")
        if self.init is not None:
            raise UserError("--interactive trains a new network guided by clicks; it cannot start from --init")
        if self.no_guidance is not None:
            _within(self.no_guidance, "--no-guidance", 0, 1, "a share")
        if self.pseudo_objects is not None:
            if self.interactive != "object":
                raise UserError("--pseudo-objects gives a class-agnostic network objects no one labelled; a joint network's targets are its classes: "
                                "use it with --interactive object")
            _within(self.pseudo_objects, "--pseudo-objects", 0, 1, "a share")

    # -- what the run uses --

    @property
    def defaults(self) -> Dict[str, Any]:
        """The defaults of this kind of run: fine-tuning's with ``init``, else training's."""
        return FINE_TUNING_DEFAULTS if self.init is not None else TRAINING_DEFAULTS

    def effective(self, name: str) -> Any:
        """``epochs``, ``steps_per_epoch``, ``lr``, ``batch_size`` or ``crop`` as the run uses it (the crop
        before it is fitted to the slices)."""
        value = getattr(self, name)
        return self.defaults[name] if value is None else value

    def to_config(self) -> "TrainConfig":
        """The run's :class:`~UNetSegmentationLib.training.config.TrainConfig` (imports MONAI, hence torch)."""
        from UNetSegmentationLib.networks.registry import get_architecture, resolve_features
        from UNetSegmentationLib.training.config import TrainConfig
        from UNetSegmentationLib.training.sampling import AugmentOptions

        architecture = get_architecture(self.arch or DEFAULT_ARCHITECTURE)
        return TrainConfig(
            arch=architecture.name, features=resolve_features(architecture, self.features) if self.features else None,
            context=DEFAULT_CONTEXT if self.context is None else self.context, norm=self.norm or DEFAULT_NORM,
            **self._classes(), init=None if self.init is None else str(self.init), other_labels=self.other_labels,
            epochs=self.effective("epochs"), steps_per_epoch=self.effective("steps_per_epoch"), batch_size=self.effective("batch_size"),
            crop=self.effective("crop"), crop_given=self.crop is not None,
            optimizer=self.optimizer, lr=self.effective("lr"), weight_decay=self.weight_decay, schedule=self.schedule, loss=self.loss,
            foreground=self.foreground,
            augment=AugmentOptions(flip=self.flip, rotate=self.rotate, scale=self.scale, intensity=self.intensity, prob=self.augment_prob,
                                   contrast=self.contrast, noise=self.noise, low_resolution=self.low_resolution, thickness=self.thickness, cut=self.cut),
            slice_distance=self.slice_distance,
            seed=self.seed, device=self.device, amp=self.amp,
            spacing=parse_spacing(self.spacing), label_map=parse_label_map(self.label_map) if self.label_map else None,
            train_slices=self.train_slices, partial_classes=parse_partial_classes(self.partial_classes),
            corrected_classes=parse_corrected_classes(self.corrected_classes),
            freeze_encoder=self.freeze_encoder, freeze_norm=self.init is not None,
            val_every=self.val_every, val_slices=self.val_slices, val_blocks=self.val_blocks, val_gap=self.val_gap,
            depth_tolerance=self.depth_tolerance, axis=self.axis, threads=self.threads,
            interactive=self.interactive,
            no_guidance=NO_GUIDANCE_DEFAULTS.get(self.interactive, 0.0) if self.no_guidance is None else float(self.no_guidance),
            pseudo_objects=(PSEUDO_OBJECTS_DEFAULT if self.interactive == "object" else 0.0) if self.pseudo_objects is None else float(self.pseudo_objects),
            stop_after=self.stop_after, log=None if self.log is None else str(self.log), state=None if self.state is None else str(self.state),
        )

    def _classes(self) -> Dict[str, Any]:
        """``classes`` (names) and ``class_table`` of the run: ``--classes TABLE.json`` reads a class table
        (values, names, colours, terminology: training-data/classes.json), anything else is a list of names."""
        if self.classes is not None and self.classes.lower().endswith(".json"):
            from UNetSegmentationLib.model.metadata import read_class_table

            table = read_class_table(Path(self.classes))
            return {"classes": [c.name for c in table], "class_table": [c.to_json() for c in table]}
        return {"classes": parse_class_names(self.classes), "class_table": None}

    # -- command lines --

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "TrainOptions":
        """The options of a parsed ``unetseg train`` command line (see ``cli/train.py``)."""
        names = {f.name for f in fields(cls)} - {"amp"}
        return cls(**{name: getattr(args, name) for name in names if hasattr(args, name)}, amp=not getattr(args, "no_amp", False))

    def to_arguments(self) -> List[str]:
        """The ``unetseg train`` command line of this run (the process runner adds ``--progress json``):
        only the settings that differ from the defaults, then the output."""
        arguments = ["train"]
        for option, name in _VALUED_OPTIONS:
            value = getattr(self, name)
            if value is not None and value != DEFAULT_VALUES[name]:
                arguments += [option, _text(name, value)]
        arguments += [option for option, name, on in _FLAGS if getattr(self, name) == on]
        return arguments + [str(self.output)]


def _text(name: str, value: Any) -> str:
    if name == "axis":
        return axis_name(value)
    if name == "crop":
        return f"{value[0]},{value[1]}"
    if isinstance(value, float):
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    return str(value)


#: the declared default of every field (what to_arguments leaves out)
DEFAULT_VALUES = {f.name: f.default for f in fields(TrainOptions)}
