"""Per-job logging: every job writes its own log file and echoes to stderr."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


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
