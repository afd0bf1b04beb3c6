"""Parameters and GFLOPs per slice of every registered architecture, as a markdown table.

    python bench/architecture_table.py                              # print the table
    python bench/architecture_table.py --output docs/architectures.md   # also write it

Each network is built in its paper feature configuration (``--presets``) with the registry's default
arguments, 3 input channels (2.5D context c = 1) and one class (1 output channel), in evaluation mode.
FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` on one slice (batch 1): 2 ×
the multiply-accumulates of convolutions and matrix products; pooling, normalisation, activations
and interpolation are not counted. The networks run on PyTorch's ``meta`` device (shapes only), so
counting takes seconds and needs no memory; ``--device cpu`` runs real forwards instead.
UNet++ has one row per pruned depth L1..L4 (``parameter_count(depth)`` and ``forward_depth``).

With ``--output``, a file that already holds the markers ``<!-- architecture-table:start -->`` and
``<!-- architecture-table:end -->`` gets only the text between them replaced; any other file is
overwritten with the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from marked_section import write_marked_section
from UNetSegmentationLib.networks.registry import ARCHITECTURES, build_network

START, END = "<!-- architecture-table:start -->", "<!-- architecture-table:end -->"
COMMAND = "python bench/architecture_table.py --output docs/architectures.md"


def count_flops(run: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            run()
    return counter.get_total_flops()


def rows(presets: Sequence[str], sizes: Sequence[int], device: str) -> Iterator[Tuple[str, str, float, List[float]]]:
    """(name, configuration, parameters in millions, GFLOPs per slice at each size) per network/depth."""
    for name, architecture in ARCHITECTURES.items():
        for preset in presets:
            if preset not in architecture.feature_presets:
                continue
            features = list(architecture.feature_presets[preset])
            kwargs = dict(architecture.default_kwargs, features=features, in_channels=3, out_channels=1)
            with torch.device(device):
                model = build_network(name, kwargs).eval()
            configuration = f"{preset}: {'/'.join(map(str, features))}"
            depths: Sequence[Optional[int]] = architecture.prune_depths or (None,)
            for depth in depths:
                label = f"{architecture.title} L{depth}" if depth else architecture.title
                if depth:
                    parameters = model.parameter_count(depth)
                    forward = lambda x, d=depth: model.forward_depth(x, d)  # noqa: E731
                else:
                    parameters = sum(p.numel() for p in model.parameters())
                    forward = model
                gflops = [count_flops(lambda: forward(torch.zeros(1, 3, size, size, device=device))) / 1e9 for size in sizes]
                yield label, configuration, parameters / 1e6, gflops


def markdown(table: Sequence[Tuple[str, str, float, List[float]]], sizes: Sequence[int]) -> str:
    header = "| Architecture | Features | Parameters (M) | " + " | ".join(f"GFLOPs/slice {s}²" for s in sizes) + " |"
    rule = "|---|---|---:|" + "---:|" * len(sizes)
    lines = [header, rule]
    for label, configuration, millions, gflops in table:
        lines.append(f"| {label} | {configuration} | {millions:.2f} | " + " | ".join(f"{g:.1f}" for g in gflops) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="paper,wide", help="feature presets to list, comma-separated (default paper,wide)")
    parser.add_argument("--sizes", default="256,512", help="in-plane slice sizes, comma-separated (default 256,512)")
    parser.add_argument("--device", default="meta", help="meta (count from shapes, fast) or cpu (real forwards)")
    parser.add_argument("--output", type=Path, help="also write the table to this markdown file (between the markers if present)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    start = time.perf_counter()
    table = markdown(list(rows(args.presets.split(","), sizes, args.device)), sizes)
    print(table, end="")
    print(f"({time.perf_counter() - start:.1f} s; torch {torch.__version__})", file=sys.stderr)
    if args.output:
        write_marked_section(args.output, START, END, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
