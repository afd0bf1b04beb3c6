"""The Slicer side of the UNet Segmentation module, beside ``UNetSegmentation.py``.

Everything here may use ``slicer`` (and ``vtk``); none of it uses Qt, so that it can later run against
the MRML classes of the ``slicer-core`` package. The engine (``UNetSegmentationLib``) never imports
this package.

- :mod:`.parameters`: the panel's settings (the module's parameter node) mapped onto the engine's
  :class:`~UNetSegmentationLib.inference.options.SegmentationOptions`, once;
- :mod:`.dependencies`: PyTorch (through the PyTorch extension) and the pip packages the engine needs;
- :mod:`.scene`: the volume out to a file, the engine's result into the scene;
- :mod:`.selftest`: the bodies of the module's self-test (run by ``UNetSegmentationTest``).

Nothing heavy (torch, MONAI, numpy, SimpleITK) is imported at module level.
"""
