"""Fine-tuning from a checkpoint (``unetseg train --init CKPT``): what is frozen, and the lineage its
model card records (its defaults and options: :mod:`.train_options`; the files it must never write
over, its base and the bundled model among them: the output gate, io/output_gate.py).

A fine-tuning run inherits the base model's architecture, classes, context, normalisation and
in-plane spacing; it writes a new checkpoint (never the ``--init`` file, never the bundled model)
whose ``training["fine_tuning"]`` record names the base (path and SHA-256), the cases and slices
trained on, the classes the labels held, steps, date, and the validation Dice of the base before
training and of the result after.

:data:`~.train_options.FINE_TUNING_DEFAULTS` were chosen by ``bench/finetune_demo.py --sweep`` (BENCHMARKS.md,
"Training"): on the slicerio CT, the best lower-half Dice after fine-tuning a model trained on the
upper half, within about a minute on 2 CPU cores for the 34 slices (a 100-slice volume at the model's
spacing stays well under 5 minutes: the run time is set by the steps, not the volume).
"""

from __future__ import annotations

import copy
import datetime
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from UNetSegmentationLib.errors import UserError


#: per architecture, whether a parameter (by its state-dict name) belongs to the encoder
ENCODER_PARAMETERS = {
    "unetplusplus": lambda name: name.startswith("nodes.x") and name.split(".")[1].endswith("0"),
    "unet": lambda name: name.startswith("encoder."),
}


def freeze(model: torch.nn.Module, architecture: str, encoder: bool, norm_statistics: bool) -> int:
    """Freeze the encoder's weights (``encoder``) and keep BatchNorm statistics as they are
    (``norm_statistics``: its layers stay in evaluation mode; see :func:`keep_frozen_norms`).
    Returns the number of trainable parameters left."""
    if encoder:
        chosen = ENCODER_PARAMETERS.get(architecture)
        if chosen is None:
            raise UserError(f"--freeze-encoder is available for {', '.join(sorted(ENCODER_PARAMETERS))}, not {architecture!r}")
        for name, parameter in model.named_parameters():
            if chosen(name):
                parameter.requires_grad_(False)
    model.frozen_norms = norm_statistics  # read by keep_frozen_norms after every model.train()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def keep_frozen_norms(model: torch.nn.Module) -> None:
    """After ``model.train()``: BatchNorm layers back in evaluation mode where their statistics are frozen
    (a few fine-tuning slices in small batches would otherwise pull the statistics toward themselves)."""
    if getattr(model, "frozen_norms", False):
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The model as it is now, frozen: no gradients, BatchNorm in evaluation mode, yet in training mode
    otherwise so that it returns every deep-supervision head (the teacher of :mod:`.partial_labels`)."""
    teacher = copy.deepcopy(model)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    teacher.train()
    teacher.frozen_norms = True
    keep_frozen_norms(teacher)
    return teacher


def lineage(init: str, base_sha256: str, classes_labelled: Sequence[str], classes_kept: Sequence[str], train_slices: Optional[Sequence[int]],
            frozen: Dict[str, bool]) -> Dict[str, Any]:
    """The start of ``training["fine_tuning"]``: the base model (``base_sha256``: :func:`~UNetSegmentationLib.io.file_digest.file_sha256` of the ``init`` file) and what the labels covered."""
    path = Path(init)
    return {
        "base": {"path": str(path.resolve()), "name": path.name, "sha256": base_sha256},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "classes_labelled": list(classes_labelled),
        "classes_not_labelled": list(classes_kept),
        "train_slices": None if train_slices is None else [int(s) for s in train_slices],
        **frozen,
    }
