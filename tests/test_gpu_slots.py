"""One GPU per job, or up to k small jobs per GPU: lock-file slots on fake GPUs (CUDA_VISIBLE_DEVICES lists them), no
GPU needed."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cnnrepro.runtime import gpu_slots


@pytest.fixture
def release_all():
    yield
    for slot in list(gpu_slots._held):
        gpu_slots.release(slot)


def test_gpus_come_from_cuda_visible_devices_else_the_query():
    assert gpu_slots.visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}, query=lambda: ["0"]) == ["2", "3"]
    assert gpu_slots.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, query=lambda: ["0"]) == []
    assert gpu_slots.visible_gpus({}, query=lambda: ["0", "1"]) == ["0", "1"]


def test_nothing_is_allocated_for_a_cpu_job_under_slurm_or_without_gpus(tmp_path):
    for device, env in (("cpu", {"CUDA_VISIBLE_DEVICES": "0,1"}),
                        ("auto", {"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_ID": "42"}),
                        ("auto", {})):
        before = dict(env)
        assert gpu_slots.acquire(device, env, tmp_path, query=lambda: []) is None
        assert env == before
    assert not list(tmp_path.iterdir())


def test_each_job_gets_its_own_gpu_and_one_waits_while_all_are_held(tmp_path, caplog, release_all):
    envs = [{"CUDA_VISIBLE_DEVICES": "0,1"} for _ in range(3)]
    first = gpu_slots.acquire("auto", envs[0], tmp_path)
    second = gpu_slots.acquire("cuda", envs[1], tmp_path)
    assert {first.gpu, second.gpu} == {"0", "1"}
    assert (envs[0]["CUDA_VISIBLE_DEVICES"], envs[1]["CUDA_VISIBLE_DEVICES"]) == (first.gpu, second.gpu)
    with caplog.at_level(logging.INFO, logger="cnnrepro.runtime.gpu_slots"):
        with pytest.raises(TimeoutError, match="no GPU slot became free"):
            gpu_slots.acquire("auto", envs[2], tmp_path, poll=0.01, timeout=0.1)
    assert "waiting for a free GPU slot: all 2 are held" in caplog.text
    assert f"pid {os.getpid()}" in caplog.text  # says who holds them
    assert envs[2] == {"CUDA_VISIBLE_DEVICES": "0,1"}
    gpu_slots.release(first)
    assert gpu_slots.acquire("auto", envs[2], tmp_path).gpu == first.gpu


HOLDER = textwrap.dedent("""
    import logging, sys, time
    from pathlib import Path
    from cnnrepro.runtime import gpu_slots

    slot_dir, out, log = sys.argv[1:4]  # then the visible GPUs and how many jobs may share one
    logging.basicConfig(filename=log, level=logging.INFO)
    env = {"CUDA_VISIBLE_DEVICES": sys.argv[4]}
    slot = gpu_slots.acquire("auto", env, slot_dir, poll=0.05, share=int(sys.argv[5]))
    Path(out).write_text(env["CUDA_VISIBLE_DEVICES"])
    time.sleep(120)
""")


def _wait_for(predicate, what: str, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_holder(procs: list, tmp_path: Path, name: str, gpus: str, share: int):
    """A process that takes a slot (among ``gpus``, sharing with up to ``share`` jobs), writes its GPU to
    ``<name>.slot`` and holds it; its log in ``<name>.log``."""
    out, log = tmp_path / f"{name}.slot", tmp_path / f"{name}.log"
    procs.append(subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "slots"), str(out), str(log), gpus,
                                   str(share)]))
    return procs[-1], out, log


def test_processes_never_share_a_gpu_and_a_killed_holder_frees_its_slot(tmp_path):
    procs = []

    def start(name):
        return start_holder(procs, tmp_path, name, "0,1", 1)

    try:
        (a, a_out, _), (b, b_out, _) = start("a"), start("b")
        _wait_for(lambda: a_out.exists() and b_out.exists(), "two holders to get a slot")
        assert {a_out.read_text(), b_out.read_text()} == {"0", "1"}
        c, c_out, c_log = start("c")
        _wait_for(lambda: c_log.exists() and "waiting for a free GPU slot" in c_log.read_text(),
                  "the third job to log that it waits")
        assert not c_out.exists()
        a.send_signal(signal.SIGKILL)  # dies holding its slot: the kernel releases the lock
        a.wait(timeout=30)
        _wait_for(c_out.exists, "the waiting job to get the dead job's slot")
        assert c_out.read_text() == a_out.read_text()
        assert b.poll() is None  # the other holder is untouched
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def test_up_to_k_sharing_jobs_hold_one_gpu_and_the_next_one_takes_the_next_gpu_or_waits(tmp_path, caplog,
                                                                                      release_all):
    one_gpu = [{"CUDA_VISIBLE_DEVICES": "0"} for _ in range(4)]
    sharers = [gpu_slots.acquire("auto", env, tmp_path, share=3) for env in one_gpu[:3]]
    assert [slot.gpu for slot in sharers] == ["0", "0", "0"]
    assert len({slot.lock_files for slot in sharers}) == 3  # each its own share of the GPU
    with caplog.at_level(logging.INFO, logger="cnnrepro.runtime.gpu_slots"):
        with pytest.raises(TimeoutError):
            gpu_slots.acquire("auto", one_gpu[3], tmp_path, share=3, poll=0.01, timeout=0.1)
    assert "waiting for a free GPU slot (a GPU up to 3 jobs share)" in caplog.text
    assert f"GPU 0: shared by pid {os.getpid()}, pid {os.getpid()}, pid {os.getpid()}" in caplog.text
    gpu_slots.release(sharers[1])
    assert gpu_slots.acquire("auto", one_gpu[3], tmp_path, share=3).gpu == "0"
    # With two GPUs, the first fills before the second is touched: whole GPUs stay free for jobs alone.
    two_gpus = tmp_path / "two"
    slots = [gpu_slots.acquire("auto", {"CUDA_VISIBLE_DEVICES": "0,1"}, two_gpus, share=2) for _ in range(3)]
    assert [slot.gpu for slot in slots] == ["0", "0", "1"]


def test_a_job_alone_waits_until_no_sharer_holds_the_gpu_and_sharers_wait_while_it_runs(tmp_path, caplog,
                                                                                     release_all):
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    first, second = (gpu_slots.acquire("auto", dict(env), tmp_path, share=2) for _ in range(2))
    with caplog.at_level(logging.INFO, logger="cnnrepro.runtime.gpu_slots"):
        gpu_slots.release(first)
        with pytest.raises(TimeoutError):  # one sharer is enough to keep it out
            gpu_slots.acquire("cuda", dict(env), tmp_path, poll=0.01, timeout=0.1)
        gpu_slots.release(second)
        alone = gpu_slots.acquire("cuda", dict(env), tmp_path)
        assert alone.gpu == "0" and alone.share == 1
        for share in (2, 4):  # no sharer gets in, whatever its k
            with pytest.raises(TimeoutError):
                gpu_slots.acquire("auto", dict(env), tmp_path, share=share, poll=0.01, timeout=0.1)
        with pytest.raises(TimeoutError):
            gpu_slots.acquire("auto", dict(env), tmp_path, poll=0.01, timeout=0.1)
    assert f"GPU 0: pid {os.getpid()} alone" in caplog.text
    gpu_slots.release(alone)
    assert gpu_slots.acquire("auto", dict(env), tmp_path, share=2).gpu == "0"


def test_sharing_processes_hold_one_gpu_and_a_killed_sharer_frees_its_share(tmp_path):
    procs = []
    try:
        (a, a_out, _), (b, b_out, _) = (start_holder(procs, tmp_path, name, "0", 2) for name in ("a", "b"))
        _wait_for(lambda: a_out.exists() and b_out.exists(), "two sharers to get the one GPU")
        assert a_out.read_text() == b_out.read_text() == "0"
        c, c_out, c_log = start_holder(procs, tmp_path, "c", "0", 2)
        alone, alone_out, alone_log = start_holder(procs, tmp_path, "alone", "0", 1)
        _wait_for(lambda: all(log.exists() and "waiting for a free GPU slot" in log.read_text()
                              for log in (c_log, alone_log)), "the third sharer and a job alone to log that they wait")
        a.send_signal(signal.SIGKILL)  # dies holding its share: the kernel releases both of its locks
        a.wait(timeout=30)
        _wait_for(c_out.exists, "the waiting sharer to get the dead sharer's share")
        assert not alone_out.exists()  # b and c still share the GPU
        for proc in (b, c):
            proc.kill()
            proc.wait(timeout=30)
        _wait_for(alone_out.exists, "the job alone to get the GPU once no sharer holds it")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def test_the_workflow_scripts_take_a_slot_before_training_or_timing_on_the_gpu():
    from tests.conftest import REPO

    for script in ("train.py", "benchmark.py"):
        text = (REPO / "workflow" / "scripts" / script).read_text()
        work = "train_run(sm" if script == "train.py" else "benchmark_job("
        assert text.index("gpu_slots.acquire(") < text.index(work)
    assert Path(gpu_slots.default_slot_dir()).name.startswith("cnnrepro-gpu-slots")
