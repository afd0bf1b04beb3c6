"""The geometry rules the engine and the Slicer panel share: when a spacing counts as the model's, how
many slices apart the 2.5D neighbours lie, when a scan's slices are thinner than the model's, and which
image axis the slices run along. Pure Python (no numpy, torch or SimpleITK): the panel's GUI process
asks the very rules the engine applies, so what it says before a run is what the run does."""
