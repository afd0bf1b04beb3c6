"""Commands about models: ``archs``, ``create``, ``info``, ``export``; and the model options that
describe a network for a plain PyTorch file (``--arch``, ``--classes``, ``--context``, ``--features``, ``--norm``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.bundled import BUNDLED_SHORT_NAME, checkpoint_path
from UNetSegmentationLib.networks.registry import ARCHITECTURES


def command_export(args: argparse.Namespace) -> int:
    """``unetseg export``: the output checked by the output gate (never the source or the bundled model) and
    locked while it is written, as ``predict``'s outputs are."""
    from UNetSegmentationLib.io.outputs import claiming_outputs
    from UNetSegmentationLib.model.depth import parse_depth
    from UNetSegmentationLib.model.subnetwork import export_depth

    depth = parse_depth(args.depth)
    if not isinstance(depth, int):
        raise UserError(f"export --depth needs a depth number (1..4 or L1..L4), got {args.depth!r}")
    with claiming_outputs():  # check_output_path (in export_depth) claims the output's lock until the file is written
        path, full, exported = export_depth(args.checkpoint, depth, args.output, overwrite=args.overwrite)
    print(f"wrote {path}: depth-{depth} sub-network, {exported / 1e6:.3f}M of {full / 1e6:.3f}M parameters", file=sys.stderr)
    return 0


def _add_export(commands) -> None:
    export = commands.add_parser("export", help="write the depth-L sub-network of a UNet++ checkpoint as a smaller checkpoint")
    export.add_argument("--depth", required=True, help="depth to keep (1..4 or L1..L4)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output")
    export.add_argument("checkpoint", metavar="CKPT")
    export.add_argument("output", metavar="OUT.safetensors")
    export.set_defaults(run=command_export)


def add_model_options(parser: argparse.ArgumentParser, for_plain_torch: bool) -> None:
    """Architecture and metadata flags: required for ``create``, for plain .pt files in ``predict``."""
    title = "model (for a plain .pt/.pth checkpoint, which has no metadata)" if for_plain_torch else "model"
    group = parser.add_argument_group(title)
    group.add_argument("--arch", choices=sorted(ARCHITECTURES), required=not for_plain_torch, help="architecture (see 'unetseg archs')")
    group.add_argument("--classes", required=not for_plain_torch, help="foreground class names, comma-separated, label values 1..N")
    group.add_argument("--context", type=int, default=1, help="neighbour slices on each side: 2c+1 input channels (default 1)")
    group.add_argument("--features", help="channels per level, e.g. 32,64,128,256,512, or a preset: paper, wide")
    group.add_argument("--norm", default="ct:-1000,1000", help="intensity normalisation: ct:LO,HI (HU window) or mr[:PLO,PHI] (default ct:-1000,1000)")


def metadata_from_options(args: argparse.Namespace):
    from UNetSegmentationLib.grammar.class_lists import parse_class_names
    from UNetSegmentationLib.model.metadata import ModelMetadata, Normalization, make_classes, out_channels_for
    from UNetSegmentationLib.networks.registry import get_architecture, resolve_features

    architecture = get_architecture(args.arch)
    if not 0 <= args.context <= 16:
        raise UserError(f"--context must be in 0..16, got {args.context}")
    names = parse_class_names(args.classes)  # the one class-list grammar (grammar/class_lists.py)
    if not names:
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
    """``unetseg create``: the output checked by the output gate (never the bundled model) and locked while
    it is written, as ``predict``'s outputs are."""
    from UNetSegmentationLib.model.checkpoint import create_checkpoint
    from UNetSegmentationLib.io.outputs import check_output_path, claiming_outputs

    metadata = metadata_from_options(args)
    with claiming_outputs():
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
    from UNetSegmentationLib.model.training_record import describe_training_data

    checkpoint = load_checkpoint(args.checkpoint, metadata_from_options(args) if args.arch else None)
    metadata = checkpoint.metadata
    info = {"path": str(checkpoint.path), "metadata": metadata.to_json(), "parameters": _parameter_counts(checkpoint)}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    kwargs = {k: v for k, v in metadata.kwargs.items() if k not in ("in_channels", "out_channels")}
    print(f"checkpoint     {checkpoint.path}")
    print(f"architecture   {metadata.architecture} {json.dumps(kwargs)}")
    print(f"input          {metadata.in_channels} channel(s): slice ± {metadata.context}")
    if metadata.guidance is not None:  # interactive/guidance.py: what the three channels after the image hold
        print(f"role           interactive: + previous mask, positive and negative clicks {json.dumps(metadata.guidance, sort_keys=True)}")
    print(f"normalisation  {json.dumps(metadata.normalization.to_json())}")
    output = "sigmoid, threshold 0.5" if not metadata.uses_softmax else f"softmax over background + {len(metadata.classes)} classes"
    print(f"output         {output}")
    print(f"temperature    {metadata.temperature:g}" + (" (not calibrated: the network's own probabilities)" if metadata.temperature == 1.0 else " (logits divided by it: calibrated probabilities)"))
    for c in metadata.classes:
        colour = "#%02x%02x%02x" % tuple(round(255 * v) for v in c.color)
        print(f"  {c.value:>3}  {c.name:<30} {colour}{'  (terminology)' if c.terminology else ''}")
    if metadata.training_spacing:
        print(f"training spacing {' x '.join(f'{s:g}' for s in metadata.training_spacing)} mm")
    distance = metadata.context_distance
    print(f"slice distance {'not recorded (the neighbours are the adjacent slices)' if distance is None else f'{distance:g} mm between a slice and its 2.5D neighbours'}")
    for line in describe_training_data(metadata.training):  # per case: slice axis, slices trained and held out
        print(line)
    parameters = info["parameters"]
    print(f"parameters     {parameters['total'] / 1e6:.3f}M")
    for line in depth_table_lines(metadata, parameters.get("per_depth", {})):
        print(line)
    return 0


def depth_table_lines(metadata, per_depth: dict) -> list:
    """Per depth: parameters, held-out Dice and ms/slice, the recommended one marked. A fine-tuned model's
    Dice was measured on its own held-out slices (often of one class), so the base's table, kept in its
    lineage, follows instead of being lost (issue 22, defect 14)."""
    from UNetSegmentationLib.model.training_record import printable

    def rows(depth_metrics, recommended) -> list:
        lines = []
        for depth, count in per_depth.items():
            metrics = depth_metrics.get(int(depth), depth_metrics.get(str(depth), {}))
            shown = "  ".join(f"{printable(k, 20)} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)) if isinstance(metrics, dict) else ""
            mark = "  (recommended)" if recommended == int(depth) else ""
            lines.append(f"  L{depth}  {count / 1e6:.3f}M  {shown}{mark}")
        return lines

    lineage = metadata.training.get("fine_tuning") if isinstance(metadata.training, dict) else None
    lines = rows(metadata.depth_metrics, metadata.recommended_depth)
    if isinstance(lineage, dict) and isinstance(lineage.get("base_depth_metrics"), dict) and lineage["base_depth_metrics"]:
        measured = lineage.get("classes_validated")
        on = f" (Dice of {printable(', '.join(map(str, measured)))})" if isinstance(measured, list) and measured else ""
        lines = [f"  this fine-tuning's held-out slices{on}:"] + lines + ["  the base model's table:"]
        lines += rows(lineage["base_depth_metrics"], lineage.get("base_recommended_depth"))
    return lines


def add_commands(commands) -> None:
    """Register these subcommands on the ``unetseg`` parser."""
    archs = commands.add_parser("archs", help="list architectures and what each supports")
    archs.add_argument("--json", action="store_true", help="machine-readable output")
    archs.set_defaults(run=command_archs)

    create = commands.add_parser("create", help="write an untrained checkpoint (the start for training; used by tests)")
    add_model_options(create, for_plain_torch=False)
    create.add_argument("--seed", type=int, default=0, help="random seed of the initial weights")
    create.add_argument("--overwrite", action="store_true", help="replace an existing file")
    create.add_argument("output", metavar="OUT.safetensors")
    create.set_defaults(run=command_create)

    info = commands.add_parser("info", help="show a checkpoint's metadata and parameter counts")
    info.add_argument("checkpoint", metavar="CKPT", type=checkpoint_path, help=f"checkpoint file, or '{BUNDLED_SHORT_NAME}' for the bundled model")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    add_model_options(info, for_plain_torch=True)
    info.set_defaults(run=command_info)
    _add_export(commands)
