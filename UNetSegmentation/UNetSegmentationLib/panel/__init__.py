"""Slicer-free presenters behind the Slicer panel: choices, the run state machine, self-test helpers."""
