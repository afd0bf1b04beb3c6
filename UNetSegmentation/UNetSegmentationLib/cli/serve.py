"""``unetseg serve``: the warm engine (:mod:`UNetSegmentationLib.engine`), a long-lived process that keeps
models loaded and answers JSON-lines requests on stdin with the events of ``--progress json`` on stdout."""

from __future__ import annotations

import argparse
import sys

from UNetSegmentationLib.backends.plan import check_positive
from UNetSegmentationLib.engine.model_cache import DEFAULT_CAPACITY


def command_serve(args: argparse.Namespace) -> int:
    from UNetSegmentationLib.engine.server import serve  # numpy, SimpleITK and the model only for this command

    return serve(sys.stdin, sys.stdout, models=check_positive(args.models, "--models"))


def add_commands(commands) -> None:
    """Register ``serve`` on the ``unetseg`` parser."""
    serve = commands.add_parser("serve", help="a warm engine: keep models loaded and answer segmentation requests (JSON lines on stdin; README 'Warm engine')")
    serve.add_argument("--models", type=int, default=DEFAULT_CAPACITY, metavar="N", help="models kept loaded at once, least recently used given up first (default %(default)s)")
    serve.add_argument("--progress", choices=("json",), default="json", help="events are always JSON lines on stdout (accepted for the process runner)")
    serve.set_defaults(run=command_serve)
