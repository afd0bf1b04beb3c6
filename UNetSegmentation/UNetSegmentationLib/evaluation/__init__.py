"""Accuracy and speed of a checkpoint on labelled volumes."""
