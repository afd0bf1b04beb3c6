"""Volumes, label maps and segmentations read and written; atomic outputs and locks."""
