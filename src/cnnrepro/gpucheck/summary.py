"""The one-page summary of a gpu-check record (Markdown): the verdict, each step in a line, the step times in a
table, what was skipped and why, and the command that plans with the measurement."""

from __future__ import annotations

from collections import defaultdict

from cnnrepro.plan.calibration import FILE_NAME

SETTING_ORDER = ("faithful", "channels_last", "amp_bf16", "tf32", "cudnn_benchmark", "fast", "compile")


def _mib(value) -> str:
    return f"{value / 2**20:,.0f} MiB" if value is not None else "not measured"


def _smoke(d: dict) -> str:
    found = [f"{d['runs_ok']} of {d['runs']} runs trained on {', '.join(d['devices']) or 'nothing'}",
             f"{d['gpu_benchmarks_measured']} of {d['gpu_benchmarks']} GPU benchmarks measured" if d["gpu_benchmarks"]
             else "", f"{d['report_pages']} report pages" if d["report_pages"] else ""]
    text = ", ".join(part for part in found if part) + f" (`{d['command']}`; log {d['log']})"
    if d["timed_out"]:
        text = "ran past its time and was stopped; " + text
    elif d["returncode"]:
        text = f"snakemake exited with {d['returncode']}; " + text
    return text


def _determinism(d: dict) -> str:
    same = "identical" if d["identical"] else "DIFFERENT: " + ", ".join(d["differing"])
    return f"two runs of {d['run_id']}: {same} weights ({d['tensors']} tensors, bit for bit)"


def _resume(d: dict) -> str:
    same = "identical to" if d["identical"] else "DIFFERENT from (" + ", ".join(d["differing"]) + ")"
    said = "" if d["said_resuming"] else "; its log does not say it resumed"
    return (f"Ctrl-C (SIGINT) after epoch {d['checkpoint_epoch_at_interrupt']} of {d['epochs']}, started again: "
            f"weights {same} the uninterrupted run's ({d['tensors']} tensors){said}")


def _bench(d: dict) -> str:
    largest = max(d["images_per_s"], key=int)
    return (f"{d['model']} on the {d['kind']}: {d['latency_correct_median_ms']:.3f} ms per image (synchronised "
            f"median), {d['latency_paper_mean_ms']:.3f} ms by the paper's procedure"
            f"{' (DataParallel)' if d['data_parallel'] else ''}, {d['images_per_s'][largest]:,.0f} images/s at "
            f"batch {largest}" + (f", peak {_mib(d['peak_memory_bytes'])}" if d["kind"] == "gpu" else ""))


def _step_times(d: dict) -> str:
    text = f"{d['measured']} measurements of {d['runs']} runs, {len(d['skipped'])} skipped (listed below)"
    return text + (f"; errors: {'; '.join(d['errors'])}" if d["errors"] else "")


DESCRIBE = {"smoke": _smoke, "determinism": _determinism, "resume": _resume, "bench": _bench,
            "step_times": _step_times}


def _describe(name: str, step: dict) -> str:
    details = step["details"]
    if step["status"] == "skipped":
        return f"not run ({details['reason']})"
    try:
        text = DESCRIBE[name](details)
    except (KeyError, TypeError, ValueError):  # a step that failed before it measured what the line shows
        text = ""
    error = details.get("error")
    return "; ".join(part for part in (f"**{error}**" if error else "", text) if part) or "see gpu-check.json"


def _cell(entry: dict | None, faithful: dict | None) -> str:
    if entry is None:
        return "–"
    if entry["ms_median"] is None:
        return "error"
    text = f"{entry['ms_median']:.2f}"
    if entry is not faithful and faithful and faithful["ms_median"]:
        text += f" ({faithful['ms_median'] / entry['ms_median']:.2f}×)"
    return text


def _flops_per_second(value: float) -> str:
    return f"{value / 1e12:.1f} T" if value >= 1e12 else f"{value / 1e9:.1f} G"


def _times_table(record: dict) -> list[str]:
    by_run: dict[str, dict[str, dict]] = defaultdict(dict)
    for entry in record["step_times"]:
        by_run[entry["run_id"]][entry["setting"]] = entry
    settings = [s for s in SETTING_ORDER if any(s in row for row in by_run.values())]
    lines = ["| study | model | freeze | batch | px | " + " | ".join(settings) + " | peak memory | FLOP/s |",
             "|---" * (7 + len(settings)) + "|"]
    for row in by_run.values():
        first = next(iter(row.values()))
        faithful = row.get("faithful")
        achieved = _flops_per_second(faithful["flops_per_step"] / (faithful["ms_median"] / 1e3)) \
            if faithful and faithful["ms_median"] else ""
        cells = [_cell(row.get(s), faithful) for s in settings]
        lines.append(f"| {first['study']} | {first['model']} | {first['freeze']} | {first['batch_size']} | "
                     f"{first['input_size']} | " + " | ".join(cells) +
                     f" | {_mib(faithful['peak_memory_bytes']) if faithful else ''} | {achieved} |")
    return lines


def _skipped(record: dict) -> list[str]:
    details = record["steps"].get("step_times", {}).get("details", {})
    reasons: dict[str, list[str]] = defaultdict(list)
    for item in details.get("skipped", []):
        model, freeze = item["run_id"].split("/")[2:4]
        reasons[item["reason"].split(":")[0]].append(f"{model} {freeze} [{item['setting']}]")
    lines = [f"- {reason}: {', '.join(items)}" for reason, items in reasons.items()]
    count = len(details.get("not_applicable", []))
    if count:
        lines.append(f"- {count} settings change nothing for their model on this device (e.g. TF32 on a CPU, "
                     "channels_last without convolutions), so they were not timed")
    return lines


def render(record: dict, order: tuple[str, ...] = ()) -> str:
    """The summary of ``record``, its steps in ``order`` (the file's own order for any other)."""
    device = record["device"]
    verdict = ("in progress" if record["passed"] is None else
               "FAILED: " + ", ".join(record["failed_steps"]) if record["failed_steps"] else "PASSED")
    facts = [f"torch {record['torch_version']}", f"CUDA {record['cuda_version']}" if device["kind"] == "cuda" else "",
             f"compute capability {device['capability']}" if device["capability"] else "",
             _mib(device["memory_bytes"]) if device["memory_bytes"] else "", f"profile {record['profile']}",
             f"{record['seconds']:.0f} s of the {record['budget_seconds']:.0f} s budget"]
    lines = [f"# gpu-check on {device['name']}: {verdict}", "",
             "; ".join(fact for fact in facts if fact) + f". Written {record['created']} by `{record['command']}`.",
             "", "| step | status | seconds | what it showed |", "|---|---|---|---|"]
    names = sorted(record["steps"], key=lambda name: order.index(name) if name in order else len(order))
    lines += [f"| {name} | {record['steps'][name]['status']} | {record['steps'][name]['seconds']:.0f} | "
              f"{_describe(name, record['steps'][name])} |" for name in names]
    if record["step_times"]:
        lines += ["", "## Milliseconds per training step", "",
                  "Median per optimizer step after warm-up (synchronised), at each study's batch size and input size; "
                  "a switch's speed-up over faithful in brackets; `–`: not timed. Peak memory and FLOP/s (the plan's "
                  f"FLOP count per step over the time) are the faithful step's. Spread: ms_iqr, ms_min, ms_max in "
                  f"{FILE_NAME}.", "", *_times_table(record)]
    skipped = _skipped(record)
    if skipped:
        lines += ["", "## Not timed", "", *skipped]
    plan_device = device["plan_device"]
    lines += ["", "## Next", "",
              f"`cnnrepro plan --device {plan_device} --calibration {FILE_NAME}` (with this file's path) plans with "
              "these times instead of the assumed rate." if plan_device else
              f"`cnnrepro plan` knows no device called {device['name']!r} (cnnrepro.plan.rates.DEVICES): add it "
              "there to plan with these times."]
    return "\n".join(lines) + "\n"
