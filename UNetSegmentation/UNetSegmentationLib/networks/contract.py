"""The network contract: what the engine, training and the panel ask of a segmentation network.

Every architecture in :mod:`~UNetSegmentationLib.networks.registry` is a ``torch.nn.Module`` that
satisfies :class:`SegmentationNetwork`; the prunable ones (UNet++, Zhou et al., DLMIA 2018 and
IEEE TMI 2020) also satisfy :class:`PrunableNetwork`, and those with a classification-guided module
(UNet 3+, Huang et al., ICASSP 2020) :class:`ClassificationGuided`. Code that needs a capability asks
``isinstance(network, PrunableNetwork)`` rather than testing attribute names one by one, and a test
checks each registered architecture against these protocols
(``Testing/test_architectures.py``).

Besides the protocol members, a network is built as ``cls(in_channels, out_channels, **kwargs)`` with
JSON-valued kwargs (they are stored in checkpoints), and the engine uses the ordinary
``torch.nn.Module`` API on it (``to``, ``eval``, ``train``, ``parameters``, ``state_dict``,
``load_state_dict``).

This module imports no torch (the annotations are strings), so torch-free code may import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

if TYPE_CHECKING:  # annotations only: importing the contract must not import torch
    import torch

    from UNetSegmentationLib.networks.blocks import TrainingOutput

    #: what ``forward`` returns in training mode (see :func:`~.blocks.as_training_output`)
    TrainingResult = Union[torch.Tensor, Sequence[torch.Tensor], TrainingOutput]


@runtime_checkable
class SegmentationNetwork(Protocol):
    """A 2D (2.5D) segmentation network: slices in, per-pixel logits out.

    Shapes, for ``x`` of shape ``(B, in_channels, H, W)`` with H and W divisible by
    :meth:`required_multiple` (the engine pads to it and crops back):

    - evaluation mode (``training`` False): the main logits ``(B, out_channels, H, W)``;
      ``out_channels`` is 1 for one sigmoid class, classes + 1 for softmax over background and classes;
    - training mode: a tensor as above, a list of full-size head logits (coarsest first, main last),
      or a :class:`~UNetSegmentationLib.networks.blocks.TrainingOutput` (heads plus a slice-level
      classification logit).
    """

    training: bool

    def __call__(self, x: "torch.Tensor") -> "Union[torch.Tensor, TrainingResult]":
        ...

    def forward(self, x: "torch.Tensor") -> "Union[torch.Tensor, TrainingResult]":
        """Logits of ``x`` ``(B, in_channels, H, W)``: see the class docstring for the shapes per mode."""
        ...

    def required_multiple(self, depth: Optional[int] = None) -> int:
        """H and W must be divisible by this (for the depth-``depth`` sub-network where prunable)."""
        ...


@runtime_checkable
class PrunableNetwork(SegmentationNetwork, Protocol):
    """A deep-supervised network whose depth-L sub-network runs alone (UNet++ pruning).

    Depth L (1 ≤ L ≤ D) keeps only the nodes the L-th head needs, so it is exactly head L of the full
    network at a fraction of the cost; "accurate" inference averages every head's probabilities
    (:data:`UNetSegmentationLib.model.depth.ACCURATE`).
    """

    @property
    def depths(self) -> Tuple[int, ...]:
        """The depths it can be pruned to, shallowest first: ``(1, …, D)``."""
        ...

    def forward_depth(self, x: "torch.Tensor", depth: int) -> "torch.Tensor":
        """Logits ``(B, out_channels, H, W)`` of head ``depth``, computing only that sub-network."""
        ...

    def forward_heads(self, x: "torch.Tensor") -> "List[torch.Tensor]":
        """Logits of every head, shallowest first, each ``(B, out_channels, H, W)``, from one pass."""
        ...

    def parameter_count(self, depth: Optional[int] = None) -> int:
        """Parameters of the depth-``depth`` sub-network; of the whole network when ``depth`` is None."""
        ...

    def modules_for_depth(self, depth: int) -> "Iterator[torch.nn.Module]":
        """The modules the depth-``depth`` sub-network uses (parameter counts, sub-network export)."""
        ...


@runtime_checkable
class ClassificationGuided(SegmentationNetwork, Protocol):
    """A network with a slice-level "structure present" classifier that can blank empty slices.

    ``classification_guidance``: when True, evaluation-mode ``forward`` returns all-background logits
    for the slices the classifier judges empty. The engine may set it to True on any such network
    ("guide if you can"): a network built without its classifier keeps it False.
    """

    classification_guidance: bool
