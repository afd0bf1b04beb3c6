"""How the weights move: the optimiser, the learning-rate schedule over all steps, and mixed precision
(CUDA; bf16 on a CPU that computes it natively)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Optional

import torch

from UNetSegmentationLib.backends.device import SYSTEM, Capabilities, PlainDevice
from UNetSegmentationLib.backends.plan import autocast_precision
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.training.config import TrainConfig

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


def lr_factor(kind: str, total_steps: int) -> Callable[[int], float]:
    """The factor of the initial learning rate after ``step`` steps: ``poly`` (power 0.9), ``cosine`` or ``constant``.

    Plain functions, not objects: ``LambdaLR`` then keeps them out of its state, as resume states expect.
    """
    if kind == "poly":
        return lambda step: max(0.0, 1.0 - step / max(total_steps, 1)) ** 0.9
    if kind == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    if kind == "constant":
        return lambda step: 1.0
    raise UserError(f"--schedule must be poly, cosine or constant; got {kind!r}")


@dataclass
class Optimization:
    """Optimiser, schedule and gradient scaler of one run; ``amp_dtype`` is the autocast type (``None``: full precision)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: Optional[torch.dtype]
    device_type: str = "cuda"

    @classmethod
    def build(cls, config: TrainConfig, model: torch.nn.Module, device: torch.device, capabilities: Capabilities = SYSTEM) -> "Optimization":
        """AdamW/Adam over ``model``'s trainable parameters; autocast unless ``--no-amp``, in the
        precision the device computes natively, as prediction decides it (the plan's
        :func:`~UNetSegmentationLib.backends.plan.autocast_precision`): bf16 on a GPU or CPU with native
        bf16 (~1.8x the steps/s on an AMX CPU), fp16 with a gradient scaler on an older GPU, none on
        other CPUs. ``capabilities``: the hardware's answers (a fake one in tests)."""
        optimizer_class = OPTIMIZERS.get(config.optimizer)
        if optimizer_class is None:
            raise UserError(f"--optimizer must be adamw or adam; got {config.optimizer!r}")
        optimizer = optimizer_class([p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config.schedule, config.total_steps))
        precision = autocast_precision(PlainDevice(device.type, device.index), capabilities) if config.amp and device.type in ("cpu", "cuda") else "fp32"
        use_amp = precision != "fp32"
        amp_dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and device.type == "cuda" and amp_dtype == torch.float16)
        return cls(optimizer, scheduler, scaler, amp_dtype if use_amp else None, device.type)

    def autocast(self) -> ContextManager:
        """The context the forward pass runs in."""
        return torch.autocast(self.device_type, dtype=self.amp_dtype) if self.amp_dtype is not None else contextlib.nullcontext()

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        return self.optimizer.param_groups[0]["lr"]

    def step(self, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss``, then one step of the schedule."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def state_dict(self) -> Dict[str, Any]:
        """Optimiser, schedule and scaler state (the scaler's only when it is used), for the resume state."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.scheduler.load_state_dict(state["scheduler"])
