"""The next batch prepared on a background thread while the network computes the current one."""

from __future__ import annotations

import os
import queue
import threading
from typing import Iterable, Iterator


def prefetch(items: Iterable, ahead: int = 1) -> Iterator:
    """Iterate ``items``, computed on a background thread up to ``ahead`` items in advance.

    numpy releases the GIL in the work this is used for (gathering, clipping, scaling and padding
    slices), so the next batch is prepared while the network computes the current one. An
    exception in the producer is re-raised in the consumer; closing the iterator early stops the
    producer. ``ahead=0`` (or the environment variable ``UNETSEG_NO_PREFETCH=1``) iterates in the
    calling thread.
    """
    if ahead < 1 or os.environ.get("UNETSEG_NO_PREFETCH", "") not in ("", "0"):
        yield from items
        return
    slots: "queue.Queue" = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    finished = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((finished, None))
        except BaseException as error:  # re-raised in the consumer
            put((finished, error))

    worker = threading.Thread(target=produce, name="unetseg-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if item is finished:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=10)
