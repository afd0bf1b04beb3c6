"""``unetseg refine``: click refinement of one object from a script (a clicks file), as a session would
apply the clicks (:mod:`UNetSegmentationLib.interactive.refine_file`)."""

from __future__ import annotations

import argparse

from UNetSegmentationLib.backends.plan import check_positive
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.bundled import BUNDLED_SHORT_NAME, interactive_checkpoint_path
from UNetSegmentationLib.protocol.reporters import PROGRESS_MODES


def command_refine(args: argparse.Namespace) -> int:
    if len(args.paths) not in (2, 3):
        raise UserError(f"refine takes INPUT [INITIAL] OUTPUT: two or three paths, got {len(args.paths)}")
    input_path, output_path = args.paths[0], args.paths[-1]
    initial_path = args.paths[1] if len(args.paths) == 3 else None
    if args.segment is not None and initial_path is None:
        raise UserError("--segment names a segment of INITIAL; give INITIAL (unetseg refine INPUT INITIAL OUTPUT)")
    threads = None if args.threads is None else check_positive(args.threads, "--threads")
    from UNetSegmentationLib.interactive.refine_file import refine_file  # numpy, SimpleITK and the model only now

    refine_file(input_path, initial_path, output_path, args.checkpoint, args.clicks, segment=args.segment, overwrite=args.overwrite,
                propagate=not args.no_propagate, reporter=args.reporter, threads=threads)
    return 0


def add_commands(commands) -> None:
    """Register ``refine`` on the ``unetseg`` parser."""
    refine = commands.add_parser(
        "refine",
        help="refine one object with clicks (a clicks file), as the Segment Editor effect does; write it (README 'Interactive refinement')",
    )
    refine.add_argument("paths", nargs="+", metavar="INPUT [INITIAL] OUTPUT",
                        help="the volume, optionally the label map or .seg.nrrd to start from, and the output (INITIAL with the segment replaced, or a binary mask)")
    refine.add_argument("--checkpoint", default=BUNDLED_SHORT_NAME, type=interactive_checkpoint_path, metavar="CKPT",
                        help=f"interactive checkpoint (default '{BUNDLED_SHORT_NAME}': the bundled interactive model)")
    refine.add_argument("--clicks", required=True, metavar="CLICKS.json",
                        help='a JSON list of clicks in order: {"ijk": [i, j, k], "positive": true} (voxel indices of INPUT) or {"lps": [x, y, z], ...} (mm); a list of points is a scribble')
    refine.add_argument("--segment", metavar="NAME|VALUE", help="the segment of INITIAL to refine (its name or label value; needed when INITIAL holds several)")
    refine.add_argument("--no-propagate", action="store_true", help="change only the clicked slices (default: each click is propagated to its neighbours)")
    refine.add_argument("--threads", type=int, metavar="N", help="CPU threads of the network (default: PyTorch's)")
    refine.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    refine.add_argument("--progress", choices=PROGRESS_MODES, default="bar", help="progress bar on stderr, JSON lines on stdout, or nothing")
    refine.set_defaults(run=command_refine)
