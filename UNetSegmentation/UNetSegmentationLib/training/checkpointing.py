"""What a run keeps on disk between epochs and invocations: its three files, the resume state, and
the record of the best epoch.

The resume state (``OUT.resume.pt``) holds weights, optimiser, schedule, scaler, history, the best
epoch and a fingerprint of the configuration and cases; it is written atomically after every epoch
and read back with ``torch.load(weights_only=True)``, never unpickling objects. ``--resume`` refuses
a run whose fingerprint differs outside :data:`~.config.RESUMABLE_CHANGES`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import monai
import torch

from UNetSegmentationLib import __version__
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.outputs import atomic_output, check_output_path
from UNetSegmentationLib.model.checkpoint import load_checkpoint
from UNetSegmentationLib.model.header import read_metadata
from UNetSegmentationLib.model.metadata import ModelMetadata
from UNetSegmentationLib.training.cases import Case
from UNetSegmentationLib.training.config import RESUMABLE_CHANGES, TrainConfig, default_side_path
from UNetSegmentationLib.training.optimization import Optimization

Weights = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class RunFiles:
    """The best checkpoint (``OUT.safetensors``), the CSV log and the resume state of a run."""

    checkpoint: Path
    log: Path
    state: Path

    @classmethod
    def for_output(cls, output: Path, config: TrainConfig) -> "RunFiles":
        """``--log`` and ``--state`` where given, else ``OUT.csv`` and ``OUT.resume.pt``."""
        output = Path(output)
        log = Path(config.log) if config.log else default_side_path(output, ".csv")
        state = Path(config.state) if config.state else default_side_path(output, ".resume.pt")
        return cls(output, log, state)

    def check(self, resume: bool, overwrite: bool, protected: Sequence[Path] = ()) -> None:
        """Stop before any work when a file would be lost or is missing; each file passes the output gate
        (``protected``: the files the run reads) and, inside a ``claiming_outputs`` block, is locked."""
        replace = overwrite or resume
        if resume and not self.state.is_file():
            raise UserError(f"--resume: no resume state {self.state} (it is written after every epoch of a run with the same output)")
        if not replace and self.state.exists():
            raise UserError(f"{self.state} holds the state of an earlier run; pass --resume to continue it or --overwrite to start over")
        if len({self.checkpoint.resolve(), self.log.resolve(), self.state.resolve()}) < 3:
            raise UserError("the checkpoint, the log and the resume state must be three different files")
        check_output_path(self.checkpoint, replace, what="checkpoint", extensions=(".safetensors",), protected=protected)
        check_output_path(self.log, replace, what="training log", extensions=(".csv",), protected=protected)
        check_output_path(self.state, True, what="resume state", extensions=(".pt",), protected=protected)


@dataclass
class Best:
    """The best epoch so far: its validation ``score`` (mean Dice of the main depth) and record."""

    score: float = -math.inf
    epoch: Optional[int] = None
    validation: Optional[Dict[str, Any]] = None

    def to_json(self) -> str:
        return json.dumps({"score": None if self.score == -math.inf else self.score, "epoch": self.epoch, "validation": self.validation})

    @classmethod
    def from_json(cls, text: str) -> "Best":
        data = json.loads(text)
        return cls(-math.inf if data["score"] is None else data["score"], data["epoch"], data["validation"])


@dataclass
class RunState:
    """Where a run stands: epochs and steps done, the epoch rows, the best epoch and its weights (on the CPU)."""

    epoch: int = 0
    step: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    best: Best = field(default_factory=Best)
    best_weights: Optional[Weights] = None
    baseline: Optional[Dict[str, Any]] = None  # fine-tuning: the base model's validation record, before the first step


def cpu_weights(model: torch.nn.Module) -> Weights:
    """A copy of ``model``'s weights on the CPU."""
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def run_fingerprint(config: TrainConfig, cases: Sequence[Case]) -> Dict[str, Any]:
    """What must not change between a run and its ``--resume``: the configuration (less
    :data:`RESUMABLE_CHANGES`) and the cases, as JSON values."""
    return json.loads(json.dumps({
        "config": {k: v for k, v in config.to_json().items() if k not in RESUMABLE_CHANGES},
        "cases": [[str(c.name), str(c.image), str(c.label)] for c in cases],
    }))


def _check_fingerprint(saved: Dict[str, Any], current: Dict[str, Any]) -> None:
    if saved == current:
        return
    differences = sorted(k for k in set(saved["config"]) | set(current["config"]) if saved["config"].get(k) != current["config"].get(k))
    if saved["cases"] != current["cases"]:
        differences.append("the cases")
    raise UserError(f"--resume: this run differs from the saved one in {', '.join(differences)}; only {', '.join(sorted(RESUMABLE_CHANGES))} may change")


def save_resume_state(path: Path, model: torch.nn.Module, optimization: Optimization, state: RunState, fingerprint: Dict[str, Any]) -> None:
    """Write the resume state atomically (tensors and JSON strings only, for ``weights_only`` loading)."""
    contents = {
        "model": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        **optimization.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "history": json.dumps(state.history),
        "best": state.best.to_json(),
        "baseline": json.dumps(state.baseline),
        "fingerprint": json.dumps(fingerprint),
    }
    with atomic_output([path], overwrite=True) as (temporary,):
        torch.save(contents, str(temporary))


def restore_run(files: RunFiles, fingerprint: Dict[str, Any], model: torch.nn.Module, optimization: Optimization) -> RunState:
    """Load the resume state into ``model`` and ``optimization``; the run's state, with the best weights
    read back from the checkpoint. Refuses a run that differs from the saved one."""
    saved = torch.load(str(files.state), map_location="cpu", weights_only=True)
    _check_fingerprint(json.loads(saved["fingerprint"]), fingerprint)
    model.load_state_dict(saved["model"])
    optimization.load_state_dict(saved)
    state = RunState(int(saved["epoch"]), int(saved["step"]), json.loads(saved["history"]), Best.from_json(saved["best"]),
                     baseline=json.loads(saved.get("baseline", "null")))
    if files.checkpoint.is_file() and state.best.epoch is not None:
        state.best_weights = load_checkpoint(files.checkpoint).state_dict
    return state


def versions() -> Dict[str, str]:
    """Versions of the engine and the libraries that trained the model (stored in the checkpoint)."""
    return {"unetseg": __version__, "torch": torch.__version__, "monai": monai.__version__}


def read_metadata_or(path: Path, fallback: ModelMetadata) -> ModelMetadata:
    """The metadata of the checkpoint at ``path``, or ``fallback`` when none was written yet."""
    return read_metadata(path) if Path(path).is_file() else fallback
