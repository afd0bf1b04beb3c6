"""What the panel says about a run in words: durations, time left, the progress text, and the log
line of each engine event (:mod:`~UNetSegmentationLib.protocol.events`). Torch-, numpy- and SimpleITK-free."""

from __future__ import annotations

from typing import Optional

from UNetSegmentationLib.protocol.events import DONE as DONE_EVENT
from UNetSegmentationLib.protocol.events import ERROR, LOG, START, WARNING, Event


def format_duration(seconds: float) -> str:
    """``"7 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


def format_eta(eta_s: Optional[float]) -> str:
    """Time left as the panel says it: ``"estimating time left"``, ``"less than 1 s left"``, ``"about 12 s left"``."""
    if eta_s is None:
        return "estimating time left"
    if eta_s < 1:
        return "less than 1 s left"
    return f"about {format_duration(eta_s)} left"


def progress_text(done: int, total: int, slices_per_s: Optional[float] = None, eta_s: Optional[float] = None) -> str:
    text = f"Segmenting: {done} of {total} slices, {format_eta(eta_s) if done < total else 'finishing'}"
    if slices_per_s:
        text += f" ({slices_per_s:.1f} slices/s)"
    return text


#: how the log names each command's work (``start`` events of other commands are described too)
COMMAND_VERBS = {"predict": "Segmenting", "train": "Training", "evaluate": "Evaluating"}


def describe_start(event: Event) -> str:
    """``"Segmenting 34 slices on cpu with unetplusplus at depth 2 (onnx backend, fp32 precision); slices along k"``, or the same for
    any command (``"Training 300 steps on cuda"``); missing fields are left out."""
    command = str(event.get("command") or "predict")
    verb = COMMAND_VERBS.get(command, f"Running {command}:")
    unit = str(event.get("unit") or "slice")
    total = event.get("total")
    amount = f"{total} {unit}{'' if total == 1 else 's'}" if total is not None else f"{unit}s"
    depth = event.get("depth")
    parts = [
        f"{verb} {amount}",
        f" on {event['device']}" if event.get("device") else "",
        f" with {event['arch']}" if event.get("arch") else "",
        f" at depth {depth}" if depth not in (None, "") else "",
        f" ({event['backend']} backend, {event.get('precision') or 'default'} precision)" if event.get("backend") else "",
        f"; {event['geometry']}" if event.get("geometry") else "",
    ]
    return "".join(parts)


def describe_event(event: Event) -> Optional[str]:
    """The log line for an engine event (None for events not worth a line, such as progress)."""
    kind = event.get("event")
    if kind == START:
        return describe_start(event)
    if kind == WARNING:
        return f"Warning: {event.get('message', '')}"
    if kind == ERROR:
        return f"Error: {event.get('message', '')}"
    if kind == DONE_EVENT:
        timings = event.get("timings") or {}
        parts = [f"{name[:-2].replace('_', ' ')} {value:.1f} s" for name, value in timings.items() if name.endswith("_s") and name != "total_s" and isinstance(value, (int, float))]
        total = timings.get("total_s")
        head = f"Segmentation computed in {total:.1f} s" if isinstance(total, (int, float)) else "Segmentation computed"
        return head + (f" ({', '.join(parts)})" if parts else "")
    if kind == LOG:
        return str(event.get("message", ""))
    return None
