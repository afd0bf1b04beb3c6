"""Progress of a long run, as the user asked to see it: a terminal bar, JSON lines, or nothing.

Every command reports through one :class:`Reporter` interface; the JSON-lines reporter writes the
schema of :mod:`.events` (the Slicer module reads it), the bar reporter draws a tqdm bar on stderr.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO

from UNetSegmentationLib.protocol.events import DONE, ERROR, LOG, PROGRESS, START, WARNING, encode, make_event

PROGRESS_MODES = ("bar", "json", "none")
#: progress fields shown beside the terminal bar when a command sends them
BAR_FIELDS = ("epoch", "loss", "val_dice", "case", "depth", "slices_per_s")


class Reporter:
    """Silent reporter; the base of the others. ``progress`` computes rate and time left."""

    def __init__(self) -> None:
        self._started: Optional[float] = None
        self.total = 0
        self.unit = "slice"
        self.initial = 0

    def start(self, command: str, total: int, unit: str = "slice", initial: int = 0, **info: Any) -> None:
        """The run begins: ``total`` ``unit``s of work, ``initial`` of them done before this process
        (a resumed training), so that the rate and the time left count only this process's work
        (see :mod:`.events` for what ``info`` holds)."""
        self.total, self.unit, self.initial = total, unit, initial
        self._started = time.perf_counter()

    def progress(self, done: int, **extra: Any) -> dict:
        """``done`` of the total are finished; returns the ``progress`` event's fields."""
        elapsed = time.perf_counter() - (self._started or time.perf_counter())
        worked = done - self.initial
        rate = worked / elapsed if elapsed > 0 and worked > 0 else 0.0
        eta = (self.total - done) / rate if rate else None
        return {"done": done, "total": self.total, "unit": self.unit, "rate_per_s": round(rate, 3), "eta_s": None if eta is None else round(eta, 2), **extra}

    def log(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        pass

    def done(self, **summary: Any) -> None:
        pass

    def error(self, message: str) -> None:
        pass


class JsonLinesReporter(Reporter):
    """One JSON object per line (:mod:`.events`), for the process runner. Nothing else may be printed to this stream."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        super().__init__()
        self.stream = stream or sys.stdout

    def emit(self, kind: str, **fields: Any) -> None:
        self.stream.write(encode(make_event(kind, **fields)) + "\n")
        self.stream.flush()

    def start(self, command: str, total: int, unit: str = "slice", initial: int = 0, **info: Any) -> None:
        super().start(command, total, unit, initial)
        self.emit(START, command=command, total=total, unit=unit, **({"initial": initial} if initial else {}), **info)

    def progress(self, done: int, **extra: Any) -> dict:
        fields = super().progress(done, **extra)
        self.emit(PROGRESS, **fields)
        return fields

    def log(self, message: str) -> None:
        self.emit(LOG, message=message)

    def warning(self, message: str) -> None:
        self.emit(WARNING, message=message)

    def done(self, **summary: Any) -> None:
        self.emit(DONE, **summary)

    def error(self, message: str) -> None:
        self.emit(ERROR, message=message)


class BarReporter(Reporter):
    """A tqdm progress bar on stderr; log lines, warnings and errors as lines on stderr."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self._bar = None

    def start(self, command: str, total: int, unit: str = "slice", initial: int = 0, **info: Any) -> None:
        from tqdm import tqdm

        super().start(command, total, unit, initial)
        depth = f", depth {info['depth']}" if info.get("depth") is not None else ""
        where = f" on {info['device']}" if info.get("device") else ""
        self._bar = tqdm(total=total, initial=initial, unit=unit, file=self.stream, desc=f"{info.get('arch', command)}{depth}{where}")

    def progress(self, done: int, **extra: Any) -> dict:
        fields = super().progress(done, **extra)
        if self._bar is not None:
            shown = {k: v for k, v in extra.items() if isinstance(v, (int, float, str)) and k in BAR_FIELDS}
            if shown:  # e.g. training's loss and epoch beside the bar
                self._bar.set_postfix(shown, refresh=False)
            self._bar.update(done - self._bar.n)
        return fields

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream)

    def log(self, message: str) -> None:
        self._line(message)

    def warning(self, message: str) -> None:
        self._line(f"warning: {message}")

    def done(self, **summary: Any) -> None:
        self._close()
        outputs = ", ".join(str(summary[k]) for k in ("output", "probabilities") if summary.get(k))
        if outputs:
            print(f"wrote {outputs} in {summary.get('timings', {}).get('total_s', 0):.1f} s", file=self.stream)

    def error(self, message: str) -> None:
        self._close()


def make_reporter(mode: str, stream: Optional[TextIO] = None) -> Reporter:
    """The reporter for ``--progress bar|json|none``."""
    return {"bar": BarReporter, "json": JsonLinesReporter, "none": Reporter}[mode](*(() if mode == "none" else (stream,)))
