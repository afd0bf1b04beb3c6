"""The ``unetseg`` command line: parsers and commands."""
