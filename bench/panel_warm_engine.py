"""The Slicer panel's "Segment this volume" on the session's warm engine against a fresh ``predict`` child.

Drives the panel's run class (``panel/run.SegmentationRun``) as the Slicer module does, on one volume:
``--rounds`` clicks with a child per click (the panel before issue 25, and its path for plain PyTorch
checkpoints) interleaved with clicks on one warm engine (``panel/warm_engine.SessionEngine``); the
engine's first click, which starts it, is timed apart. Wall: from the request (``start_segmenting``) to
the run's ``importing`` state, as the panel's progress bar sees it. Prints a Markdown table.

    nice -n 10 python bench/panel_warm_engine.py --rounds 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.panel.checkpoints import bundled_model_path
from UNetSegmentationLib.panel.run import IMPORTING, RunOptions, SegmentationRun
from UNetSegmentationLib.panel.warm_engine import SessionEngine, WarmEngineFactory


def click(volume: Path, options: RunOptions, folder: Path, warm_engine: Optional[WarmEngineFactory]) -> float:
    """One click's segmenting step, in seconds (export and import are the same on both paths)."""
    run = SegmentationRun(options, temp_root=folder, warm_engine=warm_engine)
    shutil.copyfile(volume, run.begin_exporting())
    started = time.monotonic()
    run.start_segmenting()
    if run.wait(timeout_s=900) != IMPORTING:
        raise SystemExit(f"the run failed: {run.message}")
    seconds = time.monotonic() - started
    run.finish()
    return seconds


def main() -> None:
    import slicerio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--volume", type=Path, default=Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd")
    arguments = parser.parse_args()
    options = RunOptions(bundled_model_path(), SegmentationOptions(), confidence_map=True)
    session = SessionEngine()
    fresh: List[float] = []
    warm: List[float] = []
    with tempfile.TemporaryDirectory() as folder:
        first = click(arguments.volume, options, Path(folder), session.requests(None))
        for _ in range(arguments.rounds):
            fresh.append(click(arguments.volume, options, Path(folder), None))
            warm.append(click(arguments.volume, options, Path(folder), session.requests(None)))
    session.close()
    print("| volume | child per click: wall s | warm engine, first click: wall s | warm engine, later clicks: wall s | child / later |")
    print("| --- | --- | --- | --- | --- |")
    f, w = statistics.median(fresh), statistics.median(warm)
    print(f"| {arguments.volume.name} | {f:.2f} | {first:.2f} | {w:.2f} | {f / w:.1f}x |")
    print(f"runs: child {[round(s, 2) for s in fresh]}, warm {[round(s, 2) for s in warm]}")


if __name__ == "__main__":
    main()
