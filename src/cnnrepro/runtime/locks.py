"""Snakemake's directory lock, safe to rerun after a SIGKILL.

Snakemake removes ``.snakemake/locks`` when it exits, not when it is killed (a pre-empted node, an OOM kill),
and cannot tell a dead run's locks from a live one's, so the same command would stop with "Directory cannot be
locked" until someone runs ``--unlock``. The lock holder records itself when the workflow starts (``onstart``);
a later snakemake on the same host removes exactly those lock files once that process is gone. Live,
foreign-host and unrecorded locks are left alone, so a second snakemake in a directory in use is still refused.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from cnnrepro.runtime import io

HOLDER = "cnnrepro-holder.json"  # Snakemake reads only <n>.input.lock / <n>.output.lock in this folder


def _lock_dir(workdir: str | Path) -> Path:
    return Path(workdir) / ".snakemake" / "locks"


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: a reused process id does not pass for the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _start_time(pid)
    return started is None or now is None or now == started


def _identity(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_ino, stat.st_mtime_ns]


def record_holder(workdir: str | Path = ".") -> None:
    """Called from the workflow's onstart: note which process holds which lock files."""
    folder = _lock_dir(workdir)
    held = {path.name: _identity(path) for path in sorted(folder.glob("*.lock"))}
    if held:
        io.write_json(folder / HOLDER, {"host": socket.gethostname(), "pid": os.getpid(),
                                        "started": _start_time(os.getpid()), "locks": held})


def remove_stale_locks(workdir: str | Path = ".") -> dict | None:
    """Remove the locks of a recorded holder that is no longer running; return its record if any were removed."""
    folder = _lock_dir(workdir)
    try:
        holder = json.loads((folder / HOLDER).read_text())
        host, pid, started, held = holder["host"], int(holder["pid"]), holder.get("started"), holder["locks"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname() or _alive(pid, started):
        return None
    for name, identity in held.items():
        try:
            if _identity(folder / name) == list(identity):  # exactly the holder's file, not a newer run's
                (folder / name).unlink()
        except FileNotFoundError:
            pass
    (folder / HOLDER).unlink(missing_ok=True)
    return holder
