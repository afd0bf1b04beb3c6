"""Training an interactive network by simulation: ``unetseg train --interactive object|joint``.

The run is an ordinary training run (:class:`~.trainer.Trainer`: the same cases, resampling to the
model's spacing, 2.5D crops and augmentations, optimisation, resume state and safetensors
checkpoints) whose network takes three guidance channels after the 2c+1 image channels and whose
batches get simulated guidance (:mod:`.interactive_simulation`); the checkpoint's metadata records role
``interactive`` and the click encoding (:class:`~UNetSegmentationLib.interactive.guidance.GuidanceSpec`).

- ``object``: class-agnostic, one sigmoid output (the object under the clicks; every labelled class of
  every case is an object). Nothing is validated during the run (the held-out patients are measured by
  clicks afterwards, bench/interactive_noc.py): the last epoch is kept.
- ``joint``: DeepEdit's one network for both roles (the automatic classes out, guidance for one of
  them); validated like an automatic model, with zero guidance, so its Dice compares directly with an
  automatic model's (the measurement behind the choice of two networks: BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from UNetSegmentationLib.interactive.guidance import GUIDANCE_CHANNELS, GuidanceSpec
from UNetSegmentationLib.model.metadata import ClassInfo, ModelMetadata
from UNetSegmentationLib.networks.registry import build_network
from UNetSegmentationLib.training.checkpointing import RunState
from UNetSegmentationLib.training.dataset import TrainingData
from UNetSegmentationLib.training.interactive_simulation import GuidanceSimulation
from UNetSegmentationLib.training.losses import SegmentationLoss
from UNetSegmentationLib.training.optimization import Optimization
from UNetSegmentationLib.training.trainer import Trainer, TrainingSetup, memory_format

#: the one class of a class-agnostic interactive network
OBJECT_CLASS = ClassInfo(1, "object", (0.95, 0.75, 0.2), None)


def interactive_metadata(metadata: ModelMetadata, mode: str, spec: GuidanceSpec) -> ModelMetadata:
    """The metadata of the interactive network of ``mode`` made from the automatic run's ``metadata``:
    three guidance channels more in, and for ``object`` one class (sigmoid) out."""
    classes = [OBJECT_CLASS] if mode == "object" else list(metadata.classes)
    kwargs = dict(metadata.kwargs, in_channels=2 * metadata.context + 1 + GUIDANCE_CHANNELS, out_channels=1 if mode == "object" else metadata.kwargs["out_channels"])
    return dataclasses.replace(metadata, kwargs=kwargs, classes=classes, guidance=spec.to_dict())


class ZeroGuidance(nn.Module):
    """An interactive network seen as an automatic one: zero guidance channels after the image's (the
    joint network's automatic role, validated as an automatic model is)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def _guided(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x.new_zeros((x.shape[0], GUIDANCE_CHANNELS) + tuple(x.shape[2:]))], dim=1)

    def forward(self, x: torch.Tensor) -> Any:
        return self.network(self._guided(x))

    def forward_depth(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        return self.network.forward_depth(self._guided(x), depth)

    def forward_heads(self, x: torch.Tensor) -> Any:
        return self.network.forward_heads(self._guided(x))

    def required_multiple(self, depth: Optional[int] = None) -> int:
        return self.network.required_multiple(depth)


class InteractiveTrainer(Trainer):
    """A :class:`~.trainer.Trainer` whose network is guided by simulated clicks (see the module docstring)."""

    def _setup(self, data: TrainingData, init: Any, device: torch.device, started: float) -> TrainingSetup:
        setup = super()._setup(data, init, device, started)  # cases, crop, sampler over the automatic classes
        config = self.config
        spec = GuidanceSpec()
        self.automatic_metadata = data.metadata  # its classes: every labelled class of every case is an object
        data.metadata = interactive_metadata(data.metadata, config.interactive, spec)
        torch.manual_seed(config.seed)
        model = build_network(data.metadata.architecture, data.metadata.kwargs).to(device, memory_format=memory_format(device)).train()
        criterion = SegmentationLoss(setup.loss_kind, 1, setup.crop) if config.interactive == "object" else setup.criterion
        self.simulation = GuidanceSimulation(config.interactive, spec, data.metadata.in_plane_spacing, float(data.metadata.slice_distance), config.no_guidance,
                                            config.pseudo_objects)
        return dataclasses.replace(setup, model=model, criterion=criterion, optimization=Optimization.build(config, model, device))

    def _report_start(self, setup: TrainingSetup, state: RunState) -> None:
        """As an automatic run reports it (its classes, unknown per case, missing): the objects are those classes."""
        super()._report_start(dataclasses.replace(setup, data=dataclasses.replace(setup.data, metadata=self.automatic_metadata)), state)
        self.reporter.log(f"interactive ({self.config.interactive}): {self.config.no_guidance:.0%} of the samples without guidance, "
                          f"{self.config.pseudo_objects:.0%} with a pseudo-object; clicks {self.simulation.spec.to_dict()}")

    def _step(self, setup: TrainingSetup, state: RunState, batch: Tuple[np.ndarray, np.ndarray, np.ndarray]) -> Tuple[float, Dict[str, float]]:
        images, targets, merged = batch
        inputs, targets = self.simulation.guide(images, targets, merged, setup.sampler.rng, lambda x, objects: self._object_probability(setup, x, objects))
        return super()._step(setup, state, (inputs, targets, merged))

    @staticmethod
    def _object_probability(setup: TrainingSetup, inputs: np.ndarray, objects: np.ndarray) -> np.ndarray:
        """The network's probability of each sample's object (its own prediction, fed back as the previous mask)."""
        model = setup.model
        model.eval()  # batch statistics stay out of the feedback pass
        try:
            with torch.no_grad(), setup.optimization.autocast():
                logits = model(torch.from_numpy(inputs).to(setup.device)).float()
        finally:
            model.train()
        if logits.shape[1] == 1:
            return torch.sigmoid(logits[:, 0]).cpu().numpy()
        probabilities = torch.softmax(logits, dim=1).cpu().numpy()
        return probabilities[np.arange(len(objects)), np.maximum(objects, 0)] * (objects >= 0)[:, None, None]

    def _validate_epoch(self, setup: TrainingSetup, state: RunState, row: Dict[str, Any]) -> bool:
        if self.config.interactive == "object" or not setup.data.has_validation:
            state.best.epoch = state.epoch  # the last epoch is kept
            return True
        automatic = dataclasses.replace(setup.metadata, guidance=None, kwargs=dict(setup.metadata.kwargs, in_channels=2 * setup.metadata.context + 1))
        as_automatic = dataclasses.replace(setup, model=ZeroGuidance(setup.model), data=dataclasses.replace(setup.data, metadata=automatic))
        return super()._validate_epoch(as_automatic, state, row)

    def _checkpoint_metadata(self, setup: TrainingSetup, state: RunState, ms_per_slice: Optional[Dict[int, float]] = None, finished: bool = False) -> ModelMetadata:
        metadata = super()._checkpoint_metadata(setup, state, ms_per_slice, finished)
        simulation = dataclasses.asdict(self.simulation)  # the mode, the shares and the spec
        metadata.training["interactive"] = {**simulation, "automatic_classes": [c.name for c in self.automatic_metadata.classes]}
        return metadata
