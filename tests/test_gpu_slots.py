"""One GPU per job, or up to k small jobs per GPU: lock-file slots on fake GPUs (CUDA_VISIBLE_DEVICES lists them), no
GPU needed."""

import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

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


# ------------------------------------------------------------------------ the workflow, small runs sharing a GPU
def sharing_overlay(gpu_memory_gib: float) -> dict:
    """Three small runs (an FCNN, 23 MiB planned) and a large one (a CNN, 91 MiB) on synthetic MNIST, one epoch."""
    recipe = {"optimizer": "adam", "lr": 1.0e-3, "batch_size": 16, "schedule": "constant", "epochs": 1}
    study = {"datasets": ["mnist"], "input": {"normalization": "mnist"}, "recipe": recipe, "benchmark": False}
    return {"results": "results/sharing", "device": "auto", "train_threads": 1, "job_server": True,
            "gpu_share": 3, "gpu_memory_gib": gpu_memory_gib,
            "data": {"source": "synthetic", "synthetic_train": 256, "synthetic_test": 128},
            "limits": {"max_epochs": 1, "input_size": 32, "pretrained": False},
            "studies": {"small": {**study, "title": "three small runs", "models": ["fcnn"], "seeds": [0, 1, 2]},
                        "large": {**study, "title": "one larger run", "models": ["cnn"], "seeds": [0]}}}


def train_jobs(output: str) -> tuple[dict, list]:
    """Snakemake's log of a run: each train job's (model, resources), and the order its jobs started and ended
    in, as ("start" | "end", jobid)."""
    jobs, events, rule, jobid = {}, [], None, None
    for line in output.splitlines():
        if started := re.match(r"\s*(?:local)?rule (\w+):", line):
            rule, jobid = started.group(1), None
        elif (number := re.match(r"\s+jobid: (\d+)", line)) and rule == "train":
            jobid = int(number.group(1))
            events.append(("start", jobid))
        elif jobid is not None and (wildcards := re.match(r"\s+wildcards: .*model=(\w+)", line)):
            jobs[jobid] = [wildcards.group(1), None]
        elif jobid is not None and line.strip().startswith("resources:"):
            jobs[jobid][1] = line.strip()
        elif ended := re.match(r"Finished jobid: (\d+) \(Rule: train\)", line):
            events.append(("end", int(ended.group(1))))
    return jobs, events


@pytest.mark.e2e
def test_the_workflow_runs_small_runs_together_on_one_gpu_and_a_large_run_alone(tmp_path):
    """The real snakemake with gpu_share 3 on one fake GPU (torch finds no driver and trains on the CPU): the
    workflow derives the GPU shares from --resources gpu=1 (profiles/default), starts the three small runs at once
    and the large one never beside them, and each job's slot says how it holds the GPU."""
    from cnnrepro.plan import share
    from tests.test_e2e import copy_workflow

    (tmp_path / "workflow").mkdir()
    workdir = copy_workflow(tmp_path / "workflow", keep_studies=())
    # The GPU memory in which three FCNNs with a CUDA context each fit, and no CNN.
    memory = 3 * (share.CUDA_CONTEXT_BYTES + 50 * 2**20) / share.MEMORY_HEADROOM / 2**30
    (workdir / "sharing.yaml").write_text(yaml.safe_dump(sharing_overlay(memory)))
    env = {**os.environ, "PYTHONPATH": str(workdir / "src"), "CUDA_VISIBLE_DEVICES": "0",
           gpu_slots.SLOT_DIR_ENV: str(tmp_path / "slots")}

    def snakemake(*args):
        result = subprocess.run(["snakemake", "--cores", "3", "--configfile", "sharing.yaml", "--until", "train",
                                 *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout + result.stderr

    # Without sharing every training job holds a GPU alone, as it always did: no share, no shard.
    unshared, _ = train_jobs(snakemake("-n", "--config", "gpu_share=1"))
    assert len(unshared) == 4 and all(", gpu=1, runtime=" in res for _, res in unshared.values()), unshared
    output = snakemake()
    provided = next(line for line in output.splitlines() if line.startswith("Provided resources:"))
    assert re.search(r'gpu_shares=(Resource\("gpu_shares", )?3\b', provided), provided  # 3 per --resources gpu
    jobs, events = train_jobs(output)
    small = {jobid for jobid, (model, _) in jobs.items() if model == "fcnn"}
    [large] = {jobid for jobid, (model, _) in jobs.items() if model == "cnn"}
    assert all(f"gpu=0, gpu_shares=1, gres={share.SLURM_SHARD}," in jobs[jobid][1] for jobid in small), jobs
    assert "gpu=1, gpu_shares=3," in jobs[large][1] and "gres" not in jobs[large][1], jobs
    running, together = set(), []
    for event, jobid in events:
        running = running | {jobid} if event == "start" else running - {jobid}
        assert not (large in running and running & small), events  # the large run never beside a small one
        together.append(len(running & small))
    assert max(together) == 3, events
    logs = workdir / "results" / "sharing" / "logs" / "train"
    for study, model, seeds, holds in (("small", "fcnn", 3, "sharing it with up to 2 other job(s)"),
                                       ("large", "cnn", 1, "alone")):
        for seed in range(seeds):
            log = (logs / study / "mnist" / model / "none" / "base" / f"seed{seed}.log").read_text()
            assert f"GPU slot: using GPU 0 of 0, {holds}" in log, log[:2000]
            assert (workdir / "results" / "sharing" / "runs" / study / "mnist" / model / "none" / "base" /
                    f"seed{seed}" / "metrics.json").is_file()
