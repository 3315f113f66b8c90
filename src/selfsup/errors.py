"""The one exception type for user mistakes.

Anything raised as :class:`SelfSupError` is the user's to fix (a wrong name, a missing
file, a batch too small).  The CLI prints it as a single ``error: ...`` line and exits
with status 2; everything else is a bug and keeps its traceback.
"""


class SelfSupError(Exception):
    """A user-facing error whose message names the problem and the fix."""
