"""A throw-away single-node SLURM (munge, slurmctld, slurmd from Debian's packages) for the integration test.

Everything lives in one temporary directory: configuration (found through SLURM_CONF), munge key and socket,
state, spool, logs and pid files, on free ports, so nothing in /etc is touched and a second run starts clean.
The node has this machine's CPUs, most of its memory and a fake GPU (a gres backed by /dev/null, as SLURM
22.05 needs a device file), in two partitions, ``cpu`` (the default) and ``gpu``. Needs root (munged runs as
the munge user, slurmctld and slurmd as root, and jobs run as the submitting user).

By hand:
    python tests/slurm/cluster.py start /tmp/slurm-test   # prints the export line for SLURM_CONF
    python tests/slurm/cluster.py stop /tmp/slurm-test    # stops the daemons by their pid files, removes the dir
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel", "mungekey")
INSTALL = "apt-get install slurmctld slurmd slurm-client munge"


def unavailable_reason() -> str | None:
    """Why a local SLURM cannot be started here, or None."""
    if os.name != "posix" or os.geteuid() != 0:
        return "starting munged, slurmctld and slurmd needs root"
    missing = [name for name in DAEMONS + CLIENTS if not _which(name)]
    if missing:
        return f"SLURM or munge is not installed (missing {', '.join(missing)}; {INSTALL})"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "there is no munge user (the munge package creates it)"
    return None


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class Cluster:
    """One node, ``cpus`` CPUs, ``memory_mb`` MB and one fake GPU, in partitions ``cpu`` (default) and ``gpu``."""

    def __init__(self, root: Path, cpus: int | None = None, memory_mb: int | None = None):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        # slurmd refuses a node configured with more memory than it has; leave room for the daemons.
        self.memory_mb = memory_mb or int(0.8 * _memory_mb())
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge = self.root / "munge"
        self.logs = self.root / "log"

    @property
    def env(self) -> dict:
        """The environment for SLURM's commands (and Snakemake, which calls them) to reach this cluster."""
        path = f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path}

    def pid_files(self) -> dict:
        return {"slurmd": self.root / "slurmd.pid", "slurmctld": self.root / "slurmctld.pid",
                "munged": self.munge / "munged.pid"}

    # ----------------------------------------------------------------- start
    def start(self, timeout: float = 60) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # munged (user munge) must reach its socket below
        for sub in ("etc", "state", "spool", "log"):
            (self.root / sub).mkdir(exist_ok=True)
        self._start_munge()
        self._write_config()
        self._run([_which("slurmctld")])
        self._run([_which("slurmd"), "-N", "localhost"])
        self._wait_until_idle(timeout)
        return self

    def _start_munge(self):
        munge = pwd.getpwnam("munge")
        self.munge.mkdir(exist_ok=True)
        os.chown(self.munge, munge.pw_uid, munge.pw_gid)
        self.munge.chmod(0o755)  # munged requires the socket's directory to be searchable by all
        as_munge = ["su", "-s", "/bin/sh", "munge", "-c"]
        key = self.munge / "munge.key"
        self._run(as_munge + [f"{_which('mungekey')} --create --keyfile={key}"])
        self._run(as_munge + [
            f"{_which('munged')} --socket={self.munge / 'munge.socket'} --key-file={key} "
            f"--pid-file={self.munge / 'munged.pid'} --log-file={self.munge / 'munged.log'} "
            f"--seed-file={self.munge / 'munged.seed'}"])

    def _write_config(self):
        r = self.root
        self.conf.write_text(f"""\
ClusterName=cnnrepro-test
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge / 'munge.socket'}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={self.logs / 'slurmctld.log'}
SlurmdLogFile={self.logs / 'slurmd.log'}
PlugStackConfig={r / 'etc' / 'plugstack.conf'}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to scontrol for an hour: the test reads every job's request after the run.
MinJobAge=3600
ReturnToService=2
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
""")
        (r / "etc" / "gres.conf").write_text("Name=gpu File=/dev/null\n")
        (r / "etc" / "plugstack.conf").write_text("")
        # Inside a job, the executor's jobstep (snakemake-executor-plugin-slurm-jobstep 0.6.1) removes every SLURM_*
        # variable but the job's ids before its inner `srun`, SLURM_CONF too. A real cluster's srun then finds
        # /etc/slurm/slurm.conf; this one's config is elsewhere, so an srun first on PATH puts SLURM_CONF back.
        (r / "bin").mkdir(exist_ok=True)
        srun = r / "bin" / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {_which("srun")} "$@"\n')
        srun.chmod(0o755)

    def _run(self, command: list, timeout: float = 30) -> subprocess.CompletedProcess:
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}\n"
                               + self.diagnostics())
        return result

    def _wait_until_idle(self, timeout: float):
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            result = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True,
                                    timeout=30)
            state = result.stdout.split()
            if state and all(s == "idle" for s in state):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM node did not become idle within {timeout:g} s (sinfo: {state})\n"
                           + self.diagnostics())

    # ------------------------------------------------------------------ stop
    def job_ids(self, states: str = "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED") -> list:
        result = subprocess.run(["squeue", "-h", "-t", states, "-o", "%i"], env=self.env, capture_output=True,
                                text=True, timeout=30)
        return result.stdout.split() if result.returncode == 0 else []

    def stop(self, remove: bool = True):
        """Cancel what is still queued or running, stop the daemons by their pid files, remove the directory."""
        if self.conf.exists() and self.pid_files()["slurmctld"].exists():
            ids = self.job_ids()
            if ids:
                subprocess.run(["scancel", *ids], env=self.env, capture_output=True, timeout=30)
                deadline = time.monotonic() + 30
                while self.job_ids() and time.monotonic() < deadline:
                    time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            _stop_pid(self.pid_files()[name])
        # proctrack/linuxproc loses a job's processes once their parent has exited (a cancelled job's inner
        # snakemake survives its srun): stop every process still carrying this cluster's SLURM_CONF.
        for pid in self.stray_processes():
            _stop_pid(pid)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def stray_processes(self) -> list:
        """Processes started for this cluster (daemons, jobs, Snakemake): their environment names its config."""
        marker = f"SLURM_CONF={self.conf}".encode() + b"\0"
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if marker in (proc / "environ").read_bytes():
                    pids.append(int(proc.name))
            except OSError:  # exited meanwhile, or a kernel thread
                continue
        return pids

    # ----------------------------------------------------------- diagnostics
    def diagnostics(self, lines: int = 60) -> str:
        """The daemons' log tails and SLURM's view of jobs and nodes, for a failing test's report."""
        parts = []
        for log in (self.logs / "slurmctld.log", self.logs / "slurmd.log", self.munge / "munged.log"):
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        if self.conf.exists():
            for command in (["squeue", "-t", "all", "-o", "%i %P %j %T %r %C %m %b"],
                            ["scontrol", "show", "nodes"], ["scontrol", "-o", "show", "jobs"]):
                try:
                    result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=30)
                    out = (result.stdout + result.stderr).splitlines()[-lines:]
                except (OSError, subprocess.TimeoutExpired) as error:
                    out = [str(error)]
                parts.append(f"--- {' '.join(command)}\n" + "\n".join(out))
        return "\n".join(parts)


def _stop_pid(pid_or_file: int | Path, timeout: float = 15):
    """SIGTERM the process (given, or named in a pid file) and wait for it to exit (SIGKILL after ``timeout``)."""
    try:
        pid = pid_or_file if isinstance(pid_or_file, int) else int(pid_or_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def main(argv: list) -> int:
    if len(argv) != 2 or argv[0] not in {"start", "stop"}:
        print(__doc__, file=sys.stderr)
        return 2
    action, root = argv[0], Path(argv[1]).resolve()
    if action == "start":
        reason = unavailable_reason()
        if reason:
            print(f"cannot start SLURM: {reason}", file=sys.stderr)
            return 1
        Cluster(root).start()
        print(f"export SLURM_CONF={root / 'etc' / 'slurm.conf'}")
    else:
        Cluster(root).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
