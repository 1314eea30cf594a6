"""Logging: structlog JSON lines to a rotating file in `TANDEM_HOME`, and optionally to stderr.

Every line carries the context variables the runtime binds (run_id, tenant, user, session).
Message contents and secrets are never logged at INFO.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import structlog

LogFormat = Literal['console', 'json']

_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt='iso', utc=True),
]


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger that writes through stdlib logging's `name` logger.

    It does not depend on structlog's global configuration, so embedding Tandem never reconfigures
    the host application's logging: lines go wherever `tandem` logging is routed.
    """
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[structlog.stdlib.filter_by_level, *_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,  # else every call builds a new bound logger, even one filtered out
    )


def drop_records(name: str, expected: Callable[[logging.LogRecord], bool]) -> None:
    """Drop the records of a library's stdlib logger `name` that `expected` matches: news that is no news."""
    logging.getLogger(name).addFilter(lambda record: not expected(record))


def configure_logging(home: Path, level: str = 'INFO', stderr_format: LogFormat | None = None) -> Path:
    """Send Tandem's logs to `home/logs/tandem.log` (rotating), and to stderr when a format is given.

    Returns:
        The log file's path.
    """
    log_dir = home / 'logs'
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / 'tandem.log'
    shared = _SHARED
    root = logging.getLogger('tandem')
    root.handlers.clear()
    root.setLevel(level)
    root.propagate = False
    file_handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=5_000_000, backupCount=3, encoding='utf-8')
    file_handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=shared,
        )
    )
    root.addHandler(file_handler)
    if stderr_format is not None:
        renderer: structlog.types.Processor = (
            structlog.processors.JSONRenderer()
            if stderr_format == 'json'
            else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        )
        stream_handler = logging.StreamHandler(sys.stderr)
        stream_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
                foreign_pre_chain=shared,
            )
        )
        root.addHandler(stream_handler)
    return log_file
