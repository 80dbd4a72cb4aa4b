"""One exception type for every user-facing failure.

A `SpecdecError` carries one line that names the problem and the fix. The CLI prints
`error: <line>` and exits with status 1, never a traceback.
"""


class SpecdecError(Exception):
    """A user-facing error whose message is one line: what is wrong and what to do."""
