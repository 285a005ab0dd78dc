"""Fault tolerance of the whole workflow: a SIGKILLed snakemake rerun to the same tables, a full disk during atomic
writes and during training, and a second snakemake refused in a directory that is in use.

The workflow tests run the real ``snakemake`` command in temporary copies of the workflow. Aggregation needs every
configured run, so a cheap run that still ends in the real tables keeps config.yaml's settings but only one of its
studies (seed 003: five small training jobs and six benchmarks; the smoke preset adds smoke_sanity), with the smoke
preset and an overlay of 3 epochs, so a job is still training when the first checkpoint appears. One uninterrupted
run is the baseline and also the run a second snakemake tries to join.

The disk-full tests mount small tmpfs file systems (root only; they skip otherwise, or when mount fails).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from cnnrepro import config as cfgmod
from cnnrepro.engine import checkpoint, train
from cnnrepro.runtime import io
from tests.test_e2e import copy_workflow

STUDY = "seed003_kmnist_fcnn_cnn"
OVERLAY = "faults.yaml"
# The smoke preset with 3 epochs instead of 1: a checkpoint is written after every epoch, so a kill can land between.
# Without the study's benchmarks: these tests are about training and the tables made from it.
OVERLAY_TEXT = f"limits:\n  max_epochs: 3\nstudies:\n  {STUDY}:\n    benchmark: false\n"
RESULTS = Path("results/smoke")
# Up to the tables of every study (what the killed run is compared on); figures and pages add nothing to these tests.
COMMAND = (str(RESULTS / "tables" / "runs.csv"), "--cores", "2", "--configfile", "presets/smoke.yaml", OVERLAY)
LOCKED = "Directory cannot be locked"
TIMEOUT = 900


# --------------------------------------------------------------------------------------------------------------------
# helpers: a cheap workflow copy, snakemake in its own session, process groups
# --------------------------------------------------------------------------------------------------------------------


def one_study_workflow(dest: Path) -> Path:
    """A copy of the workflow whose config.yaml keeps only STUDY (everything else as in the repository)."""
    copy_workflow(dest, keep_studies=(STUDY,))
    (dest / OVERLAY).write_text(OVERLAY_TEXT)
    return dest


def environment(workdir: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(workdir / "src")}


def start(workdir: Path, log_name: str) -> tuple[subprocess.Popen, Path]:
    """snakemake in a new session, so it and every job it starts can be killed as one process group."""
    log = workdir / log_name
    with open(log, "w") as handle:
        proc = subprocess.Popen(["snakemake", *COMMAND], cwd=workdir, env=environment(workdir), stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def run(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", *COMMAND, *extra], cwd=workdir, env=environment(workdir),
                          capture_output=True, text=True, timeout=TIMEOUT)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # exited meanwhile
            continue
        state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(int(entry))
    return members


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def checkpoints(workdir: Path, study: str = "") -> list[Path]:
    return sorted((workdir / RESULTS / "checkpoints" / study).glob("**/checkpoint.pt"))


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def measures_the_machine(column: str) -> bool:
    """Columns that time the run, stamp its clock or name the hardware: they differ between two runs of the same
    numbers."""
    tokens = re.split(r"[_.]", column.lower())
    return "ms" in tokens or any(word in column.lower() for word in
                                 ("time", "seconds", "latency", "peak_memory", "device", "started_at", "finished_at"))


def comparable(table: Path) -> pd.DataFrame:
    frame = pd.read_csv(table)
    return frame.drop(columns=[c for c in frame.columns if measures_the_machine(c)])


def partial_files(workdir: Path) -> list[Path]:
    """Temporaries of io.atomic_path (.<name>.<random>.tmp) anywhere in the results."""
    return sorted((workdir / RESULTS).rglob(".*.tmp"))


# --------------------------------------------------------------------------------------------------------------------
# the shared runs
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One uninterrupted run; while it runs, a second identical snakemake is started in the same directory."""
    workdir = one_study_workflow(tmp_path_factory.mktemp("baseline"))
    first, log = start(workdir, "first.log")
    try:
        # Jobs write their logs only after snakemake has locked the directory.
        deadline = time.time() + TIMEOUT
        while not any(p.is_file() for p in (workdir / RESULTS / "logs").rglob("*")):
            assert first.poll() is None, f"the first snakemake ended before any job started:\n{tail(log)}"
            assert time.time() < deadline, "no job started"
            time.sleep(0.1)
        second = run(workdir)
        first_running = first.poll() is None
        first.wait(timeout=TIMEOUT)
    finally:
        if first.poll() is None:
            kill_group(first)
    return {"workdir": workdir, "first_rc": first.returncode, "first_log": log, "second": second,
            "first_running_when_second_ended": first_running}


@pytest.fixture(scope="module")
def killed_and_rerun(tmp_path_factory):
    """The same run SIGKILLed (snakemake and all its jobs) once a checkpoint exists, then the same command again."""
    workdir = one_study_workflow(tmp_path_factory.mktemp("killed"))
    proc, log = start(workdir, "killed.log")
    try:
        deadline = time.time() + TIMEOUT
        while True:
            assert proc.poll() is None, f"the run finished before a checkpoint was seen:\n{tail(log)}"
            assert time.time() < deadline, "no checkpoint within the time limit"
            jobs = [pid for pid in group_members(proc.pid) if pid != proc.pid]
            # A seed 003 job (3 epochs) has finished an epoch: it is killed with epochs still to train.
            if checkpoints(workdir, STUDY) and len(jobs) >= 2:
                break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        time.sleep(0.2)
        survivors = group_members(proc.pid)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    state = {"workdir": workdir, "killed_rc": proc.returncode, "jobs_in_flight": len(jobs), "survivors": survivors,
             "checkpoints_at_kill": [p.parent.relative_to(workdir / RESULTS / "checkpoints")
                                     for p in checkpoints(workdir)],
             "tables_at_kill": sorted((workdir / RESULTS / "tables").glob("*.csv"))}
    rerun = run(workdir)
    state["stale_lock"] = rerun.returncode != 0 and LOCKED in rerun.stderr
    if state["stale_lock"]:
        # What snakemake's message tells the user to do. The test still fails at its end (see below), but first
        # checks everything else the rerun must get right.
        unlock = run(workdir, "--unlock")
        assert unlock.returncode == 0, unlock.stderr[-4000:]
        state["lock_message"] = rerun.stderr[-2000:]
        rerun = run(workdir)
    state["rerun"] = rerun
    return state


# --------------------------------------------------------------------------------------------------------------------
# 1. a killed workflow
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_killed_workflow_reruns_to_the_uninterrupted_tables(baseline, killed_and_rerun):
    state = killed_and_rerun
    workdir, rerun = state["workdir"], state["rerun"]
    # The kill landed mid-run: several jobs in flight, a checkpoint written, no table yet; nothing survived it.
    assert state["killed_rc"] == -signal.SIGKILL
    assert state["jobs_in_flight"] >= 2 and state["checkpoints_at_kill"] and not state["tables_at_kill"]
    assert state["survivors"] == []

    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert baseline["first_rc"] == 0, tail(baseline["first_log"])
    base_tables = sorted(p.name for p in (baseline["workdir"] / RESULTS / "tables").glob("*.csv"))
    assert {"runs.csv", "models.csv", "seed003_table1_f1_test.csv"} <= set(base_tables)
    for name in base_tables:
        ours, reference = comparable(workdir / RESULTS / "tables" / name), comparable(
            baseline["workdir"] / RESULTS / "tables" / name)
        assert len(ours.columns) > 3, name
        pd.testing.assert_frame_equal(ours, reference, obj=name)

    # No partial file is used or left: every output parses, no temporary remains, no checkpoint is left over.
    assert partial_files(workdir) == []
    runs = sorted((workdir / RESULTS / "runs").glob("**/metrics.json"))
    assert len(runs) == 6  # five seed 003 runs and smoke_sanity
    for metrics in runs:
        record = json.loads(metrics.read_text())
        assert record["status"] == "ok", metrics
        torch.load(metrics.with_name("weights.pt"), map_location="cpu", weights_only=True)
        # Per-epoch numbers too, not just the tables' final ones.
        reference = baseline["workdir"] / metrics.relative_to(workdir).with_name("history.csv")
        history = pd.read_csv(metrics.with_name("history.csv")).drop(columns="epoch_seconds")
        pd.testing.assert_frame_equal(history, pd.read_csv(reference).drop(columns="epoch_seconds"))
    assert checkpoints(workdir) == []

    # The rerun continued the killed jobs from their checkpoints instead of starting them over.
    train_logs = workdir / RESULTS / "logs" / "train"
    resumed = {}
    for path in train_logs.rglob("*.log"):
        if found := re.search(r"resuming \S+ from the checkpoint after epoch (\d+)", path.read_text()):
            resumed[str(path.relative_to(train_logs).with_suffix(""))] = int(found.group(1))
    killed = {str(run_dir): resumed.get(str(run_dir)) for run_dir in state["checkpoints_at_kill"]}
    assert None not in killed.values(), f"a job killed after writing a checkpoint did not resume from it: {killed}"
    assert any(epoch < 3 for run_id, epoch in killed.items() if run_id.startswith(STUDY)), killed  # mid-training

    # Last, so the checks above still run: the very same command must not need `snakemake --unlock` first.
    assert not state["stale_lock"], (
        "after the SIGKILL, rerunning the same command stopped at snakemake's stale lock (it passed after "
        "`snakemake --unlock`):\n" + state.get("lock_message", ""))


# --------------------------------------------------------------------------------------------------------------------
# 3. a second snakemake in the same directory
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_second_snakemake_in_the_same_directory_is_refused(baseline):
    second = baseline["second"]
    assert second.returncode != 0
    assert LOCKED in second.stderr, second.stderr[-4000:]
    # It was refused while the first was running, and the first still completed.
    assert baseline["first_running_when_second_ended"]
    assert baseline["first_rc"] == 0, tail(baseline["first_log"])
    assert (baseline["workdir"] / RESULTS / "tables" / "runs.csv").is_file()  # its target, complete
    assert partial_files(baseline["workdir"]) == []


# --------------------------------------------------------------------------------------------------------------------
# 2. a full disk while writing
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A factory of small tmpfs file systems under tmp_path (root only), unmounted afterwards."""
    mounted = []

    def make(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("a full disk is simulated with a small tmpfs, which needs root to mount")
        if not shutil.which("mount"):
            pytest.skip("no mount command to create a small tmpfs")
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs (e.g. no CAP_SYS_ADMIN in this container): "
                        f"{result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield make
    for folder in reversed(mounted):
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of ``folder`` until at most ``leave`` bytes are free; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "ab") as handle:
        while True:
            stat = os.statvfs(folder)
            free = stat.f_bavail * stat.f_frsize
            if free <= leave:
                break
            try:
                handle.write(b"\0" * min(free - leave, 1 << 20))
                handle.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return filler


def assert_disk_full_error(exc: OSError, path: Path) -> None:
    message = str(exc)
    assert exc.errno == errno.ENOSPC
    assert "disk full" in message and path.name in message and str(path.parent) in message, message


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    # As aggregate writes its tables.
    with io.atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def big_state() -> dict:
    """A checkpoint-sized object: a 4 MiB parameter plus optimizer state of the same size."""
    weight = torch.arange(1 << 20, dtype=torch.float32).reshape(1024, 1024)
    return {"version": checkpoint.VERSION, "epoch": 2, "model": {"w": weight}, "optimizer": {"exp_avg": weight * 2}}


WRITERS = {
    "json": (lambda path, new: io.write_json(path, new),
             {"epoch": 1}, {"epoch": 2, "history": [{"loss": 0.5 + i} for i in range(20000)]},
             lambda path: json.loads(path.read_text())),
    "checkpoint": (lambda path, new: io.torch_save(new, path),
                   {"version": checkpoint.VERSION, "epoch": 1, "model": {"w": torch.ones(16)}}, big_state(),
                   lambda path: torch.load(path, map_location="cpu", weights_only=False)),
    "csv": (write_csv,
            pd.DataFrame({"model": ["cnn"], "top1": [0.9]}),
            pd.DataFrame({"model": ["cnn"] * 50000, "top1": [0.1] * 50000}),
            lambda path: pd.read_csv(path)),
}


@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_write_that_runs_out_of_space_keeps_the_previous_file(kind, small_disk):
    write, previous, new, read = WRITERS[kind]
    folder = small_disk("4m") / "results"
    path = folder / {"json": "metrics.json", "checkpoint": "checkpoint.pt", "csv": "runs.csv"}[kind]
    write(path, previous)
    before = path.read_bytes()
    fill(folder.parent, leave=64 << 10)  # some room: the temporary is partly written before the disk is full
    with pytest.raises(OSError) as raised:
        write(path, new)
    assert_disk_full_error(raised.value, path)
    assert path.read_bytes() == before  # the previous complete file, untouched
    assert sorted(p.name for p in folder.iterdir()) == [path.name]  # no temporary left behind
    got = read(path)
    if kind == "csv":
        pd.testing.assert_frame_equal(got, previous)
    elif kind == "checkpoint":
        assert got["epoch"] == 1 and torch.equal(got["model"]["w"], previous["model"]["w"])
    else:
        assert got == previous


def test_a_write_on_a_completely_full_disk_fails_the_same_way(small_disk):
    folder = small_disk("1m")
    path = folder / "metrics.json"
    io.write_json(path, {"epoch": 1})
    fill(folder)
    with pytest.raises(OSError) as raised:
        io.write_json(path, {"epoch": 2})
    assert_disk_full_error(raised.value, path)
    assert io.read_json(path) == {"epoch": 1}
    assert not list(folder.glob(".*.tmp"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_is_recognised_through_the_writers_own_exceptions(code, tmp_path):
    """No mount needed: the error as a writer raises it (torch.save wraps it in a RuntimeError) keeps its errno."""
    path = tmp_path / "out" / "checkpoint.pt"
    with pytest.raises(OSError) as raised:
        with io.atomic_path(path) as tmp:
            tmp.write_bytes(b"partial")
            try:
                raise OSError(code, os.strerror(code))
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")  # as torch.save does
    assert raised.value.errno == code
    message = str(raised.value)
    assert "disk full" in message and "checkpoint.pt" in message and str(path.parent) in message
    assert ("quota" in message) == (code == errno.EDQUOT)
    assert not path.exists() and not list(path.parent.iterdir())


def test_other_write_errors_pass_through_unchanged(tmp_path):
    error = OSError(errno.EACCES, "permission denied")
    with pytest.raises(OSError) as raised:
        with io.atomic_path(tmp_path / "x.json"):
            raise error
    assert raised.value is error
    assert not list(tmp_path.iterdir())



def test_atomic_outputs_get_the_mode_open_would_give_them(tmp_path):
    # mkstemp makes owner-only files; results and reports are read by others (a group's folder, a web server).
    old = os.umask(0o027)
    try:
        io.write_text(tmp_path / "a.txt", "x")
        with io.atomic_path(tmp_path / "b.pt") as tmp:
            torch.save({"w": 1}, tmp)
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.pt").stat().st_mode & 0o777 == 0o640

# --------------------------------------------------------------------------------------------------------------------
# 2b. a full disk during training
# --------------------------------------------------------------------------------------------------------------------


NORMALIZATION = {"mnist": {"mean": [0.1307], "std": [0.3081]}}
VOLATILE = ("train_seconds", "peak_memory_bytes", "resumed")


def make_settings(model: str = "fcnn", epochs: int = 3) -> dict:
    """Settings as the workflow builds them, from a one-study config (as tests/test_train.py does)."""
    study = {"datasets": ["mnist"], "models": [model], "freeze": ["none"], "pretrained": False,
             "input": {"normalization": "mnist"}, "augment": "none", "eval_split": "test",
             "recipe": {"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "loss": "ce", "schedule": "constant",
                        "epochs": epochs}}
    config = cfgmod.validate({"studies": {"unit": study}, "normalization": NORMALIZATION,
                              "freeze_levels": {"none": "all"}, "device": "cpu"})
    return cfgmod.run_settings(config, cfgmod.Run("unit", "mnist", model, "none", "base", 0))


def stable(record: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(record)).items() if k not in VOLATILE}


pytestmark = pytest.mark.usefixtures("torch_globals_restored")


def test_training_with_its_checkpoint_on_a_full_disk_fails_clearly_and_resumes(small_disk, data_file, tmp_path,
                                                                                monkeypatch, caplog):
    disk = small_disk("64m")
    settings = make_settings()
    out = tmp_path / "run"
    outputs = train.RunOutputs(out / "weights.pt", out / "history.csv", out / "metrics.json",
                               disk / "checkpoints" / "checkpoint.pt")
    real, calls = train.train_one_epoch, []

    def fills_the_disk_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # after epoch 1's checkpoint: the disk fills up while epoch 2 trains
            fill(disk, leave=64 << 10)
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train, "train_one_epoch", fills_the_disk_in_epoch_2)
        with pytest.raises(OSError) as raised:
            train.train_run(settings, data_file, outputs, threads=1)
    assert_disk_full_error(raised.value, outputs.checkpoint)
    assert len(calls) == 2 and not outputs.metrics.exists()
    assert sorted(p.name for p in outputs.checkpoint.parent.iterdir()) == ["checkpoint.pt"]  # no temporary
    ckpt = torch.load(outputs.checkpoint, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["version"] == checkpoint.VERSION  # epoch 1's, complete

    # Space freed, the same run continues from epoch 1's checkpoint to the numbers of an uninterrupted run.
    (disk / "filler").unlink()
    caplog.set_level(logging.INFO, logger="cnnrepro.engine.train")
    resumed = train.train_run(settings, data_file, outputs, threads=1)
    assert f"resuming {settings['run_id']} from the checkpoint after epoch 1" in caplog.text
    plain = tmp_path / "plain"
    reference = train.train_run(settings, data_file, train.RunOutputs(
        plain / "weights.pt", plain / "history.csv", plain / "metrics.json", plain / "checkpoint.pt"), threads=1)
    assert stable(resumed) == stable(reference)
    assert not outputs.checkpoint.exists()
