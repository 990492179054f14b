"""Log output: text lines for people, or one JSON object per line for log collectors.

In JSON each record carries its ``extra`` fields (a request record: request_id, method,
index, code, latency_ms, principal, peer) and, for anything logged while a call is
handled, that call's request id. Tokens never reach a log record: the auth interceptor
keeps only a token's configured name.

Levels: Flux's own loggers log at ``logging.level`` ($FLUX_LOG_LEVEL, INFO by default); every
other logger, a plugin's library among them (faiss logs eleven lines at INFO as it loads), at
$FLUX_LIBRARY_LOG_LEVEL, WARNING by default, so that a plugin does not flood every command.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

from flux import callcontext

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The loggers of Flux's own packages; ``set_levels`` holds every other one at the library level.
OWN_LOGGERS = ("flux", "flux_core", "flux_backends", "flux_bench", "flux_beam")
#: Where other libraries' loggers stay unless $FLUX_LIBRARY_LOG_LEVEL asks for more.
LIBRARY_LEVEL = "WARNING"
_STANDARD = {*vars(logging.LogRecord("", 0, "", 0, "", (), None)), "message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, fields: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._fields = fields or {}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self._fields,
        }
        out.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if "request_id" not in out and (request_id := callcontext.request_id.get()):
            out["request_id"] = request_id
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def set_levels(level: str | None = None, libraries: str | None = None) -> None:
    """Flux's own loggers at ``level`` (default: $FLUX_LOG_LEVEL, else INFO); every other logger
    (the root's level, which they inherit) at ``libraries`` (default: $FLUX_LIBRARY_LOG_LEVEL, else WARNING)."""
    own = (level or os.environ.get("FLUX_LOG_LEVEL") or "INFO").upper()
    logging.getLogger().setLevel((libraries or os.environ.get("FLUX_LIBRARY_LOG_LEVEL") or LIBRARY_LEVEL).upper())
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(own)


def configure_command() -> None:
    """For a command (``flux build``, ``flux inspect``, ...): text records on stderr, at the levels of
    ``set_levels``. Left alone when logging is set up already (an application or a test running
    the command in its own process)."""
    if logging.getLogger().handlers:
        return
    logging.basicConfig(format=TEXT_FORMAT)
    set_levels()


def configure(
    log_format: str, level: str | None = None, *, worker: int | None = None, libraries: str | None = None
) -> None:
    """Send every record to stderr in ``log_format`` (text or json); Flux's at ``level`` (default:
    $FLUX_LOG_LEVEL or INFO), other libraries' at ``libraries`` (default: $FLUX_LIBRARY_LOG_LEVEL or
    WARNING; ``set_levels``)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter({"worker": worker} if worker is not None else None))
    else:
        prefix = f"[worker {worker}]" if worker is not None else ""
        handler.setFormatter(logging.Formatter(TEXT_FORMAT.replace("%(name)s", f"%(name)s{prefix}")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_levels(level, libraries)
