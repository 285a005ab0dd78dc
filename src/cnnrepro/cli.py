"""The ``cnnrepro`` command: inspect what a configuration will run without running Snakemake; start a new study from
a paper (new-study); fetch a dataset's files on a machine with internet (download)."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from cnnrepro import config as cfg
from cnnrepro import models, scaffold, startup
from cnnrepro.data.catalog import DATASETS, DatasetUnavailable
from cnnrepro.engine.recipe import build_run_model
from cnnrepro.plan import rates, runs


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


def plan_tables(checked: startup.Checked, device: str, eval_every: int,
                rate: rates.Rate | None = None) -> tuple[list[str], list[dict], list[dict]]:
    """(header lines, one row per run, one row per study and a total) of `cnnrepro plan`: the runs as the config
    trains them, and each study without any saving and with every saving that applies."""
    config = checked.config
    rate = rate or runs.rate_for(device, config)
    scenarios = {"none": runs.NO_SAVINGS, "config": runs.configured_savings(config),
                 "all": runs.all_savings(eval_every)}
    plans = {name: runs.plan_runs(config, savings, checked.settings) for name, savings in scenarios.items()}
    header = [f"device: {rate.basis}",
              "time = max(FLOPs / sustained rate, steps x ops x per-op cost) per pass, plus "
              f"{rates.JOB_STARTUP_SECONDS:.0f} s start-up per job; backward = 2 x the forward FLOPs of the trained "
              "part; epochs: (authors) = their observed stop, (cap) = max_epochs, an upper bound",
              *(f"savings '{name}': {savings.label()}" for name, savings in scenarios.items())]
    rows = []
    for p in plans["config"]:
        rows.append({"run": p.run_id, "epochs": f"{p.epochs}{EPOCH_BASIS[p.epochs_basis]}",
                     "trained": p.trained_epochs, "cache": p.cache, "evals": p.evaluations,
                     "train_images": next(q.images for q in p.passes if q.what == "train") // max(p.trained_epochs, 1),
                     "TFLOP": round(p.flops / 1e12, 1), "time": _duration(p.seconds(rate)),
                     "seconds": round(p.seconds(rate)), "device_GiB": round(p.device_bytes / 2**30, 2),
                     "mem_mb": p.host_mem_mb})
    studies = []
    for name in dict.fromkeys(p.study for p in plans["config"]):
        row = {"study": name, "runs": sum(1 for p in plans["config"] if p.study == name)}
        for scenario, scenario_plans in plans.items():
            mine = [p for p in scenario_plans if p.study == name]
            row[f"PFLOP_{scenario}"] = round(sum(p.flops for p in mine) / 1e15, 2)
            row[f"time_{scenario}"] = _duration(sum(p.seconds(rate) for p in mine))
        studies.append(row)
    total = {"study": "total", "runs": len(plans["config"])}
    for scenario, scenario_plans in plans.items():
        total[f"PFLOP_{scenario}"] = round(sum(p.flops for p in scenario_plans) / 1e15, 2)
        total[f"time_{scenario}"] = _duration(sum(p.seconds(rate) for p in scenario_plans))
    over = [p.run_id for p in plans["config"] if rate.memory_gib and p.device_bytes > rate.memory_gib * 2**30]
    if over:
        header.append(f"over the device's {rate.memory_gib:g} GiB: {', '.join(over)}")
    return header, rows, [*studies, total]


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
        header, run_rows, studies = plan_tables(checked, args.device, args.eval_every)
        if args.format == "csv":
            _print(run_rows, "csv")
        else:
            print("\n".join(header), end="\n\n")
            _print(run_rows, None)
            print()
            _print(studies, None)
    elif args.command == "check":
        runs = cfg.expand_runs(config)
        print(f"config OK: {len(config['studies'])} studies, {len(runs)} training runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
