"""profiles/slurm against a real SLURM: a single node started for the test (tests/slurm/cluster.py: munge,
slurmctld, slurmd from Debian's packages, 2 CPUs and a fake GPU), and the real `snakemake --workflow-profile`.

The run is the smoke preset with `device: auto` (training and GPU benchmarks ask SLURM for a GPU and fall back to
the CPU inside the job) on a subset of the studies that has every kind of job (a data preparation, training, GPU
and CPU benchmarks, the aggregate/report tail), through a profile derived from profiles/slurm
(tests/slurm/profile_overrides.yaml: one thread per job, as the local smoke run). Its results are compared with the
session's local smoke run (the `smoke` fixture test_e2e checks). Skips without root, SLURM or munge.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from cnnrepro.runtime import slurm
from tests.slurm import cluster as slurm_cluster
from tests.test_e2e import REPO, copy_workflow

try:
    import snakemake_executor_plugin_slurm  # noqa: F401

    PLUGIN_MISSING = None
except ImportError:
    PLUGIN_MISSING = "the SLURM executor plugin is not installed (pip install -e \".[test]\")"

SKIP_REASON = slurm_cluster.unavailable_reason() or PLUGIN_MISSING


def on_a_real_slurm(test):
    """The real SLURM and the real snakemake: slow, and skipped (saying why) without root, SLURM or munge."""
    test = pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))(test)
    return pytest.mark.e2e(test)


# One study of config.yaml with benchmarks (two models on CIFAR-10), alone: its jobs are every kind of job.
STUDIES = ("seed001_resnet_mobilenet_cifar10",)
PRESET = "presets/smoke.yaml"
GPU_RULES = {"train", "benchmark_gpu"}
RUN_RULES = {"prepare_dataset", "train", "benchmark_gpu", "benchmark_cpu"}  # the rest is the tail (tables, report)
LOCAL_RULES = {"download_dataset", "fetch_weights", "all"}
RUN_TIMEOUT = 1200  # seconds; the run takes 7 minutes on 2 cores loaded 4-5 times over, 2-3 estimated idle
TIMING = re.compile(r"seconds|time|latency|throughput|peak_memory|elapsed|_at$")
PATHS = re.compile(r"(^|_)log$")  # a job log's path: in another directory for each run


# --------------------------------------------------------------------------------------------- helpers
def deep_merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = deep_merge(base[key], value) if both else value
    return merged


def derived_profile(node: slurm_cluster.Cluster) -> dict:
    """profiles/slurm with the test's overrides; at most the node's CPUs per submission."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "profile.yaml").read_text())
    overrides = yaml.safe_load((REPO / "tests" / "slurm" / "profile_overrides.yaml").read_text())
    merged = deep_merge(profile, overrides)
    merged["cores"] = min(merged["cores"], node.cpus)
    return merged




def subset_workflow(dest: Path) -> Path:
    """A copy of the workflow whose config.yaml and smoke preset keep only STUDIES."""
    workdir = copy_workflow(dest)
    for config_file in (workdir / "config.yaml", workdir / PRESET):
        config = yaml.safe_load(config_file.read_text())
        config["studies"] = {name: study for name, study in config["studies"].items() if name in STUDIES}
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return workdir


def snakemake(workdir: Path, node: slurm_cluster.Cluster, *args: str, timeout: float = RUN_TIMEOUT):
    env = {**node.env, "PYTHONPATH": str(workdir / "src")}
    try:
        return subprocess.run(["snakemake", *args], cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        out = (expired.stdout or b"").decode(errors="replace") + (expired.stderr or b"").decode(errors="replace")
        pytest.fail(f"snakemake did not finish within {timeout} s\n{out[-6000:]}\n{node.diagnostics()}")


@contextlib.contextmanager
def explained(node: slurm_cluster.Cluster):
    """On failure, print the daemons' logs and squeue/scontrol (pytest shows them with the failure)."""
    try:
        yield
    except BaseException:
        print(node.diagnostics())
        raise


def slurm_jobs(node: slurm_cluster.Cluster) -> dict:
    """Every job slurmctld remembers (MinJobAge is an hour): job id -> scontrol's fields."""
    result = subprocess.run(["scontrol", "-o", "show", "job"], env=node.env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 or "No jobs" in result.stderr + result.stdout, result.stderr
    jobs = {}
    for line in result.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


def executed_jobs(log: str) -> list:
    """(rule, outputs) of every job block Snakemake printed in ``log`` ("rule x:" ... "output: a, b")."""
    jobs, rule = [], None
    for line in log.splitlines():
        header = re.match(r"\s*(localrule|rule|checkpoint) (\w+):\s*$", line)
        if header:
            rule = None if header.group(1) == "localrule" else header.group(2)
            continue
        output = re.match(r"\s*output: (.*)$", line)
        if output and rule:
            jobs.append((rule, tuple(sorted(output.group(1).split(", ")))))
            rule = None
    return jobs


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """A table without timings (they differ between any two runs), log paths and all-empty columns."""
    frame = frame.drop(columns=[c for c in frame.columns if TIMING.search(c) or PATHS.search(c)])
    return frame.dropna(axis=1, how="all")


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def node():
    root = Path(tempfile.mkdtemp(prefix="cnnrepro-slurm-", dir="/tmp"))  # munged needs a path all can search
    cluster = slurm_cluster.Cluster(root, cpus=min(2, os.cpu_count() or 1))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
    assert not root.exists() and not cluster.stray_processes()


@pytest.fixture(scope="module")
def slurm_run(node, tmp_path_factory):
    """The smoke preset (device auto) on STUDIES through the derived profile: (workdir, snakemake's output,
    SLURM's jobs of this run, the rule jobs each SLURM job ran)."""
    workdir = subset_workflow(tmp_path_factory.mktemp("slurm_smoke"))
    profile_dir = workdir / "slurm-test-profile"
    profile_dir.mkdir()
    (profile_dir / "profile.yaml").write_text(yaml.safe_dump(derived_profile(node), sort_keys=False))
    before = set(slurm_jobs(node))
    # Up to the full report's page: every kind of job (the study's own page and the PDFs add only more of the tail).
    result = snakemake(workdir, node, "results/smoke/report/index.html", "--workflow-profile", str(profile_dir),
                       "--configfile", PRESET, "--config", "device=auto")
    output = result.stdout + result.stderr
    jobs = {i: job for i, job in slurm_jobs(node).items() if i not in before}
    ran = {}
    for job_id, job in jobs.items():
        log = Path(job.get("StdOut", ""))
        ran[job_id] = executed_jobs(log.read_text(errors="replace")) if log.is_file() else []
    if result.returncode != 0:
        failed = "\n".join(Path(job["StdOut"]).read_text(errors="replace")[-3000:]
                           for job in jobs.values() if job.get("JobState") != "COMPLETED"
                           and Path(job.get("StdOut", "")).is_file())
        pytest.fail(f"snakemake failed ({result.returncode})\n{output[-6000:]}\n--- failed jobs' logs\n{failed}\n"
                    + node.diagnostics())
    return workdir, output, jobs, ran


# ------------------------------------------------------------ the pre-check's parsing and messages (fast)
SINFO = """\
gpu01|gpu|32|256000|gpu:a100:4(S:0-1)|2-00:00:00
gpu02|gpu|16|128000|gpu:v100:2,gpu:t4:1|2-00:00:00
cpu01|cpu*|64|512000|(null)|infinite
cpu02|cpu*|8|32000|(null)|infinite
short01|short|4|8000|gpu:2|30:00
"""


def test_sinfo_nodes_with_their_cpus_memory_gpus_and_time_limit():
    partitions, default = slurm.parse_sinfo(SINFO)
    assert default == "cpu" and sorted(partitions) == ["cpu", "gpu", "short"]
    gpu01, gpu02 = partitions["gpu"]
    assert (gpu01.cpus, gpu01.memory_mb, gpu01.gpus, gpu01.time_limit_min) == (32, 256000, {"a100": 4}, 2880)
    assert gpu02.gpus == {"v100": 2, "t4": 1} and gpu02.gpu_count() == 3 and gpu02.gpu_count("t4") == 1
    assert partitions["cpu"][0].gpus == {} and partitions["cpu"][0].time_limit_min is None
    assert partitions["short"][0].gpus == {"": 2} and partitions["short"][0].time_limit_min == 30
    assert slurm.parse_time_limit("1-02:03:00") == 1440 + 120 + 3 and slurm.parse_time_limit("UNLIMITED") is None


def test_requests_read_as_the_plugin_submits_them():
    request = slurm.request_of("rule train", {"cpus_per_task": 8, "mem_mb": 4000, "gpu": 1}, threads=2)
    assert (request.cpus, request.mem_mb, request.gpus, request.gpu_model) == (8, 4000, 1, None)  # cpus_per_task wins
    request = slurm.request_of("rule x", {"mem_mb_per_cpu": 1000, "gpu": 2, "gpu_model": "a100"}, threads=4)
    assert (request.cpus, request.mem_mb, request.gpus, request.gpu_model) == (4, 4000, 2, "a100")
    request = slurm.request_of("rule x", {"gres": "gpu:v100:2", "cpus_per_gpu": 3, "runtime": 90}, threads=1)
    assert (request.cpus, request.gpus, request.gpu_model, request.runtime_min) == (6, 2, "v100", 90)
    assert slurm.request_of("rule x", {"gpu": 0, "slurm_partition": "cpu"}, threads=1).gpus == 0


def test_a_request_no_node_can_satisfy_names_the_rule_the_request_and_the_largest_node():
    partitions, default = slurm.parse_sinfo(SINFO)
    fitting = [slurm.request_of("rule train", {"slurm_partition": "gpu", "gpu": 1, "gpu_model": "a100"}, 16),
               slurm.request_of("rule prepare_dataset", {"mem_mb": 400000}, 32)]  # default partition: cpu
    assert slurm.problems(fitting, partitions, default) == []
    too_big = [slurm.request_of("rule train", {"slurm_partition": "gpu", "gpu": 1, "mem_mb": 8000}, 16),
               slurm.request_of("rule train", {"slurm_partition": "gpu", "gpu": 1, "mem_mb": 8000}, 48)]
    [message] = slurm.problems(too_big, partitions, default)
    assert message.startswith("rule train asks partition 'gpu' for 48 CPUs, 8000 MB, 1 GPU")
    assert "the largest is gpu01: 32 CPUs, 256000 MB, 4 a100 GPU" in message and "pending forever" in message
    [message] = slurm.problems([slurm.request_of("rule benchmark_gpu", {"slurm_partition": "gpu", "gpu": 1,
                                                                       "gpu_model": "h100"}, 1)], partitions, default)
    assert "1 h100 GPU" in message
    [message] = slurm.problems([slurm.request_of("rule x", {"slurm_partition": "short", "runtime": 60}, 1)],
                               partitions, default)
    assert "60 min" in message and "time limit 30 min" in message
    [message] = slurm.problems([slurm.request_of("rule x", {"slurm_partition": "gpus"}, 1)], partitions, default)
    assert "partition 'gpus', which this cluster does not have (sinfo lists: cpu, gpu, short)" in message


def test_a_run_sharing_a_gpu_asks_for_a_shard_which_only_nodes_with_shards_satisfy():
    from cnnrepro.plan import share

    partitions, default = slurm.parse_sinfo("g1|gpu|16|64000|gpu:a100:2(S:0-1),shard:8(S:0-1)|infinite\n"
                                            "g2|gpu|16|64000|gpu:2|infinite\n"
                                            "g3|plain|16|64000|gpu:2|infinite\n")
    assert [node.shards for node in partitions["gpu"]] == [8, 0] and partitions["gpu"][0].gpus == {"a100": 2}
    # What workflow/rules/engine.smk asks for a sharing run: no GPU of its own, one shard.
    sharing = {"slurm_partition": "gpu", "gpu": 0, "gres": share.SLURM_SHARD, "cpus_per_task": 4}
    request = slurm.request_of("rule train", sharing, threads=1)
    assert (request.gpus, request.shards, request.cpus) == (0, 1, 4)
    assert slurm.problems([request], partitions, default) == []
    [message] = slurm.problems([slurm.request_of("rule train", {**sharing, "slurm_partition": "plain"}, 1)],
                               partitions, default)
    assert message.startswith("rule train asks partition 'plain' for 4 CPUs, 1 GPU shard")
    assert "No node there offers GPU shards" in message and "gpu_share: 1" in message


def test_the_slurm_plugin_submits_a_sharing_run_with_a_shard_and_no_gpu():
    from cnnrepro.plan import share

    utils = pytest.importorskip("snakemake_executor_plugin_slurm.utils", reason=str(PLUGIN_MISSING))

    def submitted(resources: dict) -> list:
        return utils.set_gres_string(SimpleNamespace(resources=SimpleNamespace(**resources, get=resources.get))).split()

    # What workflow/rules/engine.smk asks for a sharing run and a run alone (--gres is not allowed in slurm_extra).
    assert submitted({"gpu": 0, "gres": share.SLURM_SHARD}) == ["--gres=shard:1"]
    assert submitted({"gpu": 1}) == ["--gpus=1"]


# ---------------------------------------------------------------------------- the real SLURM (slow, root)
@on_a_real_slurm
def test_requests_no_node_can_satisfy_are_refused_before_anything_is_submitted(node, tmp_path):
    """The profile as shipped asks 4 cores for training; this node has 2: SLURM would leave those jobs pending
    forever (PartitionConfig) and say nothing, so the workflow stops first, naming rule, request and node."""
    with explained(node):
        workdir = subset_workflow(tmp_path)
        before = set(slurm_jobs(node))
        result = snakemake(workdir, node, "--workflow-profile", "profiles/slurm", "--configfile", PRESET,
                           "--config", "device=auto", timeout=300)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output[-3000:]
        assert "Nothing was submitted" in output, output[-3000:]
        assert "rule train asks partition 'gpu' for 4 CPUs" in output and "1 GPU" in output, output[-3000:]
        assert f"the largest is localhost: {node.cpus} CPUs" in output, output[-3000:]
        assert set(slurm_jobs(node)) == before  # no job reached SLURM
        assert not (workdir / ".snakemake" / "locks").exists() or not any((workdir / ".snakemake" / "locks").iterdir())


@on_a_real_slurm
def test_every_job_but_the_local_ones_ran_as_a_slurm_job(node, slurm_run):
    _, output, jobs, ran = slurm_run
    with explained(node):
        planned = executed_jobs(output)  # every job the main Snakemake started or submitted
        assert planned and not {rule for rule, _ in planned} & LOCAL_RULES
        assert {rule for rule, _ in planned} >= RUN_RULES | {"aggregate", "report_html"}
        in_slurm = [job for job_id in ran for job in ran[job_id]]
        assert sorted(in_slurm) == sorted(planned)  # each one exactly once, inside a SLURM job
        for job_id, job in jobs.items():
            assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", job
            assert ran[job_id], f"SLURM job {job_id} ran no rule: {job}"
            assert re.search(rf"submitted with SLURM jobid {job_id}\b", output), job_id  # in Snakemake's log


@on_a_real_slurm
def test_gpu_jobs_ask_slurm_for_a_gpu_on_the_gpu_partition_and_cpu_jobs_do_not(node, slurm_run):
    _, _, jobs, ran = slurm_run
    with explained(node):
        kinds = {"gpu": 0, "cpu": 0}
        for job_id, job in jobs.items():
            rules = {rule for rule, _ in ran[job_id]}
            asks_gpu = "gpu" in job.get("TresPerJob", "")
            if rules & GPU_RULES:
                assert rules <= GPU_RULES and len(ran[job_id]) == 1, rules  # one GPU job per SLURM job
                assert asks_gpu and job["TresPerJob"].endswith("gpu:1") and job["Partition"] == "gpu", job
                kinds["gpu"] += 1
            else:
                assert not asks_gpu and job["Partition"] == "cpu", job
                kinds["cpu"] += 1
            assert int(job["NumCPUs"]) <= node.cpus
        assert kinds["gpu"] >= 2 and kinds["cpu"] >= 2, kinds


@on_a_real_slurm
def test_cpu_benchmarks_and_the_aggregate_report_tail_are_grouped(node, slurm_run):
    _, output, jobs, ran = slurm_run
    with explained(node):
        components = derived_profile(node)["group-components"]["cpu_benchmarks"]
        planned = executed_jobs(output)
        benchmarks = sum(rule == "benchmark_cpu" for rule, _ in planned)
        holding = {job_id: [rule for rule, _ in ran[job_id]] for job_id in ran}
        with_benchmarks = [rules for rules in holding.values() if "benchmark_cpu" in rules]
        assert benchmarks >= 2 and len(with_benchmarks) == math.ceil(benchmarks / components)
        assert all(set(rules) == {"benchmark_cpu"} for rules in with_benchmarks)
        tail_jobs = sorted(rule for rule, _ in planned if rule not in RUN_RULES)
        tail = [sorted(rules) for rules in holding.values() if set(rules) - RUN_RULES]
        assert tail == [tail_jobs] and {"aggregate", "report_html"} <= set(tail_jobs)  # one SLURM job, all of it
        # Fewer submissions than jobs: each group is one submission.
        assert len(jobs) == len(planned) - (benchmarks - len(with_benchmarks)) - (len(tail_jobs) - 1)


@on_a_real_slurm
def test_results_equal_a_local_smoke_run(node, slurm_run, smoke):
    """Same training (bit-identical weights, same metrics), same tables, except timings."""
    import torch

    workdir, _, _, _ = slurm_run
    _, _, local = smoke
    results = workdir / "results" / "smoke"
    with explained(node):
        metrics = sorted(results.glob("runs/**/metrics.json"))
        assert {p.relative_to(results).parts[1] for p in metrics} == set(STUDIES)
        for path in metrics:
            run = path.parent.relative_to(results)
            ours, theirs = json.loads(path.read_text()), json.loads((local / run / "metrics.json").read_text())
            for key in ("status", "device", "data_sha256", "epochs_run", "eval", "last_epoch", "params_total",
                        "params_trainable", "selected_epoch"):
                assert ours[key] == theirs[key], (run, key)
            assert ours["device"] == "cpu"  # device auto, no usable GPU in the job: the CPU
            weights = torch.load(path.parent / "weights.pt", map_location="cpu", weights_only=True)
            reference = torch.load(local / run / "weights.pt", map_location="cpu", weights_only=True)
            assert weights.keys() == reference.keys()
            assert all(torch.equal(weights[k], reference[k]) for k in weights), run
            history = comparable(pd.read_csv(path.parent / "history.csv"))
            pd.testing.assert_frame_equal(history, comparable(pd.read_csv(local / run / "history.csv")))
        tables = sorted(str(p.relative_to(results / "tables")) for p in (results / "tables").rglob("*.csv"))
        assert "runs.csv" in tables and "models.csv" in tables and len(tables) >= 3
        for name in tables:
            ours = comparable(pd.read_csv(results / "tables" / name))
            theirs = pd.read_csv(local / "tables" / name)
            if "study" in theirs:  # the local run has every study; compare ours
                theirs = theirs[theirs["study"].isin(ours["study"])].reset_index(drop=True)
            pd.testing.assert_frame_equal(ours, comparable(theirs), check_dtype=False, check_like=True, obj=name)
        assert (results / "report" / "index.html").stat().st_size > 0
