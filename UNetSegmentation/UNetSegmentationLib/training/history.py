"""The epoch history of a run: one row per epoch, written as the CSV log and told as one line per epoch.

A row holds ``epoch``, ``step``, ``lr``, ``loss`` and ``loss_<part>`` (the loss terms), and after a
validation ``val_dice`` and ``val_dice_L<d>`` (every depth of a prunable network), then ``seconds``
and ``best`` (whether this epoch's weights became the checkpoint).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List

from UNetSegmentationLib.io.outputs import atomic_output

Row = Dict[str, Any]


def write_log(history: List[Row], path: Path) -> None:
    """The rows as CSV (columns in order of first appearance; a missing value is empty), replaced atomically."""
    columns: List[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    with atomic_output([path], overwrite=True) as (temporary,):
        with open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            for row in history:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def epoch_line(row: Row) -> str:
    """``epoch   3  step      9  loss 0.5123  val_dice 0.7012  L1 0.650  L2 0.701  2s  *best``."""
    dice = f"  val_dice {row['val_dice']:.4f}" if row.get("val_dice") is not None else ""
    depths = "".join(f"  L{k[10:]} {v:.3f}" for k, v in row.items() if k.startswith("val_dice_L") and v is not None)
    best = "  *best" if row.get("best") else ""
    return f"epoch {row['epoch']:>3}  step {row['step']:>6}  loss {row['loss']:.4f}{dice}{depths}  {row['seconds']:.0f}s{best}"
