"""Credential redaction for URLs in logs, status output, metrics and alerts.

RTSP cameras and Redis servers are commonly addressed as ``scheme://user:password@host``; those
credentials must never leave the process that needs them. :func:`redact` replaces the user-info of
every URL in a text with ``***`` (also when a password holds an unescaped ``@`` or ``/``, which is
invalid but common) and the values of secret-looking query parameters. :func:`setup_logging` applies
it to every log line, to the tracebacks that logging prints, and to the tracebacks of uncaught
exceptions (main thread and other threads).
"""

import logging
import re
import sys
import threading
import traceback
from types import TracebackType

# user-info: "user:password@" (the password may hold "@" and "/": up to the last "@" before whitespace)
# or a bare "user@" (up to the last "@" before any "/" or ":")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/:]*:[^\s]*|[^\s/:]+)@")
_SECRET_QUERY = re.compile(
    r"(?i)([?&;][A-Za-z0-9_.\-]*(?:password|passwd|pass|pwd|token|auth|key|secret|signature|sig)=)[^&#\s\"']+"
)


def redact(text: str) -> str:
    """Replace the user-info part of every URL in ``text`` (and secret query values) with ``***``."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
    return _SECRET_QUERY.sub(r"\1***", text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts credentials from every record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class RedactingFormatter(logging.Formatter):
    """A formatter whose whole output is redacted: the message and any traceback or stack it carries."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else threading.get_ident()
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    sys.stderr.write(redact(f"Exception in thread {name}:\n{text}"))


def setup_logging(level: str = "INFO") -> None:
    """Configure root logging once per process: one line per record, credentials redacted, also in the
    tracebacks of uncaught exceptions."""
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
