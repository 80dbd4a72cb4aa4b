"""One exception type for every user-facing failure.

A `SpecdecError` carries one line that names the problem and the fix. The CLI prints
`error: <line>` and exits with status 1, never a traceback; a `UsageError` exits with status 2,
typer's usage status. A UsageError is how the command was called: an option value out of its range
or not one of its choices, options that contradict each other or are missing, a path that does not
exist or cannot be one. What the files or the machine turn out to hold (a corrupt checkpoint, a
full disk, a model too large) is a plain SpecdecError. Interrupts exit 130 (`__main__`).
"""


class SpecdecError(Exception):
    """A user-facing error whose message is one line: what is wrong and what to do."""

    exit_code = 1


class UsageError(SpecdecError):
    """A SpecdecError caused by how the command was called (exit status 2)."""

    exit_code = 2
