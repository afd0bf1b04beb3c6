"""The models a warm engine keeps loaded between requests: a small cache, least recently used out.

A model is the same model for a request when it comes from the same checkpoint file with the same
content and runs the same way: the key is the checkpoint's resolved path and SHA-256, the depth, the
UNet 3+ classification guidance and everything of the execution plan the user may ask for (device,
backend, precision, threads, slice workers, batch size: :class:`~..backends.plan.ExecutionRequest`).
A checkpoint replaced on disk (a fine-tuned model saved under the same name) therefore loads afresh.
The SHA-256 is read again only when the file's size, modification time or inode changed, so a cached
request pays a ``stat``, not a read of the checkpoint.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from UNetSegmentationLib.backends.plan import ExecutionRequest
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.io.file_digest import file_sha256
from UNetSegmentationLib.model.depth import Depth

if TYPE_CHECKING:  # the cache holds opened models; the command line reads its default without numpy
    from UNetSegmentationLib.inference.predict_file import SegmentationModel

#: models kept loaded by default: the panel's model and one other (a second model, or another depth)
DEFAULT_CAPACITY = 2


@dataclass(frozen=True)
class ModelKey:
    """What makes two requests' models the same model (see the module's text)."""

    path: str
    sha256: str
    depth: Depth
    classification_guidance: bool
    execution: ExecutionRequest

    def describe(self) -> dict:
        """For ``ping``'s answer: which models are loaded."""
        return {"checkpoint": self.path, "sha256": self.sha256[:16], "depth": self.depth, "backend": self.execution.backend, "precision": self.execution.precision}


class ModelCache:
    """Up to ``capacity`` opened models (:class:`~..inference.predict_file.SegmentationModel`), the
    least recently used given up first."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = max(1, int(capacity))
        self._models: "collections.OrderedDict[ModelKey, SegmentationModel]" = collections.OrderedDict()
        self._digests: Dict[str, Tuple[Tuple[int, int, int], str]] = {}

    def key(self, checkpoint: Path, options: SegmentationOptions) -> ModelKey:
        """The key of ``checkpoint`` run with ``options`` (reads the file only when it changed)."""
        path = str(Path(checkpoint).resolve())
        status = os.stat(path)
        stamp = (status.st_size, status.st_mtime_ns, status.st_ino)
        known = self._digests.get(path)
        if known is None or known[0] != stamp:
            known = (stamp, file_sha256(path))
            self._digests[path] = known
        return ModelKey(path, known[1], options.depth, options.classification_guidance, options.execution_request())

    def get(self, key: ModelKey) -> "Optional[SegmentationModel]":
        model = self._models.get(key)
        if model is not None:
            self._models.move_to_end(key)
        return model

    def put(self, key: ModelKey, model: "SegmentationModel") -> None:
        self._models[key] = model
        self._models.move_to_end(key)
        while len(self._models) > self.capacity:
            self._models.popitem(last=False)

    def describe(self) -> List[dict]:
        return [key.describe() for key in self._models]
