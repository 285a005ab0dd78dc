"""A warm process that jobs fork from, so that a job does not pay for importing torch again.

Every training or benchmark job of a local run is a new Python process, and about 4 CPU seconds of each go to
``import torch`` and ``torch._dynamo`` (which every torch optimizer imports) before it does any work; the smoke
preset runs 60 such jobs. With ``job_server: true`` the workflow's ``onstart`` starts one server per run that
imports what jobs use once, and each job script's first line, :func:`delegate`, hands the job to it: the server
forks, the fork runs the script Snakemake generated (the same file, the same bytes) with the job's working
folder, environment and standard streams, and the job's exit status travels back, so Snakemake sees the job as it
always does.

What keeps a fork as good as a fresh process:

* the server only imports: it runs no tensor operation (no OpenMP thread pool exists to be copied into a fork) and
  never initialises CUDA (a fork initialises it for itself; ``gpu_slots`` picks the GPU before that, as before);
* torch in the fork uses the job's thread count (``OMP_NUM_THREADS``, which Snakemake sets for every job),
  ``tempfile`` the job's ``TMPDIR``, and ``sys.stdout``/``sys.stderr`` are opened on the job's streams as a new
  interpreter would open them; a job started by another interpreter (a conda or container job), or whose
  interpreter, library, locale or torch variables differ from the server's, is declined and runs in a process of
  its own, as does every job when no server answers;
* each fork reseeds Python's ``random`` and numpy's global generator as a new process would (the pipeline seeds
  what it uses itself), runs the exit handlers it registers, and none of the server's;
* a signal to the job's own process (Ctrl-C, Snakemake ending a job) is passed on to the fork, and the process
  waits for the fork to end; a fork whose process or supervisor disappears is killed; the server exits when the
  snakemake process that started it does, and when it has been idle for ``IDLE_EXIT_SECONDS``.

Only local runs use it: on SLURM each job runs on its own node.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import importlib
import importlib.util
import logging
import os
import pickle
import random
import re
import runpy
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

SOCKET_ENV = "CNNREPRO_JOB_SERVER"  # the server's socket; set for the jobs of a run by the workflow's onstart
CHILD_ENV = "CNNREPRO_JOB_SERVER_CHILD"  # set inside a forked job, where delegate() must do nothing
# What the jobs import (the server imports it once): each stage's job module. matplotlib is set to Agg first, as
# cnnrepro.report.figures does.
PRELOAD = ("snakemake.script", "torch", "torch._dynamo", "torch.optim", "torchvision", "pandas", "matplotlib.pyplot",
           "jinja2", "cnnrepro.data.prepare", "cnnrepro.engine.train", "cnnrepro.bench.job", "cnnrepro.bench.trained",
           "cnnrepro.tables.aggregate", "cnnrepro.report.figures", "cnnrepro.report.pages", "cnnrepro.report.latex")
# Read once when the interpreter or a library starts, so a fork cannot honour a job that sets them differently:
# every variable with one of these prefixes (the thread counts below excepted) must be the server's.
MUST_MATCH_PREFIXES = ("PYTHON", "TORCH", "PYTORCH", "OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "LC_", "LANG",
                       "LD_", "MPLBACKEND", "CONDA_PREFIX", "VIRTUAL_ENV")
# Snakemake gives every job these, set to its thread count. In a fork, torch gets the job's count from
# torch.set_num_threads (what OMP_NUM_THREADS would have given it); numpy's BLAS, which the jobs use only for
# bookkeeping, keeps the server's, which is 1 so that it never competes with other jobs for cores.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
IDLE_EXIT_SECONDS = 600
# Modules a job's launcher never needs before delegate(): finding one loaded means the job paid for it twice.
PRELOADED_BY_MISTAKE = ("torch", "cnnrepro.config")
ACCEPTED, DECLINED = b"A", b"D"
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_server_process = None  # the server start() launched in this process
_startup_environment: dict[str, str] | None = None  # the server's environment before it imported anything
_HEADER = struct.Struct("!I")
_STATUS = struct.Struct("!i")


# --------------------------------------------------------------------------------------------- the job's side


def delegate() -> None:
    """Run this job script in the run's job server and exit with its status; return if there is none to use.

    Call it first in a Snakemake ``script:``, after the preamble (which defines ``snakemake``). Inside the server's
    fork it returns at once, and the script goes on as in a process of its own.
    """
    if os.environ.get(CHILD_ENV):
        return
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return
    # The file Python was started with: Snakemake's generated script, preamble included (its preamble points
    # __file__ at the workflow's own script, which has no preamble).
    script = sys.argv[0] if sys.argv and sys.argv[0] else None
    if not script or not os.path.isfile(script):
        return
    try:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(path)
    except OSError:
        return  # no server (not started, or gone): run here
    spec = importlib.util.find_spec("cnnrepro")
    request = {"script": os.path.abspath(script), "argv": list(sys.argv), "cwd": os.getcwd(),
               "env": dict(os.environ), "package": spec.origin if spec else None, "interpreter": _interpreter(),
               # What this process paid for before handing the job over, e.g. a rule param that unpickles into a
               # cnnrepro object makes Snakemake's preamble import the package: the job server's log says so.
               "preloaded": [name for name in PRELOADED_BY_MISTAKE if name in sys.modules]}
    with connection:
        try:
            _send(connection, request, [0, 1, 2])  # the job's standard streams, as Snakemake set them up
            answer = _receive_exactly(connection, 1)
        except OSError:
            return
        if answer != ACCEPTED:
            return  # declined: this job needs a process of its own
        sys.stdout.flush()
        sys.stderr.flush()
        # A signal meant for the job (Ctrl-C, Snakemake ending it) goes to the fork; this process waits for its end.
        def forward(number, _frame):
            try:
                connection.send(bytes([number]))
            except OSError:  # the supervisor is gone, and with it the job
                os._exit(128 + number)

        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, forward)
        status = _receive_exactly(connection, _STATUS.size)
    if len(status) != _STATUS.size:
        print(f"cnnrepro job server at {path} stopped while running this job; rerun the workflow",
              file=sys.stderr, flush=True)
        os._exit(1)
    os._exit(_STATUS.unpack(status)[0])


# --------------------------------------------------------------------------------------------- the server


def serve(path: str, watch_pid: int | None, preload=PRELOAD, idle_exit: float = IDLE_EXIT_SECONDS) -> None:
    """Listen on ``path``; import ``preload``; fork a supervisor for every connection until told to stop."""
    global _startup_environment
    _startup_environment = dict(os.environ)  # before the imports, some of which set variables of their own
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)  # before the imports: jobs that connect meanwhile wait in the backlog, not in torch
    listener.listen(128)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    if "matplotlib.pyplot" in preload:
        import matplotlib  # deferred: matplotlib, loaded by the server only, its backend set before pyplot

        matplotlib.use("Agg")
    for module in preload:
        importlib.import_module(module)
    print(f"job server {os.getpid()}: imported {', '.join(preload)}; listening on {path}", flush=True)
    listener.settimeout(1.0)
    children: set[int] = set()
    last_busy = time.monotonic()
    watching_parent = watch_pid == os.getppid()
    try:
        while not stop:
            children -= _reaped(children)
            if children:
                last_busy = time.monotonic()
            # The parent's pid changes when it dies; a pid alone could be a zombie's or reused.
            if watch_pid is not None and (os.getppid() != watch_pid if watching_parent else not _alive(watch_pid)):
                print(f"job server: snakemake process {watch_pid} is gone; exiting", flush=True)
                break
            if time.monotonic() - last_busy > idle_exit:
                print(f"job server: idle for {idle_exit:.0f} s; exiting", flush=True)
                break
            try:
                connection, _ = listener.accept()
            except (socket.timeout, InterruptedError):
                continue
            except OSError as error:  # e.g. out of file descriptors: the job runs in its own process instead
                print(f"job server: accept failed ({error}); continuing", flush=True)
                continue
            try:
                pid = os.fork()
            except OSError as error:
                print(f"job server: fork failed ({error}); that job runs in its own process", flush=True)
                connection.close()
                continue
            if pid == 0:
                listener.close()
                _supervise(connection)  # never returns
            connection.close()
            children.add(pid)
            last_busy = time.monotonic()
    finally:
        listener.close()
        Path(path).unlink(missing_ok=True)
        Path(path).with_suffix(".pid").unlink(missing_ok=True)
        try:
            Path(path).parent.rmdir()
        except OSError:
            pass
        for pid in children:  # each supervisor passes the signal on to its job and waits for it
            _signal(pid, signal.SIGTERM)


def _supervise(connection: socket.socket) -> None:
    """In a fork of the server: check the request, fork the job, wait for it or for its client to go away."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        request, fds = _receive(connection)
        name = re.sub(r"^tmp[^.]*\.", "", Path(request["script"]).name)  # Snakemake's tmpXXXX.train.py: train.py
        reason = decline_reason(request) or (None if len(fds) == 3 else "its standard streams did not arrive")
        if reason:
            print(f"{name}: declined ({reason}); it runs in a process of its own", flush=True)
            connection.sendall(DECLINED)
            for fd in fds:
                os.close(fd)
            os._exit(0)
        connection.sendall(ACCEPTED)
        supervisor = os.getpid()
        job = os.fork()
        if job == 0:
            connection.close()
            _die_with_parent(supervisor)
            _run_job(request, fds)  # never returns
        for fd in fds:
            os.close(fd)
        for sig in FORWARDED_SIGNALS:  # the server stopping: the job ends as it would on that signal
            signal.signal(sig, lambda number, _frame: _signal(job, number))
        started = time.monotonic()
        try:
            status = _wait_for(job, connection)
        except BaseException:
            _terminate(job)
            raise
        outcome = "ended: its snakemake job was killed" if status is None else f"exit status {status}"
        paid = request.get("preloaded")
        paid = f" (its launcher had imported {', '.join(paid)} before handing it over)" if paid else ""
        print(f"{name} (pid {job}): {outcome} after {time.monotonic() - started:.1f} s{paid}", flush=True)
        if status is not None:
            connection.sendall(_STATUS.pack(status))
        code = 0
    except BaseException:  # noqa: BLE001 - a supervisor must never fall back into the server's loop
        traceback.print_exc()
    finally:
        os._exit(code)


def _run_job(request: dict, fds: list[int]) -> None:
    """In the job's fork: become the process Snakemake started, then run its script."""
    code = 1
    try:
        for sig in (*FORWARDED_SIGNALS, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        atexit._clear()  # the server's exit handlers are not this job's
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[CHILD_ENV] = "1"
        _open_standard_streams()
        tempfile.tempdir = None  # the job's TMPDIR, not the one the server may have cached
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(request["env"]["OMP_NUM_THREADS"]))
        sys.argv = list(request["argv"])
        sys.path[0] = os.path.dirname(request["script"])  # as `python <script>` sets it
        random.seed()  # a new process would not share its parent's state
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        try:
            runpy.run_path(request["script"], run_name="__main__")
            code = 0
        except SystemExit as exit_:
            if exit_.code is None or isinstance(exit_.code, int):
                code = exit_.code or 0
            else:
                print(exit_.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            traceback.print_exc()
            code = 128 + signal.SIGINT
        except BaseException:  # noqa: BLE001 - report as the interpreter would, then exit 1
            traceback.print_exc()
        # What the interpreter does at exit: wait for the job's threads, run its exit handlers, flush.
        threading._shutdown()
        atexit._run_exitfuncs()
        logging.shutdown()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _open_standard_streams() -> None:
    """sys.stdin/stdout/stderr on the job's descriptors, buffered as a new interpreter would buffer them."""
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    encoding = os.environ.get("PYTHONIOENCODING") or None
    sys.stdin = open(0, "r", closefd=False, encoding=encoding)
    sys.stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, closefd=False, encoding=encoding)
    sys.stderr = open(2, "w", buffering=1, closefd=False, encoding=encoding, errors="backslashreplace")
    if unbuffered:
        sys.stdout.reconfigure(write_through=True)
        sys.stderr.reconfigure(write_through=True)


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its supervisor dies (Linux), and check it has not already."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def _interpreter() -> dict:
    return {"executable": os.path.realpath(sys.executable), "prefix": sys.prefix, "version": sys.version}


def decline_reason(request: dict) -> str | None:
    """Why a fork of this server would not be the process the job asked for (None: it would be)."""
    if request.get("interpreter") != _interpreter():
        return "another Python interpreter or environment"
    server = _startup_environment if _startup_environment is not None else os.environ
    names = {n for n in (*request["env"], *server) if n.startswith(MUST_MATCH_PREFIXES) and n not in THREAD_VARIABLES}
    for name in sorted(names):
        if request["env"].get(name) != server.get(name):
            return f"{name} differs"
    if not request["env"].get("OMP_NUM_THREADS", "").isdigit() or int(request["env"]["OMP_NUM_THREADS"]) < 1:
        return "no OMP_NUM_THREADS (a new process would pick its own thread count)"
    package = sys.modules.get("cnnrepro")
    if request.get("package") and package is not None and os.path.realpath(request["package"]) != \
            os.path.realpath(package.__file__):
        return "another cnnrepro package"
    return None


def _wait_for(job: int, connection: socket.socket) -> int | None:
    """The job's exit status as a shell reports it (128 + signal); None if the client went away first."""
    while True:
        pid, status = os.waitpid(job, os.WNOHANG)
        if pid:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code
        readable, _, _ = select.select([connection], [], [], 0.05)
        if readable:
            message = connection.recv(1)
            if not message:
                _terminate(job)  # the job's own process was killed outright (SIGKILL)
                return None
            _signal(job, message[0])  # a signal the job's own process received


def _terminate(pid: int, grace: float = 5.0) -> None:
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.05)
    _signal(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reaped(children: set[int]) -> set[int]:
    done = set()
    for pid in children:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                done.add(pid)
        except ChildProcessError:
            done.add(pid)
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------- the wire


def _send(connection: socket.socket, payload: Any, fds: list[int]) -> None:
    data = pickle.dumps(payload)
    socket.send_fds(connection, [_HEADER.pack(len(data))], fds)
    connection.sendall(data)


def _receive(connection: socket.socket) -> tuple[Any, list[int]]:
    header, fds, _, _ = socket.recv_fds(connection, _HEADER.size, 3)
    if len(header) != _HEADER.size:
        raise ConnectionError("short request header")
    data = _receive_exactly(connection, _HEADER.unpack(header)[0])
    return pickle.loads(data), list(fds)


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = connection.recv(size - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------------------------- the workflow's side


def start(folder: Path, log: Path, watch_pid: int, timeout: float = 10.0) -> str:
    """Start a server for this run and return its socket's path once it listens (the workflow's onstart)."""
    # A socket path must be short (108 bytes): a private folder in the temporary directory, not in the results.
    socket_dir = Path(tempfile.mkdtemp(prefix="cnnrepro-jobs-"))
    path = socket_dir / "server.sock"
    log.parent.mkdir(parents=True, exist_ok=True)
    global _server_process
    environment = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, "1")}
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "cnnrepro.runtime.job_server", "--socket", str(path),
                                    "--watch-pid", str(watch_pid)], stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, cwd=folder, env=environment, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            shutil.rmtree(socket_dir, ignore_errors=True)
            raise RuntimeError(f"the job server did not start (see {log}); set job_server: false to run without it")
        time.sleep(0.02)
    _server_process = process
    return str(path)


def stop(path: str | None) -> None:
    """Ask the server listening on ``path`` to exit, wait for it, and remove its folder (onsuccess/onerror)."""
    global _server_process
    if not path:
        return
    socket_path = Path(path)
    process, _server_process = _server_process, None
    if process is not None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    else:  # started elsewhere: its pid file names it
        pid_file = socket_path.with_suffix(".pid")
        if pid_file.exists():
            _signal(int(pid_file.read_text()), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    shutil.rmtree(socket_path.parent, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="cnnrepro's job server (started by the workflow; see module doc)")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--watch-pid", type=int)
    parser.add_argument("--preload", help="comma-separated modules (default: what the workflow's jobs import)")
    parser.add_argument("--idle-exit", type=float, default=IDLE_EXIT_SECONDS)
    args = parser.parse_args(argv)
    Path(args.socket).with_suffix(".pid").write_text(str(os.getpid()))
    preload = tuple(m for m in args.preload.split(",") if m) if args.preload is not None else PRELOAD
    serve(args.socket, args.watch_pid, preload, args.idle_exit)


if __name__ == "__main__":
    main()
