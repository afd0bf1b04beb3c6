"""UNetSegmentationLib: the engine behind the UNetSegmentation 3D Slicer extension.

2.5D (slice plus neighbours as channels) U-Net-family segmentation of CT and MR volumes:
read → slices → batches → network → labels → write, plus safe checkpoints and a process
runner the Slicer module drives. This package never imports ``slicer``, ``qt`` or ``vtk``,
and importing it is cheap: torch, MONAI and SimpleITK are imported by the submodules that
need them.
"""

__version__ = "0.1.0"
