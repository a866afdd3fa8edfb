"""The one exception type for mistakes a user can make (bad input, bad config, bad URL)."""


class LtrayError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits non-zero."""
