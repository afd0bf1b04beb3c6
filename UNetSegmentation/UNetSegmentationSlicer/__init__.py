"""The Slicer side of the UNet Segmentation module, beside ``UNetSegmentation.py``.

Everything here may use ``slicer`` (and ``vtk``); none of it uses Qt, and of ``slicer.app`` only the
self-test's ``temporaryPath``, so that it runs on the MRML classes of the ``slicer-core`` package in
the test suite (``Testing/test_mrml_*.py``) exactly as inside Slicer. The engine
(``UNetSegmentationLib``) never imports this package.

- :mod:`.parameters`: the panel's settings (the module's parameter node) mapped onto the engine's
  :class:`~UNetSegmentationLib.inference.options.SegmentationOptions`, once;
- :mod:`.dependencies`: PyTorch (through the PyTorch extension) and the pip packages the engine needs;
- :mod:`.scene`: the volume out to a file, the engine's result into the scene (segments, transform,
  reference geometry, subject hierarchy, 3D display, confidence map);
- :mod:`.inspection`: what a segmentation in the scene holds, measured (for the tests only);
- :mod:`.selftest`: the bodies of the module's self-test (run by ``UNetSegmentationTest`` and by pytest).

Nothing heavy (torch, MONAI, numpy, SimpleITK) is imported at module level.
"""
