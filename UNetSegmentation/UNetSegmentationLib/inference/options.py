"""What a segmentation run lets the user choose: declared, defaulted and validated here only.

:class:`SegmentationOptions` is the one options object of ``unetseg predict``. The CLI parser takes
its defaults and choices from here, builds the object with :meth:`SegmentationOptions.from_namespace`,
and the Slicer panel writes the child's command line with :meth:`SegmentationOptions.to_arguments`,
so a setting is spelt once from the panel's click to the engine's run. Torch-, numpy- and
SimpleITK-free: the Slicer panel imports it in its GUI process.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from UNetSegmentationLib.backends.plan import BACKENDS, PRECISIONS, ExecutionRequest, check_positive, parse_choice
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.compression import compress_text, parse_compress
# the axis grammar lives in grammar/axis_names.py; re-exported for the options' users (parsers, the panel)
from UNetSegmentationLib.grammar.axis_names import AUTO, AXIS_CHOICES, AXIS_NAMES, axis_name, parse_axis  # noqa: F401
from UNetSegmentationLib.model.depth import Depth, parse_depth

#: slices per network call that ``predict`` gathers (the CPU path computes them one at a time)
DEFAULT_BATCH_SIZE = 4
#: ``--spacing``: ``model`` segments each slice at the model's in-plane spacing (resampled there and
#: back) with its 2.5D neighbours at the model's slice distance; ``native`` runs on the voxel grid as given
SPACING_MODEL, SPACING_NATIVE = "model", "native"
SPACING_CHOICES = (SPACING_MODEL, SPACING_NATIVE)


#: ``unetseg predict`` options that take a value: (option, field, how the value is written)
_VALUED_OPTIONS = (
    ("--depth", "depth", str),
    ("--device", "device", str),
    ("--batch-size", "batch_size", str),
    ("--axis", "axis", axis_name),
    ("--probabilities", "probabilities", str),
    ("--backend", "backend", str),
    ("--precision", "precision", str),
    ("--threads", "threads", str),
    ("--slice-workers", "slice_workers", str),
    ("--spacing", "spacing", str),
    ("--review-list", "review_list", str),
    ("--compress", "compress", compress_text),
)


@dataclass(frozen=True)
class SegmentationOptions:
    """What ``unetseg predict`` and the Slicer module let the user choose; checked on construction.

    Text forms are accepted and normalised: ``depth="2"`` becomes 2, ``axis="k"`` becomes 2,
    ``backend="TORCH"`` becomes ``"torch"``. Every bad value raises one :class:`UserError` that
    names the command-line option.
    """

    depth: Depth = None  # None: the checkpoint's recommended depth (else the full network); "accurate": mean of heads
    device: str = AUTO  # auto (CUDA when available), cpu, cuda, cuda:N
    batch_size: int = DEFAULT_BATCH_SIZE
    axis: Optional[int] = None  # image axis to slice along; None: the one closest to superior-inferior
    probabilities: Optional[Path] = None  # also write the probability of the chosen label per voxel here
    overwrite: bool = False
    largest_component: bool = False  # keep each label's largest 3D connected component
    classification_guidance: bool = True  # UNet 3+: empty result for slices its classifier judges empty
    backend: str = AUTO  # auto, torch, onnx: resolved by backends.plan.plan_execution
    precision: str = AUTO  # auto, fp32, bf16, int8: resolved by backends.plan.plan_execution
    threads: Optional[int] = None  # CPU threads in all; None: one per core
    slice_workers: Optional[int] = None  # CPU: slices computed at once, threads // workers each; None: the plan's default
    spacing: str = SPACING_MODEL  # model: at the model's spacing and slice distance; native: on the input's voxel grid
    crop: bool = True  # run the network only on the body's bounding box (inference/body.py)
    review_list: Optional[Path] = None  # write every slice ranked by uncertainty here (JSON or CSV)
    compress: Optional[int] = None  # gzip level of NRRD outputs: None the measured one per output, 0 none (io/compression.py)

    def __post_init__(self) -> None:
        for option, value, example in (("--probabilities", self.probabilities, "confidence.nrrd"), ("--review-list", self.review_list, "review.csv")):
            if isinstance(value, str) and value.endswith(("/", os.sep)):  # Path() would drop the '/'
                raise UserError(f"{option} {value} ends in '{value[-1]}', so it names a folder; give a file name, e.g. {Path(value) / example}")
        # frozen: normalised values are set through object.__setattr__, once, here
        normalised = {
            "depth": parse_depth(self.depth) if isinstance(self.depth, str) else self.depth,
            "axis": parse_axis(self.axis),
            "device": self.device or AUTO,
            "probabilities": Path(self.probabilities) if self.probabilities not in (None, "") else None,
            "review_list": Path(self.review_list) if self.review_list not in (None, "") else None,
            "spacing": parse_choice(self.spacing or SPACING_MODEL, SPACING_CHOICES, "--spacing"),
            "backend": parse_choice(self.backend, BACKENDS, "--backend"),
            "precision": parse_choice(self.precision, PRECISIONS, "--precision"),
            "compress": parse_compress(self.compress),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)
        check_positive(self.batch_size, "--batch-size")
        for value, option in ((self.threads, "--threads"), (self.slice_workers, "--slice-workers")):
            if value is not None:
                check_positive(value, option)

    def execution_request(self) -> ExecutionRequest:
        """The device, backend, precision, threads and batch size asked for (resolved by ``plan_execution``)."""
        return ExecutionRequest(self.device, self.backend, self.precision, self.threads, self.slice_workers, self.batch_size)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "SegmentationOptions":
        """The options of a parsed ``unetseg predict`` command line (see ``cli/predict.py``)."""
        return cls(
            depth=args.depth,
            device=args.device,
            batch_size=args.batch_size,
            axis=args.axis,
            probabilities=args.probabilities,
            overwrite=args.overwrite,
            largest_component=args.largest_component,
            classification_guidance=not args.no_cgm,
            backend=args.backend,
            precision=args.precision,
            threads=args.threads,
            slice_workers=args.slice_workers,
            spacing=getattr(args, "spacing", SPACING_MODEL),
            crop=not getattr(args, "no_crop", False),
            review_list=getattr(args, "review_list", None),
            compress=getattr(args, "compress", None),
        )

    def to_arguments(self, input_path, output_path, checkpoint, extra: Sequence[str] = ()) -> List[str]:
        """The ``unetseg predict`` command line of this run (the process runner adds ``--progress json``).

        Only settings that differ from the defaults are written; ``extra`` (e.g. ``--arch`` and
        ``--classes`` for a plain PyTorch file) goes before the input and output paths.
        """
        arguments = ["predict", "--checkpoint", str(checkpoint)]
        for option, name, text in _VALUED_OPTIONS:
            value = getattr(self, name)
            if value != getattr(DEFAULTS, name):
                arguments += [option, text(value)]
        flags = (("--overwrite", self.overwrite), ("--largest-component", self.largest_component), ("--no-cgm", not self.classification_guidance), ("--no-crop", not self.crop))
        arguments += [option for option, on in flags if on]
        return arguments + list(extra) + [str(input_path), str(output_path)]


#: every default of a run, for parsers and panels (which must not repeat them)
DEFAULTS = SegmentationOptions()
