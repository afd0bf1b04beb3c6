"""Segmentation networks of the U-Net family, one architecture per file.

:mod:`.registry` names them and says what each supports without importing torch; :mod:`.contract`
is the typed contract every network satisfies; :mod:`.presets` is the one table of ``features``
presets; :mod:`.blocks` holds the small building blocks they share.
"""
