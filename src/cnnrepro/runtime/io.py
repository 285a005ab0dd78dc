"""Atomic file outputs: a crash never leaves a half-written result behind.

Every writer goes to a temporary file in the destination folder and renames it into place,
which is atomic on POSIX file systems. A write that runs out of space (or quota) leaves the previous
file untouched, removes its temporary and fails with an OSError that says the disk is full and names
the file and its folder.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

# errno values that mean "the file system has no room for this write": out of space, or over the user's quota.
DISK_FULL_ERRNOS = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)


def _file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the process umask (mkstemp's own is 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _disk_full_errno(exc: BaseException) -> int | None:
    """ENOSPC/EDQUOT if ``exc`` or an exception it was raised from or during is an OSError with it, else None.

    The chain matters: torch.save turns the OSError of a failed write into a RuntimeError raised while handling it.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


def disk_full_error(code: int, path: Path) -> OSError:
    what = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
    return OSError(code, f"disk full ({what}) while writing {path.name} in folder {path.parent}: "
                         f"the previous {path.name}, if any, is unchanged and no partial file was left; "
                         f"free space in {path.parent} (or write the results to a larger disk) and rerun",
                   str(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    If the block fails, the temporary is removed and ``path`` keeps its previous content. A failure caused by a full
    disk (ENOSPC, or EDQUOT for a quota), whatever the writer turned it into, is raised as an OSError with the same
    errno whose message says the disk is full and names the file and its folder.
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A writer killed mid-write (SIGKILL) leaves its temporary behind; one job writes a path, so it is garbage.
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        # Results are shared (a group's project folder, a report served by a web server): not owner-only.
        os.chmod(tmp_path, _file_mode())
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        code = _disk_full_errno(exc)
        if code is None:
            raise
        raise disk_full_error(code, path) from exc
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_safe(value: Any) -> Any:
    """NaN and inf are not JSON; write them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(_json_safe(data), indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch  # deferred: torch, which the workflow's torch-free jobs (the GPU benchmark without a GPU) never load

    # Through a handle, torch names the archive's inner folder "archive" rather than after the temp
    # file, so saving the same object twice gives identical bytes (and an identical sha256).
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
