"""Per-job logging: every job writes its own log file and echoes to stderr."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator


def setup_job_logging(log_path: str | Path | None, level: int = logging.INFO) -> logging.Logger:
    root = logging.getLogger("cnnrepro")
    root.setLevel(level)
    root.handlers.clear()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="a", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    return root


@contextlib.contextmanager
def job_log(log_path: str | Path | None) -> Iterator[logging.Logger]:
    """Log a job to its own file (and stderr), and record any failure there before it propagates."""
    logger = setup_job_logging(log_path)
    try:
        yield logger
    except Exception:
        logger.exception("job failed")
        raise
