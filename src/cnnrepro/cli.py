"""The ``cnnrepro`` command: inspect what a configuration will run without running Snakemake."""

from __future__ import annotations

import argparse
import csv
import sys

from cnnrepro import config as cfg


def _load(args) -> dict:
    return cfg.load_config(args.config, args.configfile or [])


def model_rows(config: dict) -> list[dict]:
    """One row per (model, dataset, freeze level) used by the configured studies, with parameter counts."""
    from cnnrepro import models
    from cnnrepro.recipe import build_run_model

    rows, seen = [], set()
    for settings in cfg.settings_by_run(config).values():
        key = (settings["model"], settings["dataset"], settings["freeze"])
        if key in seen:
            continue
        seen.add(key)
        model = build_run_model(settings, pretrained=False)  # counts need no weights
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
    widths = {k: max(len(k), *(len(f"{r[k]:,}" if isinstance(r[k], int) else str(r[k])) for r in rows)) for k in rows[0]}
    print("  ".join(k.ljust(widths[k]) for k in rows[0]))
    for r in rows:
        print("  ".join((f"{r[k]:,}".rjust(widths[k]) if isinstance(r[k], int) else str(r[k]).ljust(widths[k]))
                        for k in r))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnrepro", description=__doc__)
    parser.add_argument("--config", default="config.yaml", help="base config (default: config.yaml)")
    parser.add_argument("--configfile", action="append", help="overlay, as with snakemake --configfile")
    sub = parser.add_subparsers(dest="command", required=True)
    p_models = sub.add_parser("models", help="parameter counts of every (model, dataset, freeze level) configured")
    p_models.add_argument("--format", choices=["csv"], help="machine-readable output")
    p_runs = sub.add_parser("runs", help="every training run the configuration defines")
    p_runs.add_argument("--format", choices=["csv"])
    sub.add_parser("check", help="validate the configuration and say what it defines")
    args = parser.parse_args(argv)
    try:
        config = _load(args)
    except (cfg.ConfigError, FileNotFoundError) as error:
        print(f"cnnrepro: {error}", file=sys.stderr)
        return 2
    if args.command == "models":
        _print(model_rows(config), args.format)
    elif args.command == "runs":
        _print([{"run": r.id} | r.wildcards for r in cfg.expand_runs(config)], args.format)
    elif args.command == "check":
        runs = cfg.expand_runs(config)
        print(f"config OK: {len(config['studies'])} studies, {len(runs)} training runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
