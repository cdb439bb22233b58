"""The project's exception tree.

Every error a user can cause (bad config, missing model, unreachable source, malformed stream entry)
is a :class:`StreamprocError` whose message is one line that names the thing and, where obvious, the fix.
The command line prints that line and exits non-zero; workers catch the narrower types per camera or
per message so that one bad input never stops the others.
"""


class StreamprocError(Exception):
    """Base of every error the project raises on purpose."""


class ConfigError(StreamprocError):
    """A configuration file, flag or value is invalid."""


class ModelError(StreamprocError):
    """A model file is missing, unreadable or not a detector."""


class SourceError(StreamprocError):
    """A video source cannot be opened or decoded."""


class BadMessage(StreamprocError):
    """A stream entry failed validation; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
