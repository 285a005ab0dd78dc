"""cnnrepro.runtime.job_server: jobs forked from one warm process behave as the process Snakemake would have started.

The servers here preload nothing heavy (``--preload json``), so each test costs about a second; the smoke preset
(test_e2e, test_faults_workflow) runs the whole workflow through the real server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cnnrepro.runtime import job_server

TIMEOUT = 30

# A job script as the workflow's are: delegate() first, then the work. It reports where it ran.
SCRIPT = textwrap.dedent("""
    # What Snakemake's preamble does: __file__ names the workflow's script, and the job's object is defined here.
    __real_file__ = __file__; __file__ = "/workflow/scripts/job.py"
    snakemake = "the job's object"
    from cnnrepro.runtime.job_server import delegate

    delegate()
    import os, sys
    print("preamble", snakemake)
    print("cwd", os.getcwd())
    print("forked", os.environ.get("CNNREPRO_JOB_SERVER_CHILD"))
    print("colour", os.environ.get("COLOUR"))
    print("argv", sys.argv[1:])
    print("to stderr", file=sys.stderr)
    mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
    if mode == "exit3":
        sys.exit(3)
    if mode == "raise":
        raise ValueError("the job failed")
    if mode == "threads":
        import torch
        print("torch threads", torch.get_num_threads())
    if mode == "atexit":
        import atexit
        atexit.register(lambda: open(sys.argv[2], "w").write("ran"))
    if mode == "sleep":
        import time
        try:
            open(sys.argv[2] + ".tmp", "w").write(str(os.getpid()))
            os.replace(sys.argv[2] + ".tmp", sys.argv[2])
            time.sleep(120)
        except KeyboardInterrupt:
            open(sys.argv[2] + ".interrupted", "w").write("cleaned up")  # what io.atomic_path's cleanup does
            raise
""")


def wait_for(predicate, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


@pytest.fixture
def server(tmp_path):
    """A job server preloading only json, watching this test process: (socket path, server process)."""
    socket_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"cnnrepro-test-{os.getpid()}-{time.monotonic_ns()}"
    socket_dir.mkdir()
    path = socket_dir / "server.sock"
    process = subprocess.Popen([sys.executable, "-m", "cnnrepro.runtime.job_server", "--socket", str(path),
                                "--watch-pid", str(os.getpid()), "--preload", "json"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(path.exists, "the server's socket")
    yield str(path), process
    job_server.stop(str(path))
    process.wait(timeout=TIMEOUT)


def run_job(tmp_path: Path, socket_path: str | None, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    # As Snakemake starts a job: OMP_NUM_THREADS and the other thread variables are the job's thread count.
    environment = {**os.environ, "COLOUR": "green", "OMP_NUM_THREADS": "1", **(env or {})}
    environment.pop(job_server.SOCKET_ENV, None)
    environment.pop(job_server.CHILD_ENV, None)
    if socket_path:
        environment[job_server.SOCKET_ENV] = socket_path
    return subprocess.run([sys.executable, str(script), *args], cwd=workdir, env=environment, capture_output=True,
                          text=True, timeout=TIMEOUT)


def test_a_delegated_job_runs_in_a_fork_with_the_jobs_folder_environment_arguments_and_streams(tmp_path, server):
    done = run_job(tmp_path, server[0], "ok", "x")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "forked 1" in lines  # it ran in the server's fork, not in the process that was started
    assert "preamble the job's object" in lines  # the fork ran the file that was started, preamble included
    assert f"cwd {tmp_path / 'work'}" in lines
    assert "colour green" in lines
    assert "argv ['ok', 'x']" in lines
    assert done.stderr.strip() == "to stderr"


def test_the_jobs_exit_status_and_traceback_reach_the_caller(tmp_path, server):
    assert run_job(tmp_path, server[0], "exit3").returncode == 3
    failed = run_job(tmp_path, server[0], "raise")
    assert failed.returncode == 1
    assert "forked 1" in failed.stdout
    assert "ValueError: the job failed" in failed.stderr and "Traceback" in failed.stderr


def test_without_a_server_the_job_runs_in_its_own_process(tmp_path):
    for socket_path in (None, str(tmp_path / "no-such.sock")):
        done = run_job(tmp_path, socket_path, "exit3")
        assert done.returncode == 3
        assert "forked None" in done.stdout


def test_a_job_a_fork_could_not_reproduce_runs_in_its_own_process(tmp_path, server):
    # Read when the interpreter starts: a fork of the server keeps the server's.
    done = run_job(tmp_path, server[0], env={"PYTHONHASHSEED": "123"})
    assert done.returncode == 0, done.stderr
    assert "forked None" in done.stdout
    # Without OMP_NUM_THREADS (Snakemake always sets it) a new process would choose its own thread count.
    done = run_job(tmp_path, server[0], env={"OMP_NUM_THREADS": ""})
    assert done.returncode == 0 and "forked None" in done.stdout, done.stderr


def test_torch_in_a_fork_uses_the_jobs_thread_count(tmp_path):
    path = str(tmp_path / "t.sock")
    process = subprocess.Popen([sys.executable, "-m", "cnnrepro.runtime.job_server", "--socket", path,
                                "--watch-pid", str(os.getpid()), "--preload", "torch"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: Path(path).exists(), "the server's socket")
        for threads in ("1", "3"):
            done = run_job(tmp_path, path, "threads", env={"OMP_NUM_THREADS": threads})
            assert "forked 1" in done.stdout, done.stderr
            assert f"torch threads {threads}" in done.stdout.splitlines()
    finally:
        job_server.stop(path)
        process.wait(timeout=TIMEOUT)


def start_sleeping_job(tmp_path: Path, socket_path: str) -> tuple[subprocess.Popen, int, Path]:
    """A delegated job that sleeps: (the process Snakemake would have started, the fork's pid, its pid file)."""
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    (tmp_path / "work").mkdir(exist_ok=True)
    pid_file = tmp_path / "job.pid"
    environment = {**os.environ, job_server.SOCKET_ENV: socket_path, "OMP_NUM_THREADS": "1"}
    environment.pop(job_server.CHILD_ENV, None)
    client = subprocess.Popen([sys.executable, str(script), "sleep", str(pid_file)], cwd=tmp_path / "work",
                              env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(pid_file.exists, "the job to start")
    job = int(pid_file.read_text())
    assert job != client.pid and alive(job)
    return client, job, pid_file


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_killing_the_job_process_snakemake_started_ends_the_forked_job(tmp_path, server):
    client, job, _ = start_sleeping_job(tmp_path, server[0])
    client.send_signal(signal.SIGKILL)  # Snakemake ending a job outright
    client.wait(timeout=TIMEOUT)
    wait_for(lambda: not alive(job), "the forked job to end")


def test_ctrl_c_reaches_the_forked_job_and_its_process_waits_for_it(tmp_path, server):
    client, job, pid_file = start_sleeping_job(tmp_path, server[0])
    client.send_signal(signal.SIGINT)
    client.wait(timeout=TIMEOUT)
    # The job got KeyboardInterrupt, ran its clean-up, and ended before its process reported 128 + SIGINT.
    assert client.returncode == 128 + signal.SIGINT, client.stderr.read()
    assert (tmp_path / "job.pid.interrupted").read_text() == "cleaned up"
    assert not alive(job)


def test_a_job_whose_supervisor_dies_is_killed_with_it(tmp_path, server):
    client, job, _ = start_sleeping_job(tmp_path, server[0])
    supervisor = parent_of(job)
    assert supervisor not in (client.pid, server[1].pid)
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: not alive(job), "the job to die with its supervisor")
    client.wait(timeout=TIMEOUT)
    assert client.returncode != 0 and "stopped while running this job" in client.stderr.read()


def test_stopping_the_server_ends_running_jobs_as_a_terminate_would(tmp_path, server):
    client, job, _ = start_sleeping_job(tmp_path, server[0])
    job_server.stop(server[0])
    client.wait(timeout=TIMEOUT)
    assert client.returncode == 128 + signal.SIGTERM
    assert not alive(job)


def test_a_jobs_exit_handlers_run_and_the_servers_do_not(tmp_path, server):
    marker = tmp_path / "atexit.txt"
    done = run_job(tmp_path, server[0], "atexit", str(marker))
    assert done.returncode == 0 and "forked 1" in done.stdout, done.stderr
    assert marker.read_text() == "ran"


def test_a_job_from_another_interpreter_is_declined():
    request = {"env": dict(os.environ), "interpreter": {**job_server._interpreter(), "prefix": "/opt/conda/envs/x"}}
    assert "interpreter" in job_server.decline_reason(request)
    same = {"env": {**os.environ, "OMP_NUM_THREADS": "4"}, "interpreter": job_server._interpreter()}
    assert job_server.decline_reason(same) is None


def test_the_server_exits_and_removes_its_socket_when_its_snakemake_goes(tmp_path):
    watched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    path = tmp_path / "s.sock"
    process = subprocess.Popen([sys.executable, "-m", "cnnrepro.runtime.job_server", "--socket", str(path),
                                "--watch-pid", str(watched.pid), "--preload", ""],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(path.exists, "the server's socket")
        watched.kill()
        watched.wait()
        out, _ = process.communicate(timeout=TIMEOUT)
    finally:
        watched.kill()
        process.kill()
    assert process.returncode == 0
    assert f"snakemake process {watched.pid} is gone" in out
    assert not path.exists()


def test_start_returns_a_listening_socket_and_stop_ends_the_server(tmp_path):
    log = tmp_path / "logs" / "job_server.log"
    path = job_server.start(tmp_path, log, os.getpid())
    try:
        assert Path(path).exists()
        pid = int(Path(path).with_suffix(".pid").read_text())
        assert alive(pid)
        done = run_job(tmp_path, path)
        assert done.returncode == 0 and "forked 1" in done.stdout, done.stderr
    finally:
        job_server.stop(path)
    wait_for(lambda: not alive(pid), "the server to exit")
    assert not Path(path).parent.exists()
    assert "listening on" in log.read_text()


def test_the_server_imports_nothing_that_touches_cuda(tmp_path):
    # A process that has initialised the CUDA driver cannot hand CUDA to its forks ("Cannot re-initialize CUDA in
    # forked subprocess"): the server's imports must not ask torch about devices. Every way they could is armed.
    probe = textwrap.dedent(f"""
        import torch

        def touched(*args, **kwargs):
            raise AssertionError("a preloaded module asked torch about CUDA devices at import")

        torch.cuda.is_available = torch.cuda.device_count = torch.cuda.init = touched
        torch._C._cuda_getDeviceCount = touched
        import importlib
        import matplotlib
        matplotlib.use("Agg")
        for module in {job_server.PRELOAD!r}:
            importlib.import_module(module)
        assert not torch.cuda.is_initialized()
        print("clean")
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "clean" in done.stdout, done.stderr[-3000:]
