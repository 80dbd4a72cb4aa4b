"""One exception type for every user-facing failure.

A `SpecdecError` carries one line that names the problem and the fix. The CLI prints
`error: <line>` and exits with status 1, never a traceback; a `UsageError` (a value given on the
command line that cannot work, found by the library) exits with status 2, typer's usage status.
"""


class SpecdecError(Exception):
    """A user-facing error whose message is one line: what is wrong and what to do."""

    exit_code = 1


class UsageError(SpecdecError):
    """A SpecdecError caused by how the command was called (exit status 2)."""

    exit_code = 2
