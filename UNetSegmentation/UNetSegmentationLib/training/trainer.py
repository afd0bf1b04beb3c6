"""The training loop behind ``unetseg train``.

Reads and checks every case first (:mod:`.dataset`), then trains on random 2.5D crops
(:mod:`.sampling`) with the architecture's loss on every head (:mod:`.losses`), AdamW/Adam and a
poly or cosine schedule (AMP on CUDA; :mod:`.optimization`). After each epoch it writes, atomically:

- the best-by-validation checkpoint (``OUT.safetensors``: weights + metadata the engine needs);
- the resume state (``OUT.resume.pt``; :mod:`.checkpointing`);
- the CSV log of epochs (:mod:`.history`).

Runs are repeatable: every epoch re-seeds the sampler, the augmentations and torch from
``(seed, epoch)``, so a run resumed with ``--resume`` continues exactly where it stopped (on the
same device and thread count, bit for bit on CPU).

For deep-supervised, prunable networks (UNet++), validation reports the Dice of every depth
(:mod:`.validation`); at the end the ms/slice of every depth is measured, both go into
``metadata.depth_metrics``, and ``metadata.recommended_depth`` is the shallowest depth within a
tolerance of the best Dice — the UNet++ paper's pruning procedure (:mod:`.selection`) — which
``predict`` then uses by default.

Progress goes through a :class:`~UNetSegmentationLib.protocol.reporters.Reporter` (the schema of
:mod:`~UNetSegmentationLib.protocol.events`): ``start("train", total_steps, "step")``, a ``progress``
event per step (``done`` is the step of the whole run, with ``epoch``, ``epochs``, ``loss`` and the
step's ``lr``), a ``log`` line per epoch, warnings, and ``done`` with the summary.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.data.meta_obj import get_track_meta, set_track_meta

from UNetSegmentationLib.backends.device import resolve_device
from UNetSegmentationLib.backends.plan import cap_threads, usable_cpus
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.grammar.class_lists import class_key
from UNetSegmentationLib.grammar.slice_ranges import parse_slice_ranges
from UNetSegmentationLib.model.checkpoint import Checkpoint, build_model, load_checkpoint, save_checkpoint
from UNetSegmentationLib.model.depth import depth_tag
from UNetSegmentationLib.model.metadata import ModelMetadata
from UNetSegmentationLib.networks.blocks import as_training_output
from UNetSegmentationLib.networks.registry import build_network
from UNetSegmentationLib.protocol.reporters import Reporter
from UNetSegmentationLib.training.cases import Case
from UNetSegmentationLib.training.adapt import fit_crop
from UNetSegmentationLib.training.checkpointing import (
    Best, RunFiles, RunState, cpu_weights, read_metadata_or, restore_run, run_fingerprint, save_resume_state, versions,
)
from UNetSegmentationLib.training.config import TrainConfig, TrainResult, round_crop
from UNetSegmentationLib.training.dataset import TrainingData, load_training_data
from UNetSegmentationLib.io.file_digest import file_sha256
from UNetSegmentationLib.io.outputs import claiming_outputs
from UNetSegmentationLib.training.finetuning import freeze, frozen_copy, keep_frozen_norms, lineage
from UNetSegmentationLib.training.history import epoch_line, write_log
from UNetSegmentationLib.training.losses import SegmentationLoss, loss_kind
from UNetSegmentationLib.training.optimization import Optimization
from UNetSegmentationLib.training.partial_labels import MarginalLoss
from UNetSegmentationLib.training.sampling import SliceSampler
from UNetSegmentationLib.training.selection import depth_metrics_of, measure_ms_per_slice
from UNetSegmentationLib.training.validation import validate, validated_depths


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on a GPU (tensor cores); the default on the CPU, where bf16 steps of the bundled model's
    network were 11 % faster without it (0.150 s vs 0.169 s for 8 crops of 96², 2 cores)."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


@dataclass
class TrainingSetup:
    """What one run trains with, fixed for the whole run (the moving parts are in :class:`~.checkpointing.RunState`)."""

    config: TrainConfig
    device: torch.device
    data: TrainingData
    model: torch.nn.Module
    crop: Tuple[int, int]
    loss_kind: str
    criterion: SegmentationLoss
    sampler: SliceSampler
    optimization: Optimization
    fingerprint: Dict[str, Any]
    data_info: Dict[str, Any]
    started: float
    base: Optional[Checkpoint] = None  # the --init checkpoint of a fine-tuning run
    teacher: Optional[torch.nn.Module] = None  # the frozen base, teaching the unlabelled classes (partial_labels.py)
    base_sha256: Optional[str] = None  # of the --init file, hashed once: every checkpoint written records it

    @property
    def metadata(self) -> ModelMetadata:
        return self.data.metadata


class Trainer:
    """One training run: ``Trainer(config, train_cases, val_cases, output, ...).run()``."""

    def __init__(
        self,
        config: TrainConfig,
        train_cases: Sequence[Case],
        val_cases: Sequence[Case],
        output: Path,
        resume: bool = False,
        overwrite: bool = False,
        reporter: Optional[Reporter] = None,
        data_description: Optional[dict] = None,
    ) -> None:
        self.config = config
        self.train_cases = list(train_cases)
        self.val_cases = list(val_cases)
        self.files = RunFiles.for_output(Path(output), config)
        self.resume = resume
        self.overwrite = overwrite
        self.reporter = reporter or Reporter()
        self.data_description = data_description or {}

    def run(self) -> TrainResult:
        """Train (or continue with ``resume``) and write the checkpoint, log and resume state."""
        previous_threads = torch.get_num_threads()
        previous_track_meta = get_track_meta()
        try:
            if self.config.threads:
                threads, note = cap_threads(self.config.threads, usable_cpus())  # no more threads than CPUs
                if note:
                    self.reporter.warning(note)
                torch.set_num_threads(threads)
            set_track_meta(False)  # plain tensors out of the MONAI transforms: faster, nothing needs the metadata
            with claiming_outputs():  # one writer per checkpoint, log and resume state (io/locks), released at the end
                return self._run()
        finally:
            set_track_meta(previous_track_meta)
            torch.set_num_threads(previous_threads)

    def _run(self) -> TrainResult:
        started = time.perf_counter()
        # the output gate (io/output_gate): never the bundled model, the --init checkpoint or an input; locked while the run goes on
        self.files.check(self.resume, self.overwrite, protected=[Path(p) for p in ([self.config.init] if self.config.init else [])]
                         + [Path(p) for case in self.train_cases + self.val_cases for p in (case.image, case.label)])
        self.config.check()
        device = resolve_device(self.config.device)
        init = load_checkpoint(self.config.init) if self.config.init else None
        if init is not None:  # record what the run really uses
            self.config = self.config.adopting(init.metadata)
        data = load_training_data(self.config, self.train_cases, self.val_cases, init.metadata if init else None, self.reporter.warning)
        setup = self._setup(data, init, device, started)
        state = restore_run(self.files, setup.fingerprint, setup.model, setup.optimization) if self.resume else RunState()
        self._report_start(setup, state)
        if init is not None and not self.resume and data.has_validation:  # the base model's Dice, for the model card
            state.baseline = validate(setup.model, setup.metadata, data.volumes, device, self.config.val_batch_size, data.unlabelled).record(setup.metadata.classes)
            self.reporter.log(f"the base model's validation Dice: {state.baseline['dice']:.4f}" if state.baseline["dice"] is not None else "the base model has no validation Dice")
        config = self.config
        last_epoch = config.epochs if config.stop_after is None else min(config.epochs, state.epoch + config.stop_after)
        while state.epoch < last_epoch:
            self._epoch(setup, state)
        if state.epoch < config.epochs:
            self.reporter.log(f"stopped after epoch {state.epoch} of {config.epochs} (--stop-after); continue with --resume")
            self.reporter.done(stopped=True, epoch=state.epoch, state=str(self.files.state))
            return TrainResult(self.files.checkpoint, self.files.log, self.files.state, state.history, read_metadata_or(self.files.checkpoint, data.metadata))
        return self._finish(setup, state)

    # -- before the first epoch --

    def _setup(self, data: TrainingData, init: Optional[Checkpoint], device: torch.device, started: float) -> TrainingSetup:
        """The model (seeded from ``--seed``, or the ``--init`` weights), loss, sampler and optimiser."""
        config, metadata = self.config, data.metadata
        torch.manual_seed(config.seed)
        model = build_model(init) if init is not None else build_network(metadata.architecture, metadata.kwargs)
        model = model.to(device, memory_format=memory_format(device)).train()
        freeze(model, metadata.architecture, config.freeze_encoder, config.freeze_norm and init is not None)
        crop, note = fit_crop(config.crop, config.crop_given, data.volumes, model.required_multiple(None))  # the default fits the slices
        if note:
            self.reporter.warning(note)
        crop = round_crop(crop, model.required_multiple(None))
        kind = loss_kind(metadata.architecture, config.loss)
        criterion = MarginalLoss(kind, metadata.out_channels, data.unlabelled, crop) if data.partial else SegmentationLoss(kind, metadata.out_channels, crop)
        sampler = SliceSampler(data.volumes, metadata.context, crop, len(metadata.classes), config.foreground, config.augment)
        optimization = Optimization.build(config, model, device)
        fingerprint = run_fingerprint(config, self.train_cases + self.val_cases)
        teacher = frozen_copy(model) if init is not None and data.partial else None
        base_sha256 = file_sha256(Path(config.init)) if init is not None else None
        return TrainingSetup(config, device, data, model, crop, kind, criterion, sampler, optimization, fingerprint, data.description(self.data_description), started,
                             init, teacher, base_sha256)

    def _report_start(self, setup: TrainingSetup, state: RunState) -> None:
        config, metadata = setup.config, setup.metadata
        self.reporter.start(
            "train", config.total_steps, "step", state.step,
            arch=metadata.architecture, classes=[c.name for c in metadata.classes], parameters=sum(p.numel() for p in setup.model.parameters()),
            device=str(setup.device), epochs=config.epochs, steps_per_epoch=config.steps_per_epoch, crop=list(setup.crop), loss=setup.loss_kind,
            training_slices=setup.data.training_slices, validation_slices=setup.data.validation_slices,
            spacing=None if setup.data.spacing is None else list(setup.data.spacing), slice_distance=metadata.slice_distance,
            amp=str(setup.optimization.amp_dtype).replace("torch.", "") if setup.optimization.amp_dtype else None,
            base=config.init, unlabelled_classes=[metadata.classes[c - 1].name for c in setup.data.unlabelled],
        )
        for line in setup.data.slicing_lines(axis_requested=config.axis is not None):  # recorded in the checkpoint too ('unetseg info')
            self.reporter.log(line)
        if setup.data.unlabelled:
            names = ", ".join(metadata.classes[c - 1].name for c in setup.data.unlabelled)
            self.reporter.log(f"not in the labels, so not taught as background (marginal loss{', kept as the base model has them' if setup.base else ''}): {names}")
        for line in setup.data.unknown_lines(metadata.classes):
            self.reporter.log(line)
        for channel in setup.sampler.missing_classes:
            if channel not in setup.data.unlabelled:
                self.reporter.warning(f"class {metadata.classes[channel - 1].name!r} appears in no training slice: the model cannot learn it")
        if not setup.data.has_validation:
            self.reporter.warning("no validation data (give a 'validation' list, --val-images/--val-labels, or --val-slices): the last epoch is kept and no depth is recommended")
        if self.resume and state.epoch >= config.epochs:
            self.reporter.log(f"the saved run already finished {state.epoch} epoch(s); raise --epochs to train longer")
        elif self.resume:
            self.reporter.log(f"resuming after epoch {state.epoch} (step {state.step})")

    # -- one epoch --

    def _epoch(self, setup: TrainingSetup, state: RunState) -> None:
        """Train one epoch, validate when due, then write the checkpoint (if better), the log and the resume state."""
        state.epoch += 1
        epoch_started = time.perf_counter()
        row = self._train_epoch(setup, state)
        improved = self._validate_epoch(setup, state, row)
        row["seconds"] = round(time.perf_counter() - epoch_started, 2)
        row["best"] = improved
        state.history.append(row)
        if improved:
            state.best_weights = cpu_weights(setup.model)
            save_checkpoint(self.files.checkpoint, state.best_weights, self._checkpoint_metadata(setup, state), overwrite=True)
        write_log(state.history, self.files.log)
        save_resume_state(self.files.state, setup.model, setup.optimization, state, setup.fingerprint)
        self.reporter.log(epoch_line(row))

    def _train_epoch(self, setup: TrainingSetup, state: RunState) -> Dict[str, Any]:
        """The epoch's optimiser steps, seeded from ``(seed, epoch)``; returns the start of its log row."""
        config = setup.config
        epoch_seed = (config.seed * 1_000_003 + state.epoch) % (2**63)
        torch.manual_seed(epoch_seed)
        setup.sampler.set_random_state(epoch_seed)
        setup.model.train()
        keep_frozen_norms(setup.model)
        losses, parts_sum = [], {}
        for batch in self._batches(setup):
            loss, parts = self._step(setup, state, batch)
            losses.append(loss)
            for name, value in parts.items():
                parts_sum[name] = parts_sum.get(name, 0.0) + value
        return {
            "epoch": state.epoch,
            "step": state.step,
            "lr": setup.optimization.lr,
            "loss": float(np.mean(losses)),
            **{f"loss_{k}": v / len(losses) for k, v in parts_sum.items()},
        }

    @staticmethod
    def _batches(setup: TrainingSetup) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The epoch's batches. On a GPU the next one is prepared on a thread while the network runs; on the
        CPU in line, since a second thread's torch work (the augmentations) competes with the step's own
        threads for the cores (bench/training_speed.py: 28.6 slices/s with the thread, 35.0 without, 2 cores).
        Batches are drawn one after another from the epoch's seeded generators either way: the same run."""
        config = setup.config
        if setup.device.type != "cuda":
            for _ in range(config.steps_per_epoch):
                yield setup.sampler.batch(config.batch_size)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="unetseg-batches") as preparer:
            upcoming = preparer.submit(setup.sampler.batch, config.batch_size)
            for index in range(config.steps_per_epoch):
                batch = upcoming.result()
                if index + 1 < config.steps_per_epoch:
                    upcoming = preparer.submit(setup.sampler.batch, config.batch_size)
                yield batch

    def _step(self, setup: TrainingSetup, state: RunState, batch: Tuple[np.ndarray, np.ndarray, np.ndarray]) -> Tuple[float, Dict[str, float]]:
        """One optimiser step on ``batch`` (inputs, targets, each sample's merged mask); returns the loss and its terms."""
        config, device = setup.config, setup.device
        inputs, targets, merged = batch
        inputs = torch.from_numpy(inputs).to(device, non_blocking=True).contiguous(memory_format=memory_format(device))
        targets = torch.from_numpy(targets).to(device, non_blocking=True)
        with setup.optimization.autocast():
            output = as_training_output(setup.model(inputs))
            if setup.teacher is not None:
                with torch.no_grad():
                    teacher = setup.teacher(inputs)
        per_sample = {"merged": torch.from_numpy(merged).to(device)} if isinstance(setup.criterion, MarginalLoss) else {}
        loss, parts = setup.criterion(output, targets, teacher if setup.teacher is not None else None, **per_sample) if per_sample else setup.criterion(output, targets)
        if not torch.isfinite(loss):
            raise UserError(f"the loss became {float(loss)} at step {state.step + 1}: lower --lr (now {config.lr}) or check the data")
        lr = setup.optimization.lr
        setup.optimization.step(loss)
        state.step += 1
        value = float(loss.detach())
        dice = {} if state.best.validation is None or state.best.validation.get("dice") is None else {"val_dice": round(state.best.validation["dice"], 5)}
        self.reporter.progress(state.step, epoch=state.epoch, epochs=config.epochs, loss=round(value, 5), lr=lr, **dice)
        return value, parts

    def _validate_epoch(self, setup: TrainingSetup, state: RunState, row: Dict[str, Any]) -> bool:
        """Validate when due (adds the Dice columns to ``row``); whether this epoch is the best so far.
        Without validation data every epoch is (the last one is kept)."""
        config = setup.config
        if not setup.data.has_validation:
            state.best.epoch = state.epoch
            return True
        if state.epoch % config.val_every != 0 and state.epoch != config.epochs:
            return False
        validation = validate(setup.model, setup.metadata, setup.data.volumes, setup.device, config.val_batch_size, setup.data.unlabelled)
        row.update(validation.log_fields())
        score = validation.score
        if score is None or not score > state.best.score:
            return False
        state.best = Best(score, state.epoch, validation.record(setup.metadata.classes))
        return True

    # -- the checkpoint and the end --

    def _checkpoint_metadata(self, setup: TrainingSetup, state: RunState, ms_per_slice: Optional[Dict[int, float]] = None, finished: bool = False) -> ModelMetadata:
        """The metadata stored with the best weights: depth metrics, recommended depth and the run's record.
        ``finished`` only in the checkpoint :meth:`_finish` writes: one saved after an epoch says it is
        unfinished, so a run killed mid-way leaves no card that looks finished (issue 23)."""
        config = setup.config
        prunable = any(isinstance(d, int) for d in validated_depths(setup.metadata))
        depth_metrics, recommended = depth_metrics_of(state.best.validation, ms_per_slice, config.depth_tolerance) if prunable else ({}, None)
        training = {
            "config": config.to_json(),
            "loss": setup.loss_kind,
            "data": setup.data_info,
            "epochs": state.epoch,
            "epochs_planned": config.epochs,
            "finished": finished,
            "steps": state.step,
            "best_epoch": state.best.epoch,
            "validation": state.best.validation,
            "seconds": round(time.perf_counter() - setup.started, 1),
            "device": str(setup.device),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        }
        if setup.base is not None:
            training["fine_tuning"] = self._lineage(setup, state)
            if recommended is None:  # nothing validated: the base's choice stands
                recommended = setup.base.metadata.recommended_depth
        return dataclasses.replace(setup.metadata, depth_metrics=depth_metrics, recommended_depth=recommended, training=training)

    def _lineage(self, setup: TrainingSetup, state: RunState) -> Dict[str, Any]:
        """``training["fine_tuning"]``: the base model (path, SHA-256), what the labels covered, the Dice before and after."""
        classes = setup.metadata.classes
        unlabelled = [classes[c - 1].name for c in setup.data.unlabelled]
        marked = setup.config.train_slices
        marked = None if marked is None else parse_slice_ranges(marked, max(v.slice_count for v in setup.data.volumes), option="--train-slices")
        record = lineage(setup.config.init, setup.base_sha256, [c.name for c in classes if c.name not in unlabelled], unlabelled, marked,
                         {"freeze_encoder": setup.config.freeze_encoder, "freeze_norm": setup.config.freeze_norm})
        before, after = state.baseline, state.best.validation
        if setup.config.corrected_classes is not None:  # the model's own class names, in its order
            wanted = {class_key(name) for name in setup.config.corrected_classes}
            record["classes_corrected"] = [c.name for c in classes if class_key(c.name) in wanted]
        main = (after or {}).get("by_depth", {}).get(depth_tag((after or {}).get("main_depth")), {}).get("per_class", {})
        record.update(base_depth_metrics={str(d): m for d, m in setup.base.metadata.depth_metrics.items()},  # info shows the base's table too
                      base_recommended_depth=setup.base.metadata.recommended_depth, classes_validated=[name for name, dice in main.items() if dice is not None])
        record.update(validation_before=before, validation_after=after,
                      dice_before=None if before is None else before["dice"], dice_after=None if after is None else after["dice"])
        return record

    def _measure_depths(self, setup: TrainingSetup) -> Optional[Dict[int, float]]:
        """ms/slice of every prune depth on a held-out slice's size (``None``: nothing to measure)."""
        if not setup.data.has_validation:
            return None
        shape = next(v.slices.shape[1:] for v in setup.data.volumes if v.val_slices.size)
        depths = [d for d in validated_depths(setup.metadata) if d is not None]
        if not depths:
            return None
        return measure_ms_per_slice(setup.model, setup.metadata, depths, setup.device, tuple(shape), batch_size=setup.config.val_batch_size)

    def _finish(self, setup: TrainingSetup, state: RunState) -> TrainResult:
        """The best weights, their speed per depth and the recommended depth, written as the final checkpoint."""
        if state.best_weights is None:
            state.best_weights = cpu_weights(setup.model)
        setup.model.load_state_dict(state.best_weights)
        final = self._checkpoint_metadata(setup, state, self._measure_depths(setup), finished=True)
        save_checkpoint(self.files.checkpoint, state.best_weights, final, overwrite=True)
        self.files.state.unlink(missing_ok=True)  # the run is over: its resume state (~3x the model) goes (issue 22, defect 14)
        best = state.best
        summary = f"wrote {self.files.checkpoint} (best epoch {best.epoch}"
        if best.validation:
            summary += f", validation Dice {best.validation['dice']:.4f}"
        if final.recommended_depth:
            summary += f", recommended depth L{final.recommended_depth}"
        self.reporter.log(summary + f"); log {self.files.log}; resume state removed (the run finished)")
        self.reporter.done(checkpoint=str(self.files.checkpoint), log=str(self.files.log), best_epoch=best.epoch,
                           validation=best.validation, depth_metrics={str(k): v for k, v in final.depth_metrics.items()},
                           recommended_depth=final.recommended_depth, seconds=round(time.perf_counter() - setup.started, 1), resume_state="removed")
        return TrainResult(self.files.checkpoint, self.files.log, self.files.state, state.history, final)
