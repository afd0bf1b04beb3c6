"""Training side of the engine: data (datalists, label reading, 2.5D sampling), losses, the training
loop, and depth selection/export for prunable networks.

Everything here reuses the inference pieces — :class:`~UNetSegmentationLib.inference.slicing.SliceGeometry`,
:func:`~UNetSegmentationLib.inference.slicing.gather_context`, :func:`~UNetSegmentationLib.inference.normalization.fit_normalization`,
:class:`~UNetSegmentationLib.backends.torch_predictor.SlicePredictor` — so that training sees slices exactly as
``unetseg predict`` does.
"""
