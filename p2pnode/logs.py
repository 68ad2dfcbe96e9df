"""Log formatting: readable text for people, one JSON object per line for machines (``--log-format json``)."""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["setup_logging"]


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        where = record.name.removeprefix("p2pnode.")
        line = f"{stamp} {record.levelname:<7} {where}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries speak only when something is wrong.
    for noisy in ("trio-websocket", "hypercorn", "httpx", "httpcore", "p2pnode.gateway.hypercorn"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
