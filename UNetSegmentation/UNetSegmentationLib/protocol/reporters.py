"""Progress of a long run: a terminal bar, JSON lines for the Slicer module, or nothing.

JSON-lines events (one object per line on stdout, flushed at once)::

    {"event": "start", "slices": 120, "device": "cpu", "arch": "unetplusplus", "depth": 2, ...}
    {"event": "progress", "done": 8, "total": 120, "slices_per_s": 31.2, "eta_s": 3.6}
    {"event": "warning", "message": "..."}
    {"event": "done", "output": "/path/out.seg.nrrd", "timings": {"read_s": 0.1, ...}}
    {"event": "error", "message": "..."}
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Optional, TextIO

PROGRESS_MODES = ("bar", "json", "none")


class Reporter:
    """Silent reporter; the base of the others. ``progress`` computes rate and ETA."""

    def __init__(self) -> None:
        self._started: Optional[float] = None
        self.total = 0

    def start(self, slices: int, **info: Any) -> None:
        self.total = slices
        self._started = time.perf_counter()

    def progress(self, done: int) -> dict:
        elapsed = time.perf_counter() - (self._started or time.perf_counter())
        rate = done / elapsed if elapsed > 0 and done else 0.0
        eta = (self.total - done) / rate if rate else None
        return {"done": done, "total": self.total, "slices_per_s": round(rate, 3), "eta_s": None if eta is None else round(eta, 2)}

    def warning(self, message: str) -> None:
        pass

    def done(self, **info: Any) -> None:
        pass

    def error(self, message: str) -> None:
        pass


class JsonLinesReporter(Reporter):
    """One JSON object per line, for the process runner. Nothing else may be printed to this stream."""

    def __init__(self, stream: TextIO = None) -> None:
        super().__init__()
        self.stream = stream or sys.stdout

    def emit(self, event: str, **fields: Any) -> None:
        self.stream.write(json.dumps({"event": event, **fields}) + "\n")
        self.stream.flush()

    def start(self, slices: int, **info: Any) -> None:
        super().start(slices)
        self.emit("start", slices=slices, **info)

    def progress(self, done: int) -> dict:
        fields = super().progress(done)
        self.emit("progress", **fields)
        return fields

    def warning(self, message: str) -> None:
        self.emit("warning", message=message)

    def done(self, **info: Any) -> None:
        self.emit("done", **info)

    def error(self, message: str) -> None:
        self.emit("error", message=message)


class BarReporter(Reporter):
    """A tqdm progress bar on stderr; warnings and errors as lines on stderr."""

    def __init__(self, stream: TextIO = None) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self._bar = None

    def start(self, slices: int, **info: Any) -> None:
        from tqdm import tqdm

        super().start(slices)
        depth = f", depth {info['depth']}" if info.get("depth") is not None else ""
        self._bar = tqdm(total=slices, unit="slice", file=self.stream, desc=f"{info.get('arch', 'segmenting')}{depth} on {info.get('device', '?')}")

    def progress(self, done: int) -> dict:
        fields = super().progress(done)
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
        return fields

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def warning(self, message: str) -> None:
        (self._bar.write if self._bar is not None else lambda m: print(m, file=self.stream))(f"warning: {message}")

    def done(self, **info: Any) -> None:
        self._close()
        outputs = ", ".join(str(info[k]) for k in ("output", "probabilities") if info.get(k))
        print(f"wrote {outputs} in {info.get('timings', {}).get('total_s', 0):.1f} s", file=self.stream)

    def error(self, message: str) -> None:
        self._close()


def make_reporter(mode: str) -> Reporter:
    return {"bar": BarReporter, "json": JsonLinesReporter, "none": Reporter}[mode]()
