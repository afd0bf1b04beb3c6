"""Segmentation networks of the U-Net family, one architecture per file.

:mod:`.registry` names them and says what each supports without importing torch;
:mod:`.blocks` holds the small building blocks they share.
"""
