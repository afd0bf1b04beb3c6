"""One interactive network for both roles, or two networks (issue 26)? The measurement behind the choice.

DeepEdit (Diaz-Pinto et al., MICCAI 2022) trains one network for the automatic and the interactive role:
the classes out, guidance channels in, a share of the training steps without guidance. The alternative
is two networks: the automatic model as it is, and a class-agnostic interactive one. One network serves
both roles only if, with zero guidance, it is as good as the automatic model (the issue: within 0.01 Dice).

This script compares the held-out Dice of two runs trained on the same data with the same options and
budget, one ``unetseg train`` (automatic) and one ``unetseg train --interactive joint`` (validated with
zero guidance by the trainer itself: training/interactive_trainer.py). Both runs select their best epoch
on the same held-out patient, so the comparison is like for like (both a little optimistic). It reads the
two checkpoints' validation records; the runs themselves are (fold 0 held out, ``training-data`` built by
``python Resources/Tools/prepare_training_data.py --output training-data --offline``)::

    OPTIONS="--datalist training-data/datalist.json --data-root training-data --classes training-data/classes.json --fold 0 \\
      --arch unetplusplus --features 8,16,32,64,128 --context 1 --spacing 3.0 --slice-distance 5 --epochs 4 \\
      --steps-per-epoch 40 --batch-size 8 --crop 64 --lr 3e-3 --foreground 0.7 --seed 0 --threads 1"
    nice -n 10 unetseg train $OPTIONS automatic.safetensors
    nice -n 10 unetseg train --interactive joint $OPTIONS joint.safetensors
    python bench/interactive_roles.py automatic.safetensors joint.safetensors

Prints a table of per-class Dice at the full network's depth and the verdict.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "UNetSegmentation"))

from UNetSegmentationLib.model.header import read_metadata  # noqa: E402

#: the issue's tolerance: with zero guidance, the joint network within this of the automatic model's Dice
TOLERANCE = 0.01


def held_out(path: Path) -> Dict[str, Optional[float]]:
    """``{"mean": Dice, class: Dice, ...}`` of the checkpoint's best validation at its main (deepest) depth."""
    validation = read_metadata(path).training.get("validation") or {}
    if not validation:
        raise SystemExit(f"{path}: no validation record (train with --fold or validation cases)")
    main = validation["by_depth"][f"L{validation['main_depth']}" if validation.get("main_depth") else "default"]
    return {"mean": validation["dice"], **main["per_class"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("automatic", type=Path)
    parser.add_argument("joint", type=Path)
    args = parser.parse_args(argv)
    automatic, joint = held_out(args.automatic), held_out(args.joint)
    role = read_metadata(args.joint).role
    print(f"| class | automatic | joint, zero guidance | difference |\n|---|---:|---:|---:|")
    for name in automatic:
        a, j = automatic[name], joint.get(name)
        if a is None or j is None:
            continue
        print(f"| {'**mean**' if name == 'mean' else name} | {a:.3f} | {j:.3f} | {j - a:+.3f} |")
    difference = joint["mean"] - automatic["mean"]
    verdict = "one network can serve both roles" if difference >= -TOLERANCE else "two networks: the joint one loses more than the tolerance"
    print(f"\njoint ({role}) minus automatic: {difference:+.3f} mean Dice (tolerance {TOLERANCE}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
