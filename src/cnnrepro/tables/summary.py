"""Each run as one flat summary: its identity, settings and status, the numbers of its metrics record and of its
model's benchmarks. The summaries are what paper tables select and compare (``METRIC_FIELDS``) and what runs.csv
lists.

Every file comes in as a path the workflow rule names (workflow/rules/); nothing here derives a path. Each metrics
and benchmark file is identified by what it says it is, and a configured run or benchmark without its file, or a
file the config does not define, is an error rather than an empty cell, except in a partial aggregation
(``partial=True``, after a workflow that ended with failed jobs): there a run without its metrics is ``failed``
when its job left a log and ``not run`` otherwise.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping

from cnnrepro import config as cfg
from cnnrepro.runtime import io

PathLike = str | Path


# What identifies a run (cnnrepro.config.Run), first in every summary.
RUN_FIELDS = tuple(field.name for field in dataclasses.fields(cfg.Run))
BENCH_KINDS = ("cpu", "gpu")
# A run's status: its record says ok or diverged; without a record its job failed (it left a log) or never ran.
STATUSES = ("ok", "diverged", "failed", "not run")
# Summary fields measured by the model's benchmark on the CPU (size and FLOPs too) and on the GPU.
CPU_BENCH_FIELDS = ("size_MiB", "size_MB_1024000", "size_MB_paper_unit", "state_dict_MiB", "flops_forward",
                    "cpu_time_ms_mean", "cpu_time_ms_std", "cpu_latency_median_ms")
GPU_BENCH_FIELDS = ("gpu_time_ms_mean", "gpu_time_ms_std", "gpu_latency_median_ms")
# Every number summarize writes: what a paper table's ``metrics`` may name (the run's identity, settings and
# device names are in the summary too, but they select runs or label them; they are not compared).
METRIC_FIELDS = (
    "test_top1_pct", "test_acc", "test_top5_pct", "test_loss", "macro_f1", "eval_loss", "eval_acc",
    "train_loss_first", "train_loss_last", "train_acc_last", "train_acc_last_pct", "train_seconds", "epochs_run",
    "selected_epoch", "params_count", "params_trainable", "peak_memory_bytes",
    # from the model's benchmarks (studies with benchmark: true)
    "size_MiB", "size_MB_1024000", "size_MB_paper_unit", "state_dict_MiB", "flops_forward", "cpu_time_ms_mean",
    "cpu_time_ms_std", "cpu_latency_median_ms", "gpu_time_ms_mean", "gpu_time_ms_std", "gpu_latency_median_ms",
)
# Summary fields that are maps: <field>.<key>, with what the key may be.
METRIC_MAPS = {"test_f1_by_class": "a class index 0 .. classes-1, or 'macro avg'"}


def metric_field_problem(dotted: str, num_classes: int | None = None) -> str | None:
    """Why ``dotted`` is not a number :func:`summarize` writes (None when it is one). ``num_classes`` bounds
    the class index of ``test_f1_by_class.<class>``."""
    base, _, key = dotted.partition(".")
    accepted = ", ".join([*METRIC_FIELDS, *(f"{name}.<key> ({what})" for name, what in METRIC_MAPS.items())])
    if not key and dotted in METRIC_FIELDS:
        return None
    if key and base == "test_f1_by_class":
        if key == "macro avg" or (key.isdigit() and (num_classes is None or int(key) < num_classes)):
            return None
        bound = f"0 .. {num_classes - 1}" if num_classes else "a class index"
        return f"'{key}' is not a class of test_f1_by_class: expected {bound} or 'macro avg'"
    return f"'{dotted}' is not a field any run's summary holds; accepted: {accepted}"


def summarize(record: dict, bench_cpu: dict | None = None, bench_gpu: dict | None = None) -> dict:
    """One flat dict per run: the fields paper tables and the report read."""
    settings = record["settings"]
    out: dict[str, Any] = {k: settings[k] for k in RUN_FIELDS}
    out.update(status=record.get("status"), augment=settings.get("augment"), recipe=settings.get("recipe", {}),
               grid=settings.get("grid", {}),
               input=settings.get("input", {}), epochs_run=record.get("epochs_run"),
               train_seconds=record.get("train_seconds"), device_name=record.get("device_name"),
               # The speed switches in effect that compute differently from the papers' fp32 training;
               # records from before they were recorded (or without them) count as faithful.
               deviations=list((record.get("speed") or {}).get("deviations") or []),
               # Provenance of the run, for the report's run list.
               run_id=record.get("run_id") or settings.get("run_id"), device=record.get("device"),
               precision=((record.get("speed") or {}).get("numerics") or {}).get("precision"),
               # The ops torch ran without a deterministic implementation; None: not recorded (older records).
               nondeterministic_ops=((record.get("speed") or {}).get("numerics") or {}).get("nondeterministic_ops"),
               torch_version=record.get("torch_version"), python_version=record.get("python_version"),
               threads=record.get("threads"), host=record.get("host"))
    if settings.get("assumption"):  # a sweep's run: which assumption's alternative it tries
        out["assumption"] = settings["assumption"]
    if record.get("status") == "ok":
        test = record["test"]
        out.update(
            test_top1_pct=100 * test["top1"], test_acc=test["top1"], test_loss=test["loss"],
            test_top5_pct=100 * test["top5"] if "top5" in test else None,
            macro_f1=test["macro_f1"],
            test_f1_by_class={**{str(i): f for i, f in enumerate(test["f1_per_class"])},
                              "macro avg": test["macro_f1"]},
            eval_loss=record["eval"]["loss"], eval_acc=record["eval"]["acc"],
            train_loss_first=record["train_loss_first"], train_loss_last=record["train_loss_last"],
            train_acc_last=record["train_acc_last"], train_acc_last_pct=100 * record["train_acc_last"],
            params_count=record["params_total"], params_trainable=record["params_trainable"],
            selected_epoch=record.get("selected_epoch"), peak_memory_bytes=record.get("peak_memory_bytes"),
        )
    if bench_cpu and bench_cpu.get("measured"):
        size = bench_cpu["size"]
        unit = settings["size_unit"]
        out.update(
            size_MiB=size["checkpoint_MiB"], size_MB_1024000=size["checkpoint_MB_1024000"],
            size_MB_paper_unit=size["checkpoint_MiB"] if unit == "MiB" else size["checkpoint_MB_1024000"],
            state_dict_MiB=size["state_dict_MiB"], flops_forward=bench_cpu["flops"]["flops_forward"],
            cpu_time_ms_mean=bench_cpu["latency_paper"]["mean_ms"],
            cpu_time_ms_std=bench_cpu["latency_paper"]["std_ms"],
            cpu_latency_median_ms=bench_cpu["latency_correct"]["median_ms"],
            cpu_device=bench_cpu["device"]["device_name"],
        )
    if bench_gpu:
        if bench_gpu.get("measured"):
            out.update(gpu_time_ms_mean=bench_gpu["latency_paper"]["mean_ms"],
                       gpu_time_ms_std=bench_gpu["latency_paper"]["std_ms"],
                       gpu_latency_median_ms=bench_gpu["latency_correct"]["median_ms"],
                       gpu_device=bench_gpu["device"]["device_name"])
        else:
            out["gpu_not_measured"] = bench_gpu.get("reason")
    return out


def benchmarks(config: dict) -> list[tuple[str, ...]]:
    """(study, dataset, model, freeze, kind) of every configured benchmark: one per model of each study
    with ``benchmark`` on, on the CPU and on the GPU (as the benchmark rules produce them)."""
    return [(*key, kind) for key in cfg.benchmarked_runs(config) for kind in BENCH_KINDS]


def metrics_identity(record: dict) -> str:
    return record["run_id"]


def bench_identity(record: dict) -> tuple[str, ...]:
    # The benchmark job adds its key to what cnnrepro.bench.measure writes, which records the device kind.
    return (*cfg.BenchKey.of(record), record["device_kind"])


def _describe(key: Hashable) -> str:
    if isinstance(key, tuple):  # a benchmark
        return f"benchmark {'/'.join(key[:-1])} ({key[-1]})"
    return f"run {key}"


def _by_identity(paths: Iterable[PathLike], identify: Callable[[dict], Hashable], what: str) -> dict:
    """identity -> (path, record) for each file, by what the file says it is; two alike is an error."""
    found: dict = {}
    for path in paths:
        record = io.read_json(path)
        key = identify(record)
        if key in found:
            raise ValueError(f"{path} and {found[key][0]} are both the {what} of {_describe(key)}; "
                             "expected one file each")
        found[key] = (Path(path), record)
    return found


def _check_complete(found: dict, expected: Iterable[Hashable], what: str, of: str) -> None:
    """The inputs hold exactly what the config defines: none missing (the rule's inputs guarantee
    presence, so a gap is a wiring error, not a run still to come) and none extra."""
    expected = list(expected)
    known = set(expected)
    for key, (path, _) in found.items():
        if key not in known:
            raise ValueError(f"{path} holds the {what} of {_describe(key)}, which the config does not define; "
                             f"expected only the {what} of configured {of}s")
    missing = [key for key in expected if key not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"no {what} file among the inputs for {_describe(missing[0])}{more}; expected one "
                         f"{what} file per configured {of}")


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def missing_status(log_path: PathLike | None) -> str:
    """What a configured run without a metrics record is: ``failed`` when its job ran (it left a non-empty log;
    Snakemake removes the outputs of a failed job) and ``not run`` otherwise."""
    if log_path is not None and Path(log_path).is_file() and Path(log_path).stat().st_size > 0:
        return "failed"
    return "not run"


def load_summaries(config: dict, metrics: Iterable[PathLike], bench: Iterable[PathLike],
                   studies: Iterable[str] | None = None, logs: Mapping[str, PathLike] | None = None,
                   partial: bool = False) -> list[dict]:
    """One summary per configured run of ``studies`` (all when None), in config order, from exactly the given
    files. ``logs`` maps run ids to their training logs (linked from the report). ``partial``: a run without its
    metrics file gets a summary without numbers whose status says why (:func:`missing_status`), a benchmark
    without its record leaves its fields empty with the reason ``benchmark not run``."""
    studies = list(config["studies"]) if studies is None else list(studies)
    runs = cfg.expand_runs(config, studies)
    logs = dict(logs or {})
    records = _by_identity(metrics, metrics_identity, "metrics")
    benches = _by_identity(bench, bench_identity, "benchmark")
    expected_bench = [key for key in benchmarks(config) if key[0] in studies]
    if partial:  # files of runs the config does not define are still an error; missing ones are not
        known = {run.id for run in runs}
        _check_complete(records, [k for k in records if k in known], "metrics", "run")
        _check_complete(benches, [k for k in expected_bench if k in benches], "benchmark", "benchmark")
    else:
        _check_complete(records, (run.id for run in runs), "metrics", "run")
        _check_complete(benches, expected_bench, "benchmark", "benchmark")
    benchmarked = cfg.benchmarked_runs(config)
    summaries = []
    for run in runs:
        key = run.bench_key
        # A benchmark measures the weights of one run (the first variant and seed): its numbers are that run's,
        # not repeated over seeds they were not measured on.
        measured_here = key in benchmarked and benchmarked[key].id == run.id
        cpu, gpu = (benches[(*key, kind)][1] if measured_here and (*key, kind) in benches else None
                    for kind in BENCH_KINDS)
        if run.id in records:
            path, record = records[run.id]
            summary = summarize(record, cpu, gpu)
            finished = path.stat().st_mtime
            summary["finished_at"] = _when(finished)
            if record.get("train_seconds") is not None:
                summary["started_at"] = _when(finished - float(record["train_seconds"]))
        else:
            summary = summarize({"status": missing_status(logs.get(run.id)), "run_id": run.id,
                                 "settings": cfg.run_settings(config, run)}, cpu, gpu)
        for kind, record in (("cpu", cpu), ("gpu", gpu)):
            if record is None and measured_here and f"{kind}_not_measured" not in summary:
                summary[f"{kind}_not_measured"] = "benchmark not run"
        summary["log"] = str(logs[run.id]) if run.id in logs else None
        summaries.append(summary)
    return summaries
