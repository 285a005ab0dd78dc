"""Progress of long work: an in-place bar on a terminal, an ETA in the job log."""

from __future__ import annotations

import sys
import time
from typing import Callable


def format_eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class ProgressBar:
    """One in-place line on a terminal; silent when the stream is not a TTY, so job logs stay clean."""

    def __init__(self, total: int, desc: str, stream=None, enabled: bool | None = None, min_interval: float = 0.2):
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.total, self.desc, self.min_interval = total, desc, min_interval
        self.started = self.last = time.time()
        self.drawn = False

    def update(self, done: int, loss: Callable[[], float] | None = None) -> None:
        if not self.enabled:
            return
        now = time.time()
        if now - self.last < self.min_interval and done < self.total:
            return
        self.last = now
        frac = done / max(self.total, 1)
        width = 24
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        # loss is a callable so the device sync it costs happens only when a line is drawn.
        loss_text = f" loss {loss():.4f}" if loss is not None else ""
        self.stream.write(f"\r\033[K{self.desc} [{bar}] {done}/{self.total}{loss_text} "
                          f"{rate:.1f} batch/s ETA {format_eta(eta)}")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.enabled and self.drawn:
            self.stream.write("\r\033[K")  # clear it before the epoch's log line
            self.stream.flush()
