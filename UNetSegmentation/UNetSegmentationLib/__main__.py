"""``python -m UNetSegmentationLib`` is the ``unetseg`` command (used by the process runner)."""

from UNetSegmentationLib.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
