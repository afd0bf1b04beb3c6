"""The small text grammars the command line and the Slicer panel share: slice ranges, axis names and
class lists. Numpy-, torch- and SimpleITK-free, so the panel's GUI process can check what the user
typed with the very rule the engine applies."""
