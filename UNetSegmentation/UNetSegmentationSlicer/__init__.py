"""The Slicer side of the UNet Segmentation module, beside ``UNetSegmentation.py``.

Everything here may use ``slicer`` (and ``vtk``); none of it uses Qt but :mod:`.refine_effect` (the
Segment Editor effect's thin Qt part, checked statically), and of ``slicer.app`` only the self-test's
``temporaryPath``, so that it runs on the MRML classes of the ``slicer-core`` package in the test suite
(``Testing/test_mrml_*.py``) exactly as inside Slicer. The engine
(``UNetSegmentationLib``) never imports this package.

- :mod:`.parameters`: the panel's settings (the module's parameter node) mapped onto the engine's
  :class:`~UNetSegmentationLib.inference.options.SegmentationOptions`, once;
- :mod:`.dependencies`: PyTorch (through the PyTorch extension) and the pip packages the engine needs;
- :mod:`.scene`: the volume out to a file, the engine's result into the scene (segments, transform,
  reference geometry, subject hierarchy, 3D display, the confidence map showing where the model is unsure);
- :mod:`.model_card`: the model section of the panel (card, model choice, architecture and depths);
- :mod:`.finetune`: "Improve the model": the training pair out of the scene, and which classes the
  user corrected (each result's segments remember the model's own result);
- :mod:`.refine_logic`, :mod:`.refine_controller`, :mod:`.refine_effect`: the "UNet refine" Segment Editor
  effect (clicks to the warm engine's refinement session, its answer as a preview, Apply with Segment
  Editor's undo, masking and overwrite; the corrected slices remembered for "Improve the model");
- :mod:`.slices`: where a volume's slices lie (spacing, slice count, a slice's centre);
- :mod:`.widgets`: the panel's decisions put into its widgets; :mod:`.texts`: the help texts;
- :mod:`.inspection`: what a segmentation in the scene holds, measured (for the tests only);
- :mod:`.selftest`: the bodies of the module's self-test (run by ``UNetSegmentationTest`` and by pytest).

Nothing heavy (torch, MONAI, numpy, SimpleITK) is imported at module level.
"""
