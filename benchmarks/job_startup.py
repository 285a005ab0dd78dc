"""Per-job start-up cost of the workflow, before and after a change, side by side in one invocation.

Not part of the test suite. Each side is a complete copy of the project in a scratch folder: "before" is
``git archive`` of ``--before-rev`` (default HEAD), "after" is this checkout as it is on disk, uncommitted changes
included. Every job imports from its own side's ``src/`` (PYTHONPATH), so the two never mix.

1. **Floor**: what every job process pays before cnnrepro does anything: the interpreter, Snakemake's ``script:``
   preamble (it unpickles the job's inputs, outputs, params and the whole config), ``import torch``,
   ``torch._dynamo`` (imported by every torch optimizer and by ``FlopCounterMode``, so by every training and
   CPU benchmark job), torchvision (every ImageNet model), pandas and matplotlib.
2. **Jobs**: Snakemake itself writes the real job scripts of a few smoke-preset jobs on each side (one snakemake
   call per side with ``--skip-script-cleanup``); each script is then run again and again as Snakemake runs it
   (``python <script>`` in the side's folder), interleaved before/after, alternating which side goes first.
   CPU seconds (user + system, of the job process and its children) are the steadier number on a shared machine;
   wall seconds are reported beside them.
3. **Data loading** inside a job (torch already imported): ``read_compact`` of an MNIST-sized compact file (sha256
   check, then load) and the 20 test images a benchmark job times; CPU, wall and peak-RSS growth per side.
4. ``--smoke``: the whole smoke preset (``snakemake --cores 2 --configfile presets/smoke.yaml``) on each side,
   wall and CPU time, and the two runs' tables compared on every column that is not a time.

    python benchmarks/job_startup.py                              # floor + jobs, 3 repeats (~3 min on 2 cores)
    python benchmarks/job_startup.py --before-rev 8f3e8b1 --smoke # against that commit, plus the whole smoke run
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from compare_results import compare_tables

REPO = Path(__file__).resolve().parents[1]
SIDES = ("before", "after")

# Smoke-preset jobs, by the output that identifies each (relative to the results folder).
JOBS = {
    "prepare_dataset, kmnist (synthetic)": "data/kmnist.pt",
    "train, seed003 cnn (from scratch)":
        "runs/seed003_kmnist_fcnn_cnn/kmnist/cnn/none/augment-none/seed42/metrics.json",
    "train, seed004 squeezenet1_1 head (torchvision)":
        "runs/seed004_squeezenet_transfer_cifar10/cifar10/squeezenet1_1/head/batch_size-250_epochs-50/seed0/metrics.json",
    "benchmark_cpu, seed003 cnn": "bench/seed003_kmnist_fcnn_cnn/kmnist/cnn/none/cpu.json",
    "benchmark_gpu, seed003 cnn (no GPU here)": "bench/seed003_kmnist_fcnn_cnn/kmnist/cnn/none/gpu.json",
}

FLOOR = {
    "python -c pass": "pass",
    "import torch": "import torch",
    "import torch, torch._dynamo": "import torch, torch._dynamo",
    "import torch, torchvision": "import torch, torchvision",
    "import pandas": "import pandas",
    "import matplotlib.pyplot": "import matplotlib.pyplot",
}


def run_measured(cmd: list[str], cwd: Path, env: dict, log: Path | None = None) -> tuple[float, float, int]:
    """(wall s, CPU s of the process tree, exit code) of one command; its output goes to ``log`` (or nowhere)."""
    start = time.perf_counter()
    with open(log, "ab") if log else open(os.devnull, "wb") as sink:
        process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own usage, with its waited-for children's
        process.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime, process.returncode


def side_env(root: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(root / "src")}


def make_sides(work: Path, before_rev: str) -> dict[str, Path]:
    roots = {side: work / side for side in SIDES}
    roots["before"].mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", before_rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(roots["before"])], input=archive, check=True)
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        source = REPO / rel
        if source.is_file():  # a tracked file deleted in the working tree is not copied
            (roots["after"] / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, roots["after"] / rel)
    return roots


def snakemake_cmd(results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "presets/smoke.yaml",
            "--config", f"results={results}", *extra]


def job_of(script: Path) -> tuple[str, list[str]]:
    """(rule name, outputs) of a job script that Snakemake wrote, read from its pickled preamble."""
    text = script.read_text(encoding="utf-8")
    literal = re.search(r"snakemake = pickle\.loads\((b'.*?')\);from snakemake", text, re.DOTALL)
    if not literal:
        raise RuntimeError(f"{script}: no Snakemake preamble found")
    job = pickle.loads(ast.literal_eval(literal.group(1)))
    return job.rule, [str(path) for path in job.output]


def capture_scripts(root: Path, results: Path, log: Path) -> dict[str, Path]:
    """Run the JOBS' targets once with Snakemake on this side and keep the job scripts it wrote, by JOBS label."""
    scripts_dir = root / ".snakemake" / "scripts"
    targets = [str(results / rel) for rel in JOBS.values()]
    wall, _, code = run_measured(snakemake_cmd(results, "--skip-script-cleanup", *targets), root, side_env(root), log)
    if code:
        raise RuntimeError(f"snakemake failed in {root} (exit {code}); see {log}")
    found: dict[str, Path] = {}
    for script in scripts_dir.glob("tmp*.py"):
        _, outputs = job_of(script)
        for label, rel in JOBS.items():
            if str(results / rel) in outputs:
                found[label] = script
    missing = sorted(set(JOBS) - set(found))
    if missing:
        raise RuntimeError(f"{root}: no job script for {missing}; see {log}")
    print(f"  {root.name}: {len(found)} job scripts captured ({wall:.0f} s)", flush=True)
    return found


def preamble_only(script: Path) -> Path:
    """The script with nothing after Snakemake's preamble: what the preamble alone costs."""
    text = script.read_text(encoding="utf-8")
    end = text.index("######## snakemake preamble end #########")
    bare = script.with_name(script.stem + ".preamble_only.py")
    bare.write_text(text[:end], encoding="utf-8")
    return bare


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def time_floor(repeats: int, cwd: Path, preamble: Path) -> dict[str, dict]:
    env = dict(os.environ)
    commands = {**{label: [sys.executable, "-c", code] for label, code in FLOOR.items()},
                "Snakemake's script preamble alone": [sys.executable, str(preamble)]}
    samples: dict[str, dict[str, list[float]]] = {label: {"wall": [], "cpu": []} for label in commands}
    for _ in range(repeats):
        for label, cmd in commands.items():
            wall, cpu, code = run_measured(cmd, cwd, env)
            if code:
                raise RuntimeError(f"{label!r} failed (exit {code})")
            samples[label]["wall"].append(wall)
            samples[label]["cpu"].append(cpu)
    return {label: {"wall": median(s["wall"]), "cpu": median(s["cpu"])} for label, s in samples.items()}


def time_jobs(repeats: int, roots: dict[str, Path], scripts: dict[str, dict[str, Path]], logs: Path) -> dict:
    samples = {label: {side: {"wall": [], "cpu": []} for side in SIDES} for label in JOBS}
    for rep in range(repeats):
        for label in JOBS:
            order = SIDES if rep % 2 == 0 else SIDES[::-1]
            for side in order:
                wall, cpu, code = run_measured([sys.executable, str(scripts[side][label])], roots[side],
                                               side_env(roots[side]), logs / f"{side}.jobs.log")
                if code:
                    raise RuntimeError(f"{side}: job {label!r} failed (exit {code}); see {logs / f'{side}.jobs.log'}")
                samples[label][side]["wall"].append(wall)
                samples[label][side]["cpu"].append(cpu)
        print(f"  repeat {rep + 1}/{repeats} done (load {os.getloadavg()[0]:.1f})", flush=True)
    return {label: {side: {k: median(v) for k, v in s.items()} for side, s in by_side.items()}
            for label, by_side in samples.items()}


# A job's data loading, timed inside the job process (so torch's import is not in it): read the compact file as
# training and benchmarking do (sha256 check, then load) and take the 20 test images a benchmark job times.
DATA_SNIPPET = """
import json, resource, sys, time
import torch
try:
    from cnnrepro.data.compact import read_compact
except ImportError:  # a revision before the package was laid out by stage
    from cnnrepro.datasets import read_compact
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cpu, wall = time.process_time(), time.perf_counter()
data = read_compact(sys.argv[1])
first = data["splits"]["test"]["x"][:20].float().mean().item()
print(json.dumps({"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall,
                  "rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024}))
"""


def make_data(root: Path, path: Path, n_train: int, n_test: int) -> None:
    """A compact MNIST-shaped file of real MNIST's size (synthetic pixels: loading time depends on bytes only)."""
    code = ("import sys\n"
            "try:\n    from cnnrepro.data.sources import make_synthetic\n"
            "    from cnnrepro.data.compact import write_compact\n"
            "except ImportError:  # a revision before the package was laid out by stage\n"
            "    from cnnrepro.datasets import make_synthetic, write_compact\n"
            "write_compact(make_synthetic('mnist', int(sys.argv[2]), int(sys.argv[3]), 0), sys.argv[1], "
            "{'dataset': 'mnist'})")
    subprocess.run([sys.executable, "-c", code, str(path), str(n_train), str(n_test)], cwd=root, env=side_env(root),
                   check=True)


def time_data(repeats: int, roots: dict[str, Path], path: Path) -> dict:
    samples = {side: [] for side in SIDES}
    for rep in range(repeats):
        for side in (SIDES if rep % 2 == 0 else SIDES[::-1]):
            done = subprocess.run([sys.executable, "-c", DATA_SNIPPET, str(path)], cwd=roots[side],
                                  env=side_env(roots[side]), capture_output=True, text=True, check=True)
            samples[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {side: {key: median([s[key] for s in runs]) for key in runs[0]} for side, runs in samples.items()}


def time_smoke(repeats: int, roots: dict[str, Path], work: Path) -> dict:
    samples = {side: {"wall": [], "cpu": []} for side in SIDES}
    results = {}
    for rep in range(repeats):
        for side in (SIDES if rep % 2 == 0 else SIDES[::-1]):
            results[side] = work / f"smoke-{side}-{rep}"
            log = work / f"smoke-{side}-{rep}.log"
            wall, cpu, code = run_measured(snakemake_cmd(results[side]), roots[side], side_env(roots[side]), log)
            if code:
                raise RuntimeError(f"{side}: the smoke run failed (exit {code}); see {log}")
            samples[side]["wall"].append(wall)
            samples[side]["cpu"].append(cpu)
            print(f"  smoke {side} {rep + 1}/{repeats}: {wall:.0f} s wall, {cpu:.0f} CPU s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    out = {side: {k: median(v) for k, v in s.items()} for side, s in samples.items()}
    out["differences"] = compare_tables(results["before"] / "tables", results["after"] / "tables")
    return out


def ratio(before: float, after: float) -> str:
    return f"{before / after:.1f}x" if after > 0 else "-"


def report(args, floor: dict | None, jobs: dict | None, data: dict | None, smoke: dict | None) -> str:
    lines = [f"Per-job start-up, {date.today().isoformat()}, before = {args.before_rev}, after = this checkout; "
             f"{os.cpu_count()} CPUs, medians of {args.repeats}, load average at the end {os.getloadavg()[0]:.1f}"]
    if floor:
        lines += ["", "Floor (what a job process pays before cnnrepro runs):", "",
                  "| what | CPU s | wall s |", "|---|---|---|"]
        lines += [f"| {label} | {v['cpu']:.2f} | {v['wall']:.2f} |" for label, v in floor.items()]
    if jobs:
        lines += ["", "Whole smoke-preset jobs, as Snakemake runs them (python <job script>):", "",
                  "| job | CPU s before | CPU s after | before/after (CPU) | wall s before | wall s after |",
                  "|---|---|---|---|---|---|"]
        for label, by_side in jobs.items():
            b, a = by_side["before"], by_side["after"]
            lines.append(f"| {label} | {b['cpu']:.2f} | {a['cpu']:.2f} | {ratio(b['cpu'], a['cpu'])} "
                         f"| {b['wall']:.2f} | {a['wall']:.2f} |")
    if data:
        b, a = data["before"], data["after"]
        lines += ["", f"Data loading inside a job: read_compact of a {args.data_mib:.0f} MiB compact file "
                  f"({args.data_train:,} + {args.data_test:,} MNIST-sized images) and 20 test images:", "",
                  "| side | CPU s | wall s | peak RSS growth MiB |", "|---|---|---|---|",
                  f"| before | {b['cpu']:.3f} | {b['wall']:.3f} | {b['rss_growth_mib']:.0f} |",
                  f"| after | {a['cpu']:.3f} | {a['wall']:.3f} | {a['rss_growth_mib']:.0f} |"]
    if smoke:
        b, a = smoke["before"], smoke["after"]
        lines += ["", f"Whole smoke preset (snakemake --cores 2 --configfile presets/smoke.yaml), "
                  f"median of {args.smoke_repeats}:", "",
                  "| side | wall s | CPU s |", "|---|---|---|",
                  f"| before | {b['wall']:.0f} | {b['cpu']:.0f} |", f"| after | {a['wall']:.0f} | {a['cpu']:.0f} |",
                  f"| before/after | {ratio(b['wall'], a['wall'])} | {ratio(b['cpu'], a['cpu'])} |", ""]
        if smoke["differences"]:
            lines += ["Tables differ on non-timing columns:"] + [f"  {d}" for d in smoke["differences"][:50]]
        else:
            lines.append("Tables: identical on every non-timing column.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before-rev", default="HEAD", help="the commit to compare against (default HEAD)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each job and floor command per side")
    parser.add_argument("--smoke", action="store_true", help="also time the whole smoke preset on each side")
    parser.add_argument("--smoke-repeats", type=int, default=1)
    parser.add_argument("--smoke-only", action="store_true", help="only the whole smoke preset on each side")
    parser.add_argument("--data-train", type=int, default=60000, help="training images in the data-loading file")
    parser.add_argument("--data-test", type=int, default=10000)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the medians here")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="cnnrepro-job-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"sides in {work}", flush=True)
        roots = make_sides(work, args.before_rev)
        floor = jobs = data = None
        if not args.smoke_only:
            scripts = {side: capture_scripts(roots[side], work / f"jobs-{side}", work / f"{side}.capture.log")
                       for side in SIDES}
            floor = time_floor(args.repeats, roots["after"],
                               preamble_only(scripts["after"]["benchmark_gpu, seed003 cnn (no GPU here)"]))
            jobs = time_jobs(args.repeats, roots, scripts, work)
            data_file = work / "mnist-sized.pt"
            make_data(roots["after"], data_file, args.data_train, args.data_test)
            args.data_mib = data_file.stat().st_size / 2**20
            data = time_data(args.repeats, roots, data_file)
        smoke = time_smoke(args.smoke_repeats, roots, work) if args.smoke or args.smoke_only else None
        text = report(args, floor, jobs, data, smoke)
        print("\n" + text)
        if args.json:
            args.json.write_text(json.dumps({"floor": floor, "jobs": jobs, "data": data, "smoke": smoke}, indent=2)
                                 + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
