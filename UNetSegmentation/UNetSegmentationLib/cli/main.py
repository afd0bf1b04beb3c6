"""``unetseg``: the command line of the engine.

Every command exits 0 on success and, on a problem with its input, prints one line
``unetseg: error: <what is wrong>`` (or a JSON ``error`` event with ``--progress json``) and exits 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import List, Optional

from UNetSegmentationLib.cli import training as training_commands
from UNetSegmentationLib.errors import EXIT_CANCELLED, EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, UserError
from UNetSegmentationLib.networks.registry import ARCHITECTURES


class Cancelled(BaseException):
    """Raised in the main thread on SIGTERM so that ``finally`` blocks remove temporary files."""


def _on_terminate(signum, frame):  # pragma: no cover - exercised through the runner tests
    raise Cancelled(f"terminated by signal {signum}")


# --- shared options ------------------------------------------------------------------------------


def _add_model_options(parser: argparse.ArgumentParser, for_plain_torch: bool) -> None:
    """Architecture and metadata flags: required for ``create``, for plain .pt files in ``predict``."""
    title = "model (for a plain .pt/.pth checkpoint, which has no metadata)" if for_plain_torch else "model"
    group = parser.add_argument_group(title)
    group.add_argument("--arch", choices=sorted(ARCHITECTURES), required=not for_plain_torch, help="architecture (see 'unetseg archs')")
    group.add_argument("--classes", required=not for_plain_torch, help="foreground class names, comma-separated, label values 1..N")
    group.add_argument("--context", type=int, default=1, help="neighbour slices on each side: 2c+1 input channels (default 1)")
    group.add_argument("--features", help="channels per level, e.g. 32,64,128,256,512, or a preset: paper, wide")
    group.add_argument("--norm", default="ct:-1000,1000", help="intensity normalisation: ct:LO,HI (HU window) or mr[:PLO,PHI] (default ct:-1000,1000)")


def _metadata_from_options(args: argparse.Namespace):
    from UNetSegmentationLib.model.metadata import ModelMetadata, Normalization, make_classes, out_channels_for
    from UNetSegmentationLib.networks.registry import get_architecture, resolve_features

    architecture = get_architecture(args.arch)
    if not 0 <= args.context <= 16:
        raise UserError(f"--context must be in 0..16, got {args.context}")
    names = [n for n in (args.classes or "").split(",")]
    if not args.classes or any(not n.strip() for n in names):
        raise UserError("--classes needs one or more non-empty names separated by commas, e.g. --classes liver or --classes 'left lung,right lung'")
    classes = make_classes(names)
    kwargs = dict(architecture.default_kwargs)
    if args.features:
        kwargs["features"] = resolve_features(architecture, args.features)
    kwargs.update(in_channels=2 * args.context + 1, out_channels=out_channels_for(len(classes)))
    return ModelMetadata(
        architecture=architecture.name,
        kwargs=kwargs,
        context=args.context,
        normalization=Normalization.parse(args.norm),
        classes=classes,
    )


# --- commands ------------------------------------------------------------------------------------


def command_archs(args: argparse.Namespace) -> int:
    rows = [{"name": a.name, "title": a.title, "paper": a.paper, "summary": a.summary, "supports": a.supports()} for a in ARCHITECTURES.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        supports = row["supports"]
        features = []
        if supports["deep_supervision"]:
            features.append("deep supervision")
        if supports["prune_depths"]:
            features.append("prune depths " + ",".join(f"L{d}" for d in supports["prune_depths"]) + " + accurate")
        if supports["classification_head"]:
            features.append("classification-guided module")
        presets = ", ".join(f"{k}={'/'.join(map(str, v))}" for k, v in supports["feature_presets"].items())
        print(f"{row['name']:<14} {row['title']} — {row['summary']}")
        print(f"{'':<14} paper: {row['paper']}")
        print(f"{'':<14} supports: {', '.join(features) or 'single output'}; features: {presets or '-'}")
    return 0


def command_create(args: argparse.Namespace) -> int:
    from UNetSegmentationLib.model.checkpoint import create_checkpoint
    from UNetSegmentationLib.io.outputs import check_output_path

    metadata = _metadata_from_options(args)
    check_output_path(Path(args.output), args.overwrite, what="checkpoint", extensions=(".safetensors",))
    model = create_checkpoint(args.output, metadata, seed=args.seed, overwrite=args.overwrite)
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output}: untrained {metadata.architecture}, {count / 1e6:.2f}M parameters, classes {', '.join(c.name for c in metadata.classes)}", file=sys.stderr)
    return 0


def _parameter_counts(checkpoint) -> dict:
    from UNetSegmentationLib.model.checkpoint import build_model

    model = build_model(checkpoint)
    counts = {"total": sum(p.numel() for p in model.parameters())}
    if hasattr(model, "parameter_count") and hasattr(model, "depths"):
        counts["per_depth"] = {str(d): model.parameter_count(d) for d in model.depths}
    return counts


def command_info(args: argparse.Namespace) -> int:
    from UNetSegmentationLib.model.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(args.checkpoint, _metadata_from_options(args) if args.arch else None)
    metadata = checkpoint.metadata
    info = {"path": str(checkpoint.path), "metadata": metadata.to_json(), "parameters": _parameter_counts(checkpoint)}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    kwargs = {k: v for k, v in metadata.kwargs.items() if k not in ("in_channels", "out_channels")}
    print(f"checkpoint     {checkpoint.path}")
    print(f"architecture   {metadata.architecture} {json.dumps(kwargs)}")
    print(f"input          {metadata.in_channels} channel(s): slice ± {metadata.context}")
    print(f"normalisation  {json.dumps(metadata.normalization.to_json())}")
    output = "sigmoid, threshold 0.5" if not metadata.uses_softmax else f"softmax over background + {len(metadata.classes)} classes"
    print(f"output         {output}")
    for c in metadata.classes:
        colour = "#%02x%02x%02x" % tuple(round(255 * v) for v in c.color)
        print(f"  {c.value:>3}  {c.name:<30} {colour}{'  (terminology)' if c.terminology else ''}")
    if metadata.training_spacing:
        print(f"training spacing {' x '.join(f'{s:g}' for s in metadata.training_spacing)} mm")
    parameters = info["parameters"]
    print(f"parameters     {parameters['total'] / 1e6:.3f}M")
    for depth, count in parameters.get("per_depth", {}).items():
        metrics = metadata.depth_metrics.get(int(depth), {})
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        mark = "  (recommended)" if metadata.recommended_depth == int(depth) else ""
        print(f"  L{depth}  {count / 1e6:.3f}M  {shown}{mark}")
    return 0


def command_predict(args: argparse.Namespace) -> int:
    from UNetSegmentationLib.inference.options import PredictionOptions
    from UNetSegmentationLib.inference.predict_file import predict_file
    from UNetSegmentationLib.model.depth import parse_depth
    from UNetSegmentationLib.inference.slicing import parse_axis

    options = PredictionOptions(
        depth=parse_depth(args.depth),
        device=args.device,
        batch_size=args.batch_size,
        axis=parse_axis(args.axis),
        probabilities=Path(args.probabilities) if args.probabilities else None,
        overwrite=args.overwrite,
        largest_component=args.largest_component,
        classification_guidance=not args.no_cgm,
        backend=args.backend,
        precision=args.precision,
        threads=args.threads,
        slice_workers=args.slice_workers,
    )
    plain_metadata = _metadata_from_options(args) if args.arch else None
    predict_file(args.input, args.output, args.checkpoint, options, args.reporter, plain_metadata)
    return 0


def command_demo(args: argparse.Namespace) -> int:
    from UNetSegmentationLib.cli.demo import run_demo

    return run_demo(Path(args.output_dir), args.reporter)


# --- parser and entry point ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unetseg", description="U-Net family 2.5D segmentation of CT and MR volumes.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    archs = commands.add_parser("archs", help="list architectures and what each supports")
    archs.add_argument("--json", action="store_true", help="machine-readable output")
    archs.set_defaults(run=command_archs)

    create = commands.add_parser("create", help="write an untrained checkpoint (the start for training; used by tests)")
    _add_model_options(create, for_plain_torch=False)
    create.add_argument("--seed", type=int, default=0, help="random seed of the initial weights")
    create.add_argument("--overwrite", action="store_true", help="replace an existing file")
    create.add_argument("output", metavar="OUT.safetensors")
    create.set_defaults(run=command_create)

    info = commands.add_parser("info", help="show a checkpoint's metadata and parameter counts")
    info.add_argument("checkpoint", metavar="CKPT")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    _add_model_options(info, for_plain_torch=True)
    info.set_defaults(run=command_info)

    predict = commands.add_parser("predict", help="segment a volume")
    predict.add_argument("--checkpoint", required=True, metavar="CKPT", help=".safetensors checkpoint (or a .pt/.pth state dict with --arch ...)")
    predict.add_argument("--depth", help="UNet++: prune depth 1..4 (default: the checkpoint's recommended depth) or 'accurate' (mean of all heads)")
    predict.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    predict.add_argument("--batch-size", type=int, default=4, help="slices per network call (default 4)")
    predict.add_argument("--axis", default="auto", help="image axis to slice along: auto (closest to superior-inferior), i, j or k")
    predict.add_argument("--probabilities", metavar="PATH", help="also write the probability of the chosen label per voxel (.nrrd/.nii.gz/.mha)")
    predict.add_argument("--progress", choices=("bar", "json", "none"), default="bar", help="progress bar on stderr, JSON lines on stdout, or nothing")
    predict.add_argument("--largest-component", action="store_true", help="keep only the largest 3D connected component of each label")
    predict.add_argument("--no-cgm", action="store_true", help="UNet 3+: do not blank slices its classification-guided module judges empty")
    predict.add_argument("--overwrite", action="store_true", help="replace existing output files")
    speed = predict.add_argument_group("speed (see BENCHMARKS.md)")
    speed.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="auto: ONNX Runtime on the CPU when installed (pip install 'UNetSegmentationLib[onnx]'; the export is cached next to the checkpoint), else PyTorch",
    )
    speed.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "int8"),
        default="auto",
        help=(
            "auto: bf16 autocast where the hardware has it (CUDA; CPUs with AVX512-BF16/AMX), else float32; bf16 agrees with fp32 on >=99%% of labels. "
            "int8 (CPU, ONNX Runtime): the network quantised for each volume, calibrated on 8 of its slices and checked against float32 on 8 others "
            "(falls back to float32 below 99%% label agreement); pays for wide networks only (1.5-1.6x on UNet++ L4 32..512, no gain on the small bundled model)"
        ),
    )
    speed.add_argument("--threads", type=int, help="CPU threads for the network in all (default: one per core)")
    speed.add_argument(
        "--slice-workers",
        type=int,
        metavar="N",
        help="CPU: slices computed at the same time, each on threads/N threads (default 2: faster than one slice on all threads)",
    )
    _add_model_options(predict, for_plain_torch=True)
    predict.add_argument("input", metavar="INPUT", help="volume file (.nrrd, .nii, .nii.gz, .mha, .mhd) or DICOM series folder")
    predict.add_argument("output", metavar="OUTPUT", help="label map (.nrrd, .nii, .nii.gz, .mha) or Slicer segmentation (.seg.nrrd)")
    predict.set_defaults(run=command_predict)

    demo = commands.add_parser("demo", help="segment the chest CT shipped with slicerio using the bundled model")
    demo.add_argument("--output-dir", default="unetseg-demo", help="where to write the segmentation and the overlay PNG")
    demo.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    demo.set_defaults(run=command_demo)

    training_commands.add_commands(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from UNetSegmentationLib.protocol.reporters import make_reporter

    args = build_parser().parse_args(argv)
    args.reporter = make_reporter(getattr(args, "progress", "none"))
    previous = signal.signal(signal.SIGTERM, _on_terminate)
    try:
        return args.run(args)
    except UserError as error:
        args.reporter.error(str(error))
        print(f"unetseg: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (KeyboardInterrupt, Cancelled):
        args.reporter.error("cancelled")
        print("unetseg: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except MemoryError:
        message = "out of memory: try a smaller --batch-size"
        args.reporter.error(message)
        print(f"unetseg: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as error:  # a bug: say so, keep the traceback for the report
        import traceback

        from UNetSegmentationLib.backends.memory import is_out_of_memory

        if is_out_of_memory(error):  # e.g. moving the model to a full GPU: not a bug, say what to do
            message = f"out of memory ({str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__}): try a smaller --batch-size or --device cpu"
            args.reporter.error(message)
            print(f"unetseg: error: {message}", file=sys.stderr)
            return EXIT_USER_ERROR

        traceback.print_exc(file=sys.stderr)
        args.reporter.error(f"internal error: {type(error).__name__}: {error}")
        print(f"unetseg: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
