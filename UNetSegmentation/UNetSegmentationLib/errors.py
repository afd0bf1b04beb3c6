"""The one exception type that reaches the user as a message instead of a traceback."""


class UserError(Exception):
    """A problem with what the user gave us (a file, an option, a checkpoint).

    The CLI prints ``str(error)`` as a single line and exits with :data:`EXIT_USER_ERROR`; the
    message must name the problem and, where it helps, the way out.
    """


#: exit status of ``unetseg`` for a :class:`UserError`
EXIT_USER_ERROR = 2
#: exit status for an unexpected internal error (a bug: the traceback goes to stderr)
EXIT_INTERNAL_ERROR = 1
#: exit status after SIGTERM/SIGINT (cancelled), as shells report it
EXIT_CANCELLED = 130
