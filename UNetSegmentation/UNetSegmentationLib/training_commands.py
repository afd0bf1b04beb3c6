"""Subcommands for training, evaluation and export (``train``, ``evaluate``, ``export``).

Kept apart from :mod:`UNetSegmentationLib.cli` so the inference commands stay small; the parser
calls :func:`add_commands`.
"""

from __future__ import annotations

import argparse


def add_commands(commands: "argparse._SubParsersAction") -> None:
    """Register the training-side subcommands on the ``unetseg`` parser."""
