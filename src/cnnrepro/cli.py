"""The ``cnnrepro`` command: inspect what a configuration will run without running Snakemake; start a new study from
a paper (new-study); fetch a dataset's files on a machine with internet (download); try a device before the real
run (gpu-check)."""

from __future__ import annotations

import argparse
import copy
import csv
import sys
from pathlib import Path

from cnnrepro import config as cfg
from cnnrepro import models, scaffold, startup
from cnnrepro.data.catalog import DATASETS, DatasetUnavailable
from cnnrepro.engine.recipe import build_run_model
from cnnrepro.gpucheck import check
from cnnrepro.gpucheck import profiles as gpucheck_profiles
from cnnrepro.plan import calibration, rates, runs, share


def model_rows(settings_by_run: dict[str, dict]) -> list[dict]:
    """One row per (model, dataset, freeze level) used by the configured studies, with parameter counts."""
    rows, seen = [], set()
    for settings in settings_by_run.values():
        key = (settings["model"], settings["dataset"], settings["freeze"])
        if key in seen:
            continue
        seen.add(key)
        model = build_run_model(settings, meta=True)  # counts need no weights, nor memory
        rows.append({"model": settings["model"], "dataset": settings["dataset"], "freeze": settings["freeze"],
                     "params": models.count_params(model),
                     "trainable_params": models.count_params(model, trainable_only=True)})
    return rows


def _print(rows: list[dict], fmt: str | None) -> None:
    if not rows:
        return
    if fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    shown = [{k: f"{v:,}" if isinstance(v, int) else str(v) for k, v in r.items()} for r in rows]
    widths = {k: max(len(k), *(len(r[k]) for r in shown)) for k in rows[0]}
    print("  ".join(k.ljust(widths[k]) for k in rows[0]))
    for r in rows:
        print("  ".join((f"{r[k]:,}".rjust(widths[k]) if isinstance(r[k], int) else str(r[k]).ljust(widths[k]))
                        for k in r))


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


EPOCH_BASIS = {"fixed": "", "authors": " (authors)", "cap": " (cap)"}


def plan_tables(checked: startup.Checked, device: str, eval_every: int, rate: rates.Rate | None = None,
                gpus: int = 1, measured: calibration.Measured | None = None
                ) -> tuple[list[str], list[dict], list[dict]]:
    """(header lines, one row per run, one row per study and a total) of `cnnrepro plan`: the runs as the config
    trains them, and each study without any saving and with every saving that applies; with GPU sharing on or
    ``gpus`` > 1, which runs share a GPU and the wall clock on one GPU and on ``gpus``. ``measured``: the step
    times of a gpu-check file replace the assumed rate, and each run and study says its basis."""
    config = checked.config
    rate = measured.rate if measured else rate or runs.rate_for(device, config)
    scenarios = {"none": runs.NO_SAVINGS, "config": runs.configured_savings(config),
                 "all": runs.all_savings(eval_every)}
    plans = {name: runs.plan_runs(config, savings, checked.settings) for name, savings in scenarios.items()}
    if measured:
        plans = {name: measured.apply_all(scenario_plans, config, checked.settings)
                 for name, scenario_plans in plans.items()}
    header = [f"device: {rate.basis}",
              "time = max(FLOPs / sustained rate, steps x ops x per-op cost) per pass, plus "
              f"{rates.JOB_STARTUP_SECONDS:.0f} s start-up per job; backward = 2 x the forward FLOPs of the trained "
              "part; epochs: (authors) = their observed stop, (cap) = max_epochs, an upper bound",
              *(f"savings '{name}': {savings.label()}" for name, savings in scenarios.items()),
              *(measured.header() if measured else [])]
    rows = []
    for p in plans["config"]:
        rows.append({"run": p.run_id, "epochs": f"{p.epochs}{EPOCH_BASIS[p.epochs_basis]}",
                     "trained": p.trained_epochs, "cache": p.cache, "evals": p.evaluations,
                     "train_images": next(q.images for q in p.passes if q.what == "train") // max(p.trained_epochs, 1),
                     "TFLOP": round(p.flops / 1e12, 1), "time": _duration(p.seconds(rate)),
                     "seconds": round(p.seconds(rate)), "device_GiB": round(p.device_bytes / 2**30, 2),
                     "mem_mb": p.host_mem_mb, **({"basis": p.basis} if measured else {})})
    walls = GpuWalls(checked, plans["config"], rate, gpus)
    header.extend(walls.header())
    for row in rows:
        row.update(walls.run_columns(row["run"]))
    sweep = sweep_cost(checked, rate, measured)
    header.append("sweep: what presets/assumptions.yaml adds (each assumption's alternatives, one at a time), "
                  "as configured" + (" (included in the runs above)" if config["sweep_assumptions"] else ""))
    studies = []
    for name in dict.fromkeys(p.study for p in plans["config"]):
        row = {"study": name, "runs": sum(1 for p in plans["config"] if p.study == name)}
        for scenario, scenario_plans in plans.items():
            mine = [p for p in scenario_plans if p.study == name]
            row[f"PFLOP_{scenario}"] = round(sum(p.flops for p in mine) / 1e15, 2)
            row[f"time_{scenario}"] = _duration(sum(p.seconds(rate) for p in mine))
        count, seconds = sweep.get(name, (0, 0.0))
        row.update(sweep_runs=count, time_sweep=_duration(seconds) if count else "")
        row.update(walls.study_columns(name))
        if measured:
            row["basis"] = calibration.basis_counts([p for p in plans["config"] if p.study == name])
        studies.append(row)
    total = {"study": "total", "runs": len(plans["config"])}
    for scenario, scenario_plans in plans.items():
        total[f"PFLOP_{scenario}"] = round(sum(p.flops for p in scenario_plans) / 1e15, 2)
        total[f"time_{scenario}"] = _duration(sum(p.seconds(rate) for p in scenario_plans))
    total.update(sweep_runs=sum(count for count, _ in sweep.values()),
                 time_sweep=_duration(sum(seconds for _, seconds in sweep.values())) if sweep else "")
    total.update(walls.study_columns(None))
    if measured:
        total["basis"] = calibration.basis_counts(plans["config"])
    over = [p.run_id for p in plans["config"] if rate.memory_gib and p.device_bytes > rate.memory_gib * 2**30]
    if over:
        header.append(f"over the device's {rate.memory_gib:g} GiB: {', '.join(over)}")
    return header, rows, [*studies, total]


class GpuWalls:
    """The plan's GPU sharing columns (config gpu_share, cnnrepro.plan.share): which runs share a GPU, and the wall
    clock of the runs as configured on one GPU and on ``gpus``. Shown when sharing is on or ``gpus`` > 1, on a
    GPU; none otherwise, so the plan of a configuration without sharing reads as before."""

    def __init__(self, checked: startup.Checked, plans: list[runs.RunPlan], rate: rates.Rate, gpus: int):
        config = checked.config
        self.share = config["gpu_share"]
        self.gpu_counts = sorted({1, gpus})
        self.shown = rate.device != "cpu" and (self.share > 1 or gpus > 1)
        self.sharing = {p.run_id for p in plans if share.shares_gpu(config, checked.settings[p.run_id], p.device_bytes)}
        self.jobs = share.gpu_jobs(plans, rate, self.sharing)
        self.plans = plans
        self.budget_gib = (share.share_budget_bytes(config) - share.CUDA_CONTEXT_BYTES) / 2**30
        self.memory_gib = share.gpu_memory_gib(config)

    def header(self) -> list[str]:
        if not self.shown:
            return []
        walls = " / ".join(self._column(n) for n in self.gpu_counts)
        counts = " / ".join(map(str, self.gpu_counts)) + (" GPUs" if len(self.gpu_counts) > 1 else " GPU")
        lines = [f"{walls}: the runs as configured on {counts}, the head of the longest chain of runs first "
                 "(time_* adds up each run alone, one after another)"]
        if self.share > 1:
            lines.append(f"gpu_share {self.share}: a run planned at most {self.budget_gib:.2f} GiB of device memory "
                         f"({self.share} of them with a CUDA context each fit in {share.MEMORY_HEADROOM:.0%} of "
                         f"{self.memory_gib:g} GiB, gpu_memory_gib) shares a GPU with up to {self.share - 1} others: "
                         f"{len(self.sharing)} of {len(self.plans)} runs (the gpu column). Assumed, not measured: "
                         "sharers overlap their start-up and kernel launches, not their FLOPs")
        return lines

    def run_columns(self, run_id: str) -> dict:
        if not self.shown or self.share == 1:
            return {}
        return {"gpu": "shared" if run_id in self.sharing else "alone"}

    def seconds(self, study: str | None, gpus: int) -> float:
        """The wall clock of one study's runs, or of all of them (None), on ``gpus`` GPUs."""
        names = {p.run_id for p in self.plans if study is None or p.study == study}
        return share.wall_seconds([job for job in self.jobs if job.name in names], gpus, self.share)

    def study_columns(self, study: str | None) -> dict:
        if not self.shown:
            return {}
        return {self._column(n): _duration(self.seconds(study, n)) for n in self.gpu_counts}

    @staticmethod
    def _column(gpus: int) -> str:
        return f"wall_{gpus}gpu" + ("s" if gpus > 1 else "")


def sweep_cost(checked: startup.Checked, rate: rates.Rate,
               measured: calibration.Measured | None = None) -> dict[str, tuple[int, float]]:
    """study -> (runs, seconds) that the sweep of its assumptions adds, as the configuration trains them (chained
    onto the study's own runs where only the epoch count differs)."""
    config = copy.deepcopy(checked.config)
    config["sweep_assumptions"] = True
    swept = cfg.settings_by_run(config)
    plans = runs.plan_runs(config, runs.configured_savings(config), swept)
    out: dict[str, tuple[int, float]] = {}
    for p in measured.apply_all(plans, config, swept) if measured else plans:
        if swept[p.run_id].get("assumption"):
            count, seconds = out.get(p.study, (0, 0.0))
            out[p.study] = (count + 1, seconds + p.seconds(rate))
    return out


def gpu_check(checked: startup.Checked, args: argparse.Namespace, argv: list[str] | None) -> int:
    steps = tuple(step for step in args.steps.split(",") if step)
    unknown = sorted(set(steps) - set(check.STEPS))
    if unknown or not steps:
        print(f"cnnrepro gpu-check: --steps {args.steps!r}: unknown {', '.join(unknown) or 'none given'}; the steps "
              f"are {', '.join(check.STEPS)}", file=sys.stderr)
        return 2
    try:
        return check.run_check(checked.config, checked.settings, args.device, Path(args.out), steps, args.budget,
                               " ".join(["cnnrepro", *(sys.argv[1:] if argv is None else argv)]))
    except FileExistsError as error:
        print(f"cnnrepro gpu-check: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if "no CUDA device" not in str(error):
            raise
        print("cnnrepro gpu-check: torch sees no CUDA device here; run it on the GPU machine, or with --device cpu to "
              "try the check itself on this CPU", file=sys.stderr)
        return 2



def _merged(config_path: str, overlays: list[str]) -> dict:
    config = cfg.load_yaml(config_path)
    for overlay in overlays:
        config = cfg.deep_merge(config, cfg.load_yaml(overlay))
    return config


def download(config: dict, dataset: str) -> str:
    """Fetch a dataset's torchvision files into data_root (needs internet): a built-in one, or one the config
    declares with a class, whose facts (for a class cnnrepro does not describe) are then read from them."""
    from cnnrepro.data import sources  # deferred: torchvision (~2 s), which only downloading needs

    cfg.check_schema(config)
    declaration = config["data"]["datasets"].get(dataset, {})
    if dataset in DATASETS:
        sources.download(dataset, config["data_root"])
    elif "class" in declaration:
        sources.download_declared(declaration, config["data_root"])
    else:
        raise cfg.ConfigError(f"config error at 'data.datasets.{dataset}': no built-in dataset and no torchvision "
                              f"class declared under that name; built in: {', '.join(DATASETS)}")
    return config["data_root"]


def _subcommands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", required=True)
    p_models = sub.add_parser("models", help="parameter counts of every (model, dataset, freeze level) configured")
    p_models.add_argument("--format", choices=["csv"], help="machine-readable output")
    p_runs = sub.add_parser("runs", help="every training run the configuration defines")
    p_runs.add_argument("--format", choices=["csv"])
    sub.add_parser("check", help="validate the configuration and say what it defines")
    p_plan = sub.add_parser("plan", help="FLOPs, estimated time and memory per run and per study on a device")
    p_plan.add_argument("--device", choices=["h100", "a100", "t4", "cpu"], default="h100",
                        help="GPU datasheet peaks x a calibrated efficiency, or cpu: measured here in a few seconds")
    p_plan.add_argument("--eval-every", type=int, default=10,
                        help="eval_every of the 'all savings' column (default 10)")
    p_plan.add_argument("--format", choices=["csv"], help="machine-readable: one row per run")
    p_plan.add_argument("--gpus", type=int, default=1,
                        help="also give the wall clock on this many GPUs, with the config's gpu_share (default 1)")
    p_plan.add_argument("--calibration", metavar=calibration.FILE_NAME,
                        help="the step times cnnrepro gpu-check measured on --device replace the assumed rate")
    p_check = sub.add_parser("gpu-check", help="prove a first GPU run and time what the plan assumes (minutes)")
    p_check.add_argument("--device", choices=list(gpucheck_profiles.PROFILES), default="cuda",
                         help="cuda (default), or cpu: the same steps, small, to try the check itself")
    p_check.add_argument("--out", default="gpu-check", help="folder for gpu-check.json, its summary and its runs")
    p_check.add_argument("--steps", default=",".join(check.STEPS),
                         help=f"comma-separated, of {', '.join(check.STEPS)} (default: all)")
    p_check.add_argument("--budget", type=float, default=gpucheck_profiles.BUDGET_SECONDS,
                         help="seconds; the step-time sweep skips what would run past it (default %(default)g)")
    p_new = sub.add_parser("new-study", help="write a commented study skeleton and its paper-table CSV to fill")
    p_new.add_argument("name", help="the study's name (letters, digits, underscores)")
    p_new.add_argument("--models", nargs="+", required=True,
                       help="built-in names, torchvision.<name> of torchvision's zoo, or your own (--model-file)")
    p_new.add_argument("--datasets", nargs="+", required=True,
                       help="built-in names, torchvision dataset classes (FashionMNIST), or image folders")
    p_new.add_argument("--model-file", action="append", default=[], help="a Python file of your own networks")
    p_new.add_argument("--out", default="studies", help="the folder the two files go to (default: studies)")
    p_download = sub.add_parser("download", help="fetch a dataset's torchvision files into data_root (internet)")
    p_download.add_argument("dataset", help="a built-in dataset, or one declared with a torchvision class")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnrepro", description=__doc__)
    parser.add_argument("--config", default="config.yaml", help="base config (default: config.yaml)")
    parser.add_argument("--configfile", action="append", help="overlay, as with snakemake --configfile")
    _subcommands(parser)
    args = parser.parse_args(argv)
    try:
        if args.command == "new-study":
            study, table = scaffold.new_study(args.name, args.models, args.datasets, args.model_file,
                                              Path(args.out))
            print(f"wrote {study} (the study: fill its TODOs from the paper) and {table} (the paper's numbers)\n"
                  f"next: cnnrepro --configfile {study} check; docs/new-study.md walks through the rest")
            return 0
        if args.command == "download":
            try:
                root = download(_merged(args.config, args.configfile or []), args.dataset)
            except DatasetUnavailable as error:  # no internet, or the download failed: what to do instead
                print(f"cnnrepro: {error}", file=sys.stderr)
                return 1
            print(f"{args.dataset}: torchvision's files are in {root}")
            return 0
        checked = startup.load(args.config, args.configfile or [])
    except (cfg.ConfigError, FileNotFoundError, ValueError) as error:
        print(f"cnnrepro: {error}", file=sys.stderr)
        return 2
    config = checked.config
    if args.command == "models":
        _print(model_rows(checked.settings), args.format)
    elif args.command == "runs":
        _print([{"run": r.id} | r.wildcards for r in cfg.expand_runs(config)], args.format)
    elif args.command == "plan":
        if args.gpus < 1:
            parser.error("--gpus must be 1 or more")
        try:
            measured = calibration.measured(calibration.load(args.calibration, args.device), config["speed"],
                                            runs.rate_for(args.device, config, calibrate=False)) \
                if args.calibration else None
        except (OSError, ValueError) as error:  # CalibrationError, a file that is not JSON
            print(f"cnnrepro: {error}", file=sys.stderr)
            return 2
        header, run_rows, studies = plan_tables(checked, args.device, args.eval_every, gpus=args.gpus,
                                                measured=measured)
        if args.format == "csv":
            _print(run_rows, "csv")
        else:
            print("\n".join(header), end="\n\n")
            _print(run_rows, None)
            print()
            _print(studies, None)
    elif args.command == "gpu-check":
        return gpu_check(checked, args, argv)
    elif args.command == "check":
        print(f"config OK: {len(config['studies'])} studies, {len(cfg.expand_runs(config))} training runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
