"""``unetseg``: the command line of the engine.

Every command exits 0 on success and, on a problem with its input, prints one line
``unetseg: error: <what is wrong>`` (or a JSON ``error`` event with ``--progress json``) and exits 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import List, NoReturn, Optional

from UNetSegmentationLib.cli import evaluate, models, predict, refine, serve, train
from UNetSegmentationLib.errors import EXIT_CANCELLED, EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, UserError
from UNetSegmentationLib.io.memory_budget import machine_memory_note


class Cancelled(BaseException):
    """Raised in the main thread on SIGTERM so that ``finally`` blocks remove temporary files."""


def _on_terminate(signum, frame):  # pragma: no cover - exercised through the runner tests
    raise Cancelled(f"terminated by signal {signum}")


# --- parser and entry point ------------------------------------------------------------------------


class ArgumentsRefused(Exception):
    """A command line argparse refuses: ``prog`` (``unetseg train``) and argparse's own message."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose refusals are one line ``unetseg: error: ...`` that names the command, not
    ~20 lines of usage (the README promises one line; issue 22, defect 11). Subparsers are of this class too."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        raise ArgumentsRefused(self.prog, message)


def _refusal_line(refused: ArgumentsRefused) -> str:
    """``train: unrecognized arguments: --foo (see 'unetseg train --help')``: the command and where its usage is."""
    command = refused.prog[len("unetseg"):].strip()
    return f"{command + ': ' if command else ''}{refused} (see '{refused.prog} --help')"


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    """The parsed command line; arguments the command does not know are refused in the command's name
    (argparse's own check would report them with the top-level usage)."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ArgumentsRefused(f"unetseg {args.command}", f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _json_progress_asked(argv: List[str]) -> bool:
    """Whether the refused command line asked for ``--progress json`` (its error then goes out as an event too)."""
    return any(a == "--progress=json" or (a == "--progress" and b == "json") for a, b in zip(argv, argv[1:] + [""]))


#: exit status when the reader of stdout went away, as shells report a process ended by SIGPIPE
EXIT_BROKEN_PIPE = 128 + 13


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's own flush at exit finds no broken pipe either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="unetseg", description="U-Net family 2.5D segmentation of CT and MR volumes.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for command_module in (models, predict, train, evaluate, serve, refine):
        command_module.add_commands(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from UNetSegmentationLib.protocol.reporters import make_reporter

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parse(argv)
    except ArgumentsRefused as refused:
        if _json_progress_asked(argv):
            make_reporter("json").error(_refusal_line(refused))
        print(f"unetseg: error: {_refusal_line(refused)}", file=sys.stderr)
        return EXIT_USER_ERROR
    args.reporter = make_reporter(getattr(args, "progress", "none"))
    previous = signal.signal(signal.SIGTERM, _on_terminate)
    try:
        return args.run(args)
    except UserError as error:
        args.reporter.error(str(error))
        print(f"unetseg: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (KeyboardInterrupt, Cancelled):
        args.reporter.error("cancelled")
        print("unetseg: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except BrokenPipeError:  # the reader of our output went away (`unetseg archs | head -2`): nothing left to say
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except MemoryError:  # memory ran out outside the batches (those shrink on their own): reading, writing, post-processing
        message = f"out of memory ({machine_memory_note()}): close other programs, or crop or resample the input to fewer voxels"
        args.reporter.error(message)
        print(f"unetseg: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as error:  # a bug: say so, keep the traceback for the report
        import traceback

        from UNetSegmentationLib.backends.memory import is_out_of_memory

        if is_out_of_memory(error):  # e.g. moving the model to a full GPU: not a bug, say what to do
            message = f"out of memory ({str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__}): try a smaller --batch-size or --device cpu"
            args.reporter.error(message)
            print(f"unetseg: error: {message}", file=sys.stderr)
            return EXIT_USER_ERROR

        traceback.print_exc(file=sys.stderr)
        args.reporter.error(f"internal error: {type(error).__name__}: {error}")
        print(f"unetseg: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
