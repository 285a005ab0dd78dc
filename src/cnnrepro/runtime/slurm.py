"""SLURM: refuse, before anything is submitted, a job that no node of its partition could ever run.

SLURM accepts such a job and leaves it pending forever (reason ``PartitionConfig``, or
``PartitionTimeLimit`` for a wall time over the partition's limit), and Snakemake prints nothing about it.
The workflow calls :func:`check_workflow` when it starts with the slurm executor: it compares each submission
Snakemake is about to make (a job, or a group of jobs) with the nodes ``sinfo`` lists for its partition and
stops with one message per rule, naming the request and the largest node.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

SINFO_FORMAT = "%N|%P|%c|%m|%G|%l"  # node, partition (default marked *), CPUs, memory MB, gres, time limit


class UnsatisfiableRequest(Exception):
    """A job asks for more than any node of its partition has (or for a partition that does not exist)."""


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    memory_mb: int
    gpus: dict = field(default_factory=dict)  # GPU type ("" when untyped) -> count
    time_limit_min: float | None = None  # None: no limit
    shards: int = 0  # gres/shard: shares of its GPUs that jobs sharing a GPU ask for (GresTypes=gpu,shard)

    def gpu_count(self, model: str | None = None) -> int:
        if model:
            return self.gpus.get(model, 0)
        return sum(self.gpus.values())

    def describe(self) -> str:
        gpus = ", ".join(f"{count} {model + ' ' if model else ''}GPU" for model, count in sorted(self.gpus.items()))
        shards = f", {self.shards} GPU shards" if self.shards else ""
        return f"{self.name}: {self.cpus} CPUs, {self.memory_mb} MB" + (f", {gpus}" if gpus else ", no GPU") + shards


@dataclass(frozen=True)
class Request:
    """What one submission asks SLURM for, as the SLURM executor plugin turns resources into sbatch options."""

    label: str  # the rule, or the group and its rules
    partition: str | None  # None: the cluster's default partition
    cpus: int
    mem_mb: int | None
    gpus: int = 0
    gpu_model: str | None = None
    runtime_min: float | None = None
    shards: int = 0  # GPU shards (--gres=shard:N): a run sharing a GPU (config gpu_share)

    def describe(self) -> str:
        parts = [f"{self.cpus} CPUs"]
        if self.mem_mb:
            parts.append(f"{self.mem_mb} MB")
        if self.gpus:
            parts.append(f"{self.gpus} {self.gpu_model + ' ' if self.gpu_model else ''}GPU")
        if self.shards:
            parts.append(f"{self.shards} GPU shard{'s' if self.shards > 1 else ''}")
        if self.runtime_min:
            parts.append(f"{self.runtime_min:g} min")
        return ", ".join(parts)


def parse_time_limit(text: str) -> float | None:
    """sinfo's %l (``infinite``, ``UNLIMITED``, ``[days-]hours:minutes:seconds``, ``minutes:seconds``) in minutes."""
    text = text.strip()
    if text.lower() in {"infinite", "unlimited", "n/a", ""}:
        return None
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
    fields = [int(f) for f in text.split(":")]
    while len(fields) < 3:
        fields.insert(0, 0)
    hours, minutes, seconds = fields[-3:]
    return days * 1440 + hours * 60 + minutes + seconds / 60


def parse_gres(text: str, name: str = "gpu") -> dict:
    """One kind of gres (``gpu``, ``shard``) in sinfo's %G, e.g. ``gpu:2``, ``gpu:a100:4(S:0-1)``,
    ``gpu:a100:2,gpu:v100:2,shard:8``, ``(null)``: type ("" when untyped) -> count."""
    counts: dict = {}
    for item in re.split(r",(?![^(]*\))", text.strip()):
        item = re.sub(r"\(.*\)$", "", item.strip())
        fields = item.split(":")
        if fields[0] != name:
            continue
        model = fields[1] if len(fields) == 3 else ""
        count = fields[-1] if len(fields) >= 2 else "1"
        count = re.match(r"\d+", count)
        counts[model] = counts.get(model, 0) + (int(count.group()) if count else 1)
    return counts


def parse_sinfo(text: str) -> tuple[dict, str | None]:
    """``sinfo -h -N -o SINFO_FORMAT`` output -> ({partition: [Node, ...]}, default partition)."""
    partitions: dict = {}
    default = None
    for line in text.splitlines():
        if not line.strip():
            continue
        name, partition, cpus, memory, gres, limit = (f.strip() for f in line.split("|"))
        if partition.endswith("*"):
            partition = partition[:-1]
            default = partition
        node = Node(name, int(cpus), int(re.match(r"\d+", memory).group()), parse_gres(gres),
                    parse_time_limit(limit), sum(parse_gres(gres, "shard").values()))
        partitions.setdefault(partition, []).append(node)
    return partitions, default


def query_sinfo(env: dict | None = None) -> tuple[dict, str | None]:
    if shutil.which("sinfo") is None:
        raise UnsatisfiableRequest("the slurm executor needs SLURM's `sinfo` on this machine's PATH; it is not there "
                                   "(run Snakemake on the cluster's login node)")
    result = subprocess.run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=60,
                            env=env)
    if result.returncode != 0:
        raise UnsatisfiableRequest(f"`sinfo` failed, so the cluster's nodes are unknown: {result.stderr.strip()}")
    return parse_sinfo(result.stdout)


def fits(request: Request, node: Node) -> bool:
    return (request.cpus <= node.cpus
            and (request.mem_mb or 0) <= node.memory_mb
            and request.gpus <= node.gpu_count(request.gpu_model)
            and request.shards <= node.shards
            and (request.runtime_min is None or node.time_limit_min is None
                 or request.runtime_min <= node.time_limit_min))


def problems(requests: list, partitions: dict, default: str | None) -> list:
    """One message per rule (or group) whose requests no node of its partition can satisfy (the largest such)."""
    failing: dict = {}
    for request in requests:
        partition = request.partition or default
        nodes = partitions.get(partition, [])
        if nodes and any(fits(request, node) for node in nodes):
            continue
        worst = failing.get(request.label)
        if worst is None or _size(request) > _size(worst):
            failing[request.label] = request
    return [_message(request, request.partition or default, partitions) for request in failing.values()]


def _size(request: Request) -> tuple:
    return request.gpus, request.shards, request.cpus, request.mem_mb or 0, request.runtime_min or 0


def _message(request: Request, partition: str | None, partitions: dict) -> str:
    if partition is None:
        return (f"{request.label}: no slurm_partition is set and the cluster has no default partition; set "
                "slurm_partition in profiles/slurm/profile.yaml")
    nodes = partitions.get(partition)
    if not nodes:
        return (f"{request.label} asks for partition '{partition}', which this cluster does not have (sinfo lists: "
                f"{', '.join(sorted(partitions)) or 'none'}); set slurm_partition in profiles/slurm/profile.yaml")
    largest = max(nodes, key=lambda n: (n.gpu_count(request.gpu_model), n.shards, n.cpus, n.memory_mb))
    limit = largest.time_limit_min
    sharing = ""
    if request.shards and not any(node.shards for node in nodes):
        sharing = (" No node there offers GPU shards (gres/shard), which a run sharing a GPU asks for (config "
                   "gpu_share): set up shards (profiles/README.md) or run with gpu_share: 1.")
    return (f"{request.label} asks partition '{partition}' for {request.describe()}, but no node there has that "
            f"much; the largest is {largest.describe()}" + (f", time limit {limit:g} min" if limit is not None else "")
            + ". SLURM would keep it pending forever: lower the request (set-threads / set-resources in "
            "profiles/slurm/profile.yaml) or send the rule to another partition." + sharing)


# Reading Snakemake's jobs: the plugin's rules (snakemake-executor-plugin-slurm 2.x, submit_string.py and
# utils.set_gres_string): cpus_per_task if set, else threads; mem_mb_per_cpu times CPUs, else mem_mb;
# gpu (+ gpu_model) or a gres "gpu[:model]:N"; a gres "shard:N"; runtime in minutes.

def _gres(gres: str | None, name: str) -> tuple[int, str | None]:
    """(count, type) of a gres request of kind ``name`` (``gpu``, ``shard``); (0, None) for another kind."""
    if not gres or str(gres).split(":")[0] != name:
        return 0, None
    fields = str(gres).split(":")
    count = int(re.match(r"\d+", fields[-1]).group()) if len(fields) > 1 and fields[-1][:1].isdigit() else 1
    return count, fields[1] if len(fields) == 3 else None


def request_of(label: str, resources, threads: int) -> Request:
    """A Request from a Snakemake job's (or group job's) resources and threads."""
    get = resources.get
    gpus, model = _gres(get("gres"), "gpu")
    shards = _gres(get("gres"), "shard")[0]
    if get("gpu_model"):
        gpus, model = int(get("gpu", 1)), get("gpu_model")
    elif get("gpu"):
        gpus, model = int(get("gpu")), None
    if get("cpus_per_task"):
        cpus = max(1, int(get("cpus_per_task")))  # negative: no CPU option, SLURM's default of 1
    elif gpus and get("cpus_per_gpu"):
        cpus = max(1, int(get("cpus_per_gpu")) * gpus)
    else:
        cpus = max(1, int(threads or 1))
    mem = get("mem_mb")
    if isinstance(get("mem_mb_per_cpu"), (int, float)) and get("mem_mb_per_cpu"):
        mem = get("mem_mb_per_cpu") * cpus
    runtime = get("runtime")
    return Request(label, get("slurm_partition") or None, cpus,
                   int(mem) if isinstance(mem, (int, float)) and mem else None, gpus, model,
                   float(runtime) if isinstance(runtime, (int, float)) and runtime else None, shards)


def submissions(workflow) -> list:
    """The Requests of every job (or group of jobs) the run will submit, from the DAG Snakemake has built."""
    dag = workflow.dag
    seen = set()
    requests = []
    for job in dag.needrun_jobs():
        if job.is_local or job.is_norun:  # local rules run here; a rule without action (all) runs nowhere
            continue
        group = dag.get_job_group(job)
        if group is not None:
            if id(group) in seen:
                continue
            seen.add(id(group))
            rules = sorted({j.rule.name for j in group.jobs})
            label = f"group '{group.groupid}' ({', '.join(rules)})"
            requests.append(request_of(label, group.resources, group.threads))
        else:
            requests.append(request_of(f"rule {job.rule.name}", job.resources, job.threads))
    return requests


def uses_slurm(workflow) -> bool:
    plugin = getattr(workflow, "executor_plugin", None)
    return plugin is not None and getattr(plugin, "name", None) == "slurm"


def check_workflow(workflow) -> None:
    """Raise UnsatisfiableRequest naming every rule whose request fits no node of its partition."""
    partitions, default = query_sinfo()
    found = problems(submissions(workflow), partitions, default)
    if found:
        raise UnsatisfiableRequest("Nothing was submitted. These requests fit no node of their SLURM partition:\n  "
                                   + "\n  ".join(found))
