"""The training loop behind ``unetseg train``.

Reads and checks every case first, then trains on random 2.5D crops (see :mod:`.data`) with the
architecture's loss on every head (see :mod:`.losses`), AdamW/Adam and a poly or cosine schedule
(AMP on CUDA). After each validation it writes, atomically:

- the best-by-validation checkpoint (``OUT.safetensors``: weights + metadata the engine needs);
- the resume state (``OUT.resume.pt``: weights, optimizer, schedule, history; read back with
  ``torch.load(weights_only=True)``, never unpickling objects);
- the CSV log of epochs.

Runs are repeatable: every epoch re-seeds the sampler, the augmentations and torch from
``(seed, epoch)``, so a run resumed with ``--resume`` continues exactly where it stopped (on the
same device and thread count, bit for bit on CPU).

For deep-supervised, prunable networks (UNet++), validation reports the Dice of every depth; at the
end the ms/slice of every depth is measured, both go into ``metadata.depth_metrics``, and
``metadata.recommended_depth`` is the shallowest depth within a tolerance of the best Dice — the
UNet++ paper's pruning procedure — which ``predict`` then uses by default.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.metadata import ModelMetadata, Normalization, out_channels_for
from UNetSegmentationLib.training.data import (
    AugmentOptions, Case, PreparedVolume, SliceSampler, held_out_blocks, load_case, prepare_volume, resolve_classes,
)

#: config entries that may change between a run and its ``--resume``
RESUMABLE_CHANGES = {"epochs", "stop_after", "threads", "device", "progress", "log", "state"}


@dataclass
class TrainConfig:
    """Everything ``unetseg train`` can be told (JSON-serialisable; stored in the checkpoint)."""

    arch: str = "unetplusplus"
    features: Optional[List[int]] = None
    context: int = 1
    norm: str = "ct:-1000,1000"
    classes: Optional[List[str]] = None
    init: Optional[str] = None
    other_labels: str = "error"
    epochs: int = 50
    steps_per_epoch: int = 50
    batch_size: int = 8
    crop: Tuple[int, int] = (96, 96)
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "poly"
    loss: str = "auto"
    foreground: float = 0.5
    augment: AugmentOptions = field(default_factory=AugmentOptions)
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    val_every: int = 1
    val_slices: Optional[float] = None
    val_blocks: int = 3
    val_gap: Optional[int] = None
    val_batch_size: int = 4
    depth_tolerance: float = 0.01
    axis: Optional[int] = None
    threads: Optional[int] = None
    stop_after: Optional[int] = None
    log: Optional[str] = None
    state: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["crop"] = list(self.crop)
        return data


@dataclass
class TrainResult:
    checkpoint: Path
    log: Path
    state: Path
    history: List[dict]
    metadata: ModelMetadata


# --- progress --------------------------------------------------------------------------------------------


class TrainingProgress:
    """A tqdm bar per epoch (``bar``), JSON lines on stdout (``json``), or nothing (``none``)."""

    def __init__(self, mode: str = "bar", stream=None) -> None:
        self.mode = mode
        self.stream = stream
        self._bar = None
        self.last_dice: Optional[float] = None

    def _emit(self, event: str, **fields) -> None:
        out = self.stream or sys.stdout
        out.write(json.dumps({"event": event, **fields}) + "\n")
        out.flush()

    def message(self, text: str) -> None:
        if self.mode == "json":
            self._emit("message", message=text)
        elif self.mode == "bar":
            (self._bar.write if self._bar is not None else lambda t: print(t, file=self.stream or sys.stderr))(text)

    def warning(self, text: str) -> None:
        if self.mode == "json":
            self._emit("warning", message=text)
        else:
            print(f"warning: {text}", file=self.stream or sys.stderr)

    def start(self, **info) -> None:
        if self.mode == "json":
            self._emit("start", **info)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="step", file=self.stream or sys.stderr, leave=False, dynamic_ncols=True)

    def step(self, epoch: int, step: int, global_step: int, total_steps: int, loss: float) -> None:
        if self.mode == "bar" and self._bar is not None:
            postfix = {"loss": f"{loss:.4f}"}
            if self.last_dice is not None:
                postfix["val_dice"] = f"{self.last_dice:.4f}"
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(1)
        elif self.mode == "json" and (step == 1 or global_step % 10 == 0 or global_step == total_steps):
            self._emit("progress", epoch=epoch, done=global_step, total=total_steps, loss=round(loss, 5))

    def epoch_end(self, row: dict) -> None:
        if row.get("val_dice") is not None:
            self.last_dice = row["val_dice"]
        if self.mode == "bar":
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            dice = f"  val_dice {row['val_dice']:.4f}" if row.get("val_dice") is not None else ""
            depths = "".join(f"  L{k[10:]} {v:.3f}" for k, v in row.items() if k.startswith("val_dice_L") and v is not None)
            print(f"epoch {row['epoch']:>3}  step {row['step']:>6}  loss {row['loss']:.4f}{dice}{depths}  {row['seconds']:.0f}s{'  *best' if row.get('best') else ''}", file=self.stream or sys.stderr)
        elif self.mode == "json":
            self._emit("epoch", **row)

    def done(self, **info) -> None:
        if self.mode == "json":
            self._emit("done", **info)
        elif self.mode == "bar":
            print(info.get("text", ""), file=self.stream or sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# --- helpers ---------------------------------------------------------------------------------------------


def default_side_path(output: Path, suffix: str) -> Path:
    """``model.safetensors`` → ``model.csv`` / ``model.resume.pt``."""
    name = output.name[: -len(".safetensors")] if output.name.endswith(".safetensors") else output.stem
    return output.with_name(name + suffix)


def round_crop(crop: Sequence[int], multiple: int) -> Tuple[int, int]:
    """The crop, rounded up so the network's poolings divide it."""
    return tuple(int(math.ceil(int(c) / multiple) * multiple) for c in crop)


def _schedule(kind: str, total_steps: int):
    if kind == "poly":
        return lambda step: max(0.0, 1.0 - step / max(total_steps, 1)) ** 0.9
    if kind == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    if kind == "constant":
        return lambda step: 1.0
    raise UserError(f"--schedule must be poly, cosine or constant; got {kind!r}")


def _atomic_torch_save(obj, path: Path) -> None:
    from UNetSegmentationLib.io.outputs import atomic_output

    with atomic_output([path], overwrite=True) as (temporary,):
        torch.save(obj, str(temporary))


def _write_log(history: List[dict], path: Path) -> None:
    from UNetSegmentationLib.io.outputs import atomic_output

    columns: List[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    with atomic_output([path], overwrite=True) as (temporary,):
        with open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            for row in history:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def _nanmean(values) -> Optional[float]:
    values = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


def _versions() -> Dict[str, str]:
    import monai

    from UNetSegmentationLib import __version__ as version

    return {"unetseg": version, "torch": torch.__version__, "monai": monai.__version__}


# --- the trainer ------------------------------------------------------------------------------------------


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
        progress: Optional[TrainingProgress] = None,
        data_description: Optional[dict] = None,
    ) -> None:
        self.config = config
        self.train_cases = list(train_cases)
        self.val_cases = list(val_cases)
        self.output = Path(output)
        self.resume = resume
        self.overwrite = overwrite
        self.progress = progress or TrainingProgress("none")
        self.data_description = data_description or {}
        self.log_path = Path(config.log) if config.log else default_side_path(self.output, ".csv")
        self.state_path = Path(config.state) if config.state else default_side_path(self.output, ".resume.pt")

    # -- checks before any work --

    def _check_outputs(self) -> None:
        from UNetSegmentationLib.io.outputs import check_output_path

        replace = self.overwrite or self.resume
        if self.resume and not self.state_path.is_file():
            raise UserError(f"--resume: no resume state {self.state_path} (it is written after every epoch of a run with the same output)")
        if not replace and self.state_path.exists():
            raise UserError(f"{self.state_path} holds the state of an earlier run; pass --resume to continue it or --overwrite to start over")
        check_output_path(self.output, replace, what="checkpoint", extensions=(".safetensors",))
        check_output_path(self.log_path, replace, what="training log", extensions=(".csv",))
        check_output_path(self.state_path, True, what="resume state", extensions=(".pt",))
        if len({self.output.resolve(), self.log_path.resolve(), self.state_path.resolve()}) < 3:
            raise UserError("the checkpoint, the log and the resume state must be three different files")

    # -- data and model --

    def _metadata(self, classes, init_metadata: Optional[ModelMetadata]) -> ModelMetadata:
        from UNetSegmentationLib.networks.registry import get_architecture

        config = self.config
        if init_metadata is not None:
            return dataclasses.replace(init_metadata, depth_metrics={}, recommended_depth=None, training={})
        architecture = get_architecture(config.arch)
        kwargs = dict(architecture.default_kwargs)
        if config.features:
            kwargs["features"] = list(config.features)
        kwargs.update(in_channels=2 * config.context + 1, out_channels=out_channels_for(len(classes)))
        return ModelMetadata(config.arch, kwargs, config.context, Normalization.parse(config.norm), list(classes))

    def _load_data(self, init_metadata: Optional[ModelMetadata]):
        config = self.config
        loaded_train = [load_case(case) for case in self.train_cases]
        loaded_val = [load_case(case) for case in self.val_cases]
        everything = loaded_train + loaded_val
        classes, lookups = resolve_classes(
            [(item.case.name, item.label) for item in everything],
            names=config.classes,
            declared=init_metadata.classes if init_metadata else None,
            other_labels=config.other_labels,
        )
        metadata = self._metadata(classes, init_metadata)
        context = metadata.context
        gap = context if config.val_gap is None else config.val_gap
        volumes: List[PreparedVolume] = []
        for index, (item, lookup) in enumerate(zip(everything, lookups)):
            volume = prepare_volume(item, metadata.normalization, config.axis, lookup)
            if index < len(loaded_train):
                if config.val_slices:
                    volume.train_slices, volume.val_slices = held_out_blocks(volume.slice_count, config.val_slices, config.val_blocks, gap)
                else:
                    volume.train_slices = np.arange(volume.slice_count)
            else:
                volume.val_slices = np.arange(volume.slice_count)
            volumes.append(volume)
        return metadata, volumes

    # -- validation --

    def _depths(self, metadata: ModelMetadata) -> list:
        from UNetSegmentationLib.networks.registry import get_architecture, prune_depths_of

        return list(prune_depths_of(get_architecture(metadata.architecture), metadata.kwargs)) or [None]

    def _validate(self, model, metadata, volumes, device) -> Dict[Any, Tuple[Optional[float], np.ndarray]]:
        """Per depth: (mean Dice over classes, per-class Dice averaged over volumes) on the held-out slices."""
        from UNetSegmentationLib.evaluation.evaluate import dice_per_class, predict_slices
        from UNetSegmentationLib.backends.torch_predictor import SlicePredictor

        class_count = len(metadata.classes)
        results = {}
        for depth in self._depths(metadata):
            predictor = SlicePredictor(model, metadata, device, depth)
            per_volume = []
            for volume in volumes:
                if not volume.val_slices.size:
                    continue
                predicted = predict_slices(predictor, volume.slices, volume.mapping, volume.val_slices, self.config.val_batch_size)
                truth = np.asarray(volume.targets[volume.val_slices])
                per_volume.append(dice_per_class(predicted, truth, class_count))
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a class absent from every held-out slice: NaN, left out of the mean
                per_class = np.nanmean(np.stack(per_volume), axis=0)
            results[depth] = (_nanmean(per_class), per_class)
        model.train()
        return results

    # -- the run --

    def run(self) -> TrainResult:
        previous_threads = torch.get_num_threads()
        from monai.data.meta_obj import get_track_meta, set_track_meta

        previous_track_meta = get_track_meta()
        try:
            if self.config.threads:
                torch.set_num_threads(self.config.threads)
            set_track_meta(False)  # plain tensors out of the MONAI transforms: faster, nothing needs the metadata
            return self._run()
        finally:
            set_track_meta(previous_track_meta)
            torch.set_num_threads(previous_threads)
            self.progress.close()

    def _run(self) -> TrainResult:
        from UNetSegmentationLib.model.checkpoint import build_model, load_checkpoint, save_checkpoint
        from UNetSegmentationLib.backends.device import resolve_device
        from UNetSegmentationLib.networks.blocks import as_training_output
        from UNetSegmentationLib.networks.registry import build_network
        from UNetSegmentationLib.training.losses import SegmentationLoss, loss_kind
        from UNetSegmentationLib.training.selection import measure_ms_per_slice, select_depth

        config = self.config
        started = time.perf_counter()
        self._check_outputs()
        for name, value, low in (("--epochs", config.epochs, 1), ("--steps-per-epoch", config.steps_per_epoch, 1), ("--batch-size", config.batch_size, 1), ("--val-every", config.val_every, 1)):
            if not isinstance(value, int) or value < low:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= config.foreground <= 1:
            raise UserError(f"--foreground must be a probability in [0, 1], got {config.foreground}")
        if not config.lr > 0:
            raise UserError(f"--lr must be positive, got {config.lr}")
        device = resolve_device(config.device)
        init_checkpoint = load_checkpoint(config.init) if config.init else None
        init_metadata = init_checkpoint.metadata if init_checkpoint else None
        if init_metadata is not None:  # record what the run really uses
            n = init_metadata.normalization
            norm = f"ct:{n.window[0]:g},{n.window[1]:g}" if n.kind == "ct" else f"mr:{n.percentiles[0]:g},{n.percentiles[1]:g}"
            self.config = config = dataclasses.replace(
                config, arch=init_metadata.architecture, context=init_metadata.context, norm=norm,
                features=init_metadata.kwargs.get("features"), classes=[c.name for c in init_metadata.classes],
            )

        metadata, volumes = self._load_data(init_metadata)
        class_count = len(metadata.classes)
        if not any(v.train_slices.size for v in volumes):
            raise UserError("no training slices: give training cases (the validation cases are not trained on)")
        has_validation = any(v.val_slices.size for v in volumes)
        train_volumes = [v for v in volumes if v.train_slices.size]
        metadata.training_spacing = [float(np.median([v.spacing[1] for v in train_volumes])), float(np.median([v.spacing[2] for v in train_volumes]))]

        torch.manual_seed(config.seed)
        model = build_model(init_checkpoint) if init_checkpoint else build_network(metadata.architecture, metadata.kwargs)
        model = model.to(device).train()
        crop = round_crop(config.crop, model.required_multiple(None))
        kind = loss_kind(metadata.architecture, config.loss)
        criterion = SegmentationLoss(kind, metadata.out_channels, crop)
        sampler = SliceSampler(volumes, metadata.context, crop, class_count, config.foreground, config.augment)
        for channel in sampler.missing_classes:
            self.progress.warning(f"class {metadata.classes[channel - 1].name!r} appears in no training slice: the model cannot learn it")
        if not has_validation:
            self.progress.warning("no validation data (give a 'validation' list, --val-images/--val-labels, or --val-slices): the last epoch is kept and no depth is recommended")

        optimizer_class = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}.get(config.optimizer)
        if optimizer_class is None:
            raise UserError(f"--optimizer must be adamw or adam; got {config.optimizer!r}")
        optimizer = optimizer_class(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        total_steps = config.epochs * config.steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config.schedule, total_steps))
        use_amp = bool(config.amp and device.type == "cuda")
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

        held_out = [
            {"case": v.name, "image": v.image_path.name, "slices": [int(s) for s in v.val_slices]}
            for v in volumes[: len(self.train_cases)]
            if v.val_slices.size
        ]
        data_info = {
            **self.data_description,
            "training": [{"case": v.name, "image": v.image_path.name, "train_slices": int(v.train_slices.size)} for v in volumes[: len(self.train_cases)]],
            "validation": [{"case": v.name, "image": v.image_path.name} for v in volumes[len(self.train_cases):]],
            "held_out_slices": held_out,
        }
        fingerprint = {
            "config": {k: v for k, v in config.to_json().items() if k not in RESUMABLE_CHANGES},
            "cases": [[str(c.name), str(c.image), str(c.label)] for c in self.train_cases + self.val_cases],
        }

        epoch, global_step, history = 0, 0, []
        best: Dict[str, Any] = {"score": -math.inf, "epoch": None, "validation": None}
        best_state: Optional[Dict[str, torch.Tensor]] = None
        if self.resume:
            state = torch.load(str(self.state_path), map_location="cpu", weights_only=True)
            if json.loads(state["fingerprint"]) != json.loads(json.dumps(fingerprint)):
                saved = json.loads(state["fingerprint"])
                differences = sorted(k for k in set(saved["config"]) | set(fingerprint["config"]) if saved["config"].get(k) != json.loads(json.dumps(fingerprint["config"])).get(k))
                if saved["cases"] != json.loads(json.dumps(fingerprint["cases"])):
                    differences.append("the cases")
                raise UserError(f"--resume: this run differs from the saved one in {', '.join(differences)}; only {', '.join(sorted(RESUMABLE_CHANGES))} may change")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            epoch, global_step = int(state["epoch"]), int(state["step"])
            history = json.loads(state["history"])
            best = json.loads(state["best"])
            best["score"] = -math.inf if best["score"] is None else best["score"]
            if self.output.is_file() and best["epoch"] is not None:
                best_state = load_checkpoint(self.output).state_dict
            scheduler.load_state_dict(state["scheduler"])
            if epoch >= config.epochs:
                self.progress.message(f"the saved run already finished {epoch} epoch(s); raise --epochs to train longer")
            else:
                self.progress.message(f"resuming after epoch {epoch} (step {global_step})")

        parameters = sum(p.numel() for p in model.parameters())
        self.progress.start(
            arch=metadata.architecture, classes=[c.name for c in metadata.classes], parameters=parameters, device=str(device),
            epochs=config.epochs, steps_per_epoch=config.steps_per_epoch, crop=list(crop), loss=kind,
            training_slices=int(sum(v.train_slices.size for v in volumes)), validation_slices=int(sum(v.val_slices.size for v in volumes)),
        )

        def training_info(epochs_done: int) -> dict:
            return {
                "config": config.to_json(),
                "loss": kind,
                "data": data_info,
                "epochs": epochs_done,
                "steps": global_step,
                "best_epoch": best["epoch"],
                "validation": best["validation"],
                "seconds": round(time.perf_counter() - started, 1),
                "device": str(device),
                "versions": _versions(),
            }

        def checkpoint_metadata(validation, ms: Optional[dict] = None, epochs_done: int = 0) -> ModelMetadata:
            depth_metrics, recommended = {}, None
            if validation and any(isinstance(d, int) for d in self._depths(metadata)):
                for depth_name, entry in validation["by_depth"].items():
                    if entry["dice"] is None:
                        continue
                    metrics = {"dice": entry["dice"]}
                    if ms and int(depth_name[1:]) in ms:
                        metrics["ms_per_slice"] = round(ms[int(depth_name[1:])], 4)
                    depth_metrics[int(depth_name[1:])] = metrics
                recommended = select_depth({d: m["dice"] for d, m in depth_metrics.items()}, config.depth_tolerance)
            return dataclasses.replace(metadata, depth_metrics=depth_metrics, recommended_depth=recommended, training=training_info(epochs_done))

        last_epoch = config.epochs if config.stop_after is None else min(config.epochs, epoch + config.stop_after)
        while epoch < last_epoch:
            epoch += 1
            epoch_started = time.perf_counter()
            epoch_seed = (config.seed * 1_000_003 + epoch) % (2**63)
            torch.manual_seed(epoch_seed)
            sampler.set_random_state(epoch_seed)
            model.train()
            self.progress.epoch_start(epoch, config.epochs, config.steps_per_epoch)
            losses, parts_sum = [], {}
            for step in range(1, config.steps_per_epoch + 1):
                inputs, targets = sampler.batch(config.batch_size)
                inputs = torch.from_numpy(inputs).to(device, non_blocking=True)
                targets = torch.from_numpy(targets).to(device, non_blocking=True)
                autocast = torch.autocast("cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext()
                with autocast:
                    output = as_training_output(model(inputs))
                loss, parts = criterion(output, targets)
                if not torch.isfinite(loss):
                    raise UserError(f"the loss became {float(loss)} at step {global_step + 1}: lower --lr (now {config.lr}) or check the data")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                global_step += 1
                losses.append(float(loss.detach()))
                for name, value in parts.items():
                    parts_sum[name] = parts_sum.get(name, 0.0) + value
                self.progress.step(epoch, step, global_step, total_steps, losses[-1])

            row: Dict[str, Any] = {
                "epoch": epoch,
                "step": global_step,
                "lr": optimizer.param_groups[0]["lr"],
                "loss": float(np.mean(losses)),
                **{f"loss_{k}": v / len(losses) for k, v in parts_sum.items()},
            }
            validate = has_validation and (epoch % config.val_every == 0 or epoch == config.epochs)
            improved = False
            if validate:
                results = self._validate(model, metadata, volumes, device)
                main_depth = max((d for d in results if d is not None), default=None)
                score = results[main_depth][0]
                row["val_dice"] = score
                for depth, (dice, _) in results.items():
                    if depth is not None:
                        row[f"val_dice_L{depth}"] = dice
                if score is not None and score > best["score"]:
                    improved = True
                    best["score"], best["epoch"] = score, epoch
                    best["validation"] = {
                        "dice": score,
                        "main_depth": main_depth,
                        "by_depth": {
                            ("default" if d is None else f"L{d}"): {"dice": dice, "per_class": {c.name: (None if not np.isfinite(v) else float(v)) for c, v in zip(metadata.classes, per_class)}}
                            for d, (dice, per_class) in results.items()
                        },
                    }
            elif not has_validation:
                improved = True
                best["epoch"] = epoch
            row["seconds"] = round(time.perf_counter() - epoch_started, 2)
            row["best"] = improved
            history.append(row)
            if improved:
                best_state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
                save_checkpoint(self.output, best_state, checkpoint_metadata(best["validation"], epochs_done=epoch), overwrite=True)
            _write_log(history, self.log_path)
            _atomic_torch_save(
                {
                    "model": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "epoch": epoch,
                    "step": global_step,
                    "history": json.dumps(history),
                    "best": json.dumps({**best, "score": None if best["score"] == -math.inf else best["score"]}),
                    "fingerprint": json.dumps(fingerprint),
                },
                self.state_path,
            )
            self.progress.epoch_end(row)

        if epoch < config.epochs:
            self.progress.done(text=f"stopped after epoch {epoch} of {config.epochs} (--stop-after); continue with --resume", stopped=True, epoch=epoch)
            return TrainResult(self.output, self.log_path, self.state_path, history, read_metadata_or(self.output, metadata))

        # final: the best weights, their speed per depth, the recommended depth
        if best_state is None:
            best_state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best_state)
        ms = None
        if has_validation:
            shape = next(v.slices.shape[1:] for v in volumes if v.val_slices.size)
            depths = [d for d in self._depths(metadata) if d is not None]
            if depths:
                ms = measure_ms_per_slice(model, metadata, depths, device, tuple(shape), batch_size=config.val_batch_size)
        final = checkpoint_metadata(best["validation"], ms, epochs_done=epoch)
        save_checkpoint(self.output, best_state, final, overwrite=True)
        summary = f"wrote {self.output} (best epoch {best['epoch']}"
        if best["validation"]:
            summary += f", validation Dice {best['validation']['dice']:.4f}"
        if final.recommended_depth:
            summary += f", recommended depth L{final.recommended_depth}"
        summary += f"); log {self.log_path}"
        self.progress.done(text=summary, checkpoint=str(self.output), log=str(self.log_path), best_epoch=best["epoch"],
                           validation=best["validation"], depth_metrics={str(k): v for k, v in final.depth_metrics.items()},
                           recommended_depth=final.recommended_depth, seconds=round(time.perf_counter() - started, 1))
        return TrainResult(self.output, self.log_path, self.state_path, history, final)


def read_metadata_or(path: Path, fallback: ModelMetadata) -> ModelMetadata:
    from UNetSegmentationLib.model.checkpoint import read_metadata

    return read_metadata(path) if Path(path).is_file() else fallback
