"""Logging for every vrouter command: to stderr, as text on a terminal and as JSON lines when
stdout is not one (a service manager, a pipe, CI), so a log collector can read the fields."""
from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "text")
TEXT = "%(asctime)s %(name)s %(levelname)s %(message)s"

_chosen: dict[str, str] = {"level": "info", "format": "auto"}


def setup(level: str = "info", fmt: str = "auto") -> None:
    as_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter(TEXT, rename_fields={"asctime": "time",
                                                                "levelname": "level",
                                                                "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _chosen.update(level=level, format="json" if as_json else "text")


def child_args() -> list[str]:
    """The options that give a vrouter child process (a node of `vrouter up`) the same logging."""
    return ["--log-level", _chosen["level"], "--log-format", _chosen["format"]]
