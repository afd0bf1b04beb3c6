"""matplotlib for the PNG figures (demo overlay, accuracy-vs-speed plot), imported only when drawing.

matplotlib is an optional dependency (``pip install "UNetSegmentationLib[plots]"``): the Slicer
module's background segmentation never draws, so Slicer does not have to install it.
"""

from __future__ import annotations

from UNetSegmentationLib.errors import UserError


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, or a clear error naming the missing package."""
    try:
        import matplotlib
    except ImportError:
        raise UserError('drawing PNG figures needs matplotlib: pip install "UNetSegmentationLib[plots]" (or matplotlib)') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
