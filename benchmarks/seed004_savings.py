"""Seed 004's two training savings, each side by side with the computation it replaces (not part of the tests).

Seed 004 as config.yaml has it (SqueezeNet v1.1 at 48 px, Adam lr 1e-3, MSE, batch 250, the validation split
carved from the training data, Keras's head initialisation) on the real CIFAR-10 subset in ../shared/data
(10,000 images; 2,000 become the test split, stratified, seed 0, as presets/offline.yaml does), through the real
engine, ``cnnrepro.engine.train.train_run``, writing everything a workflow job writes:

1. **frozen-prefix caching** (``recipe.feature_cache``, on by default): at each of the three freeze levels, the
   run with the frozen prefix's output computed once (``head``: conv1 … fire9; ``last_two_fire_and_head``:
   conv1 … fire7, with fire8, fire9 and the head training on its output) against the same run through the whole
   network every epoch. ``none`` trains everything: nothing to cache, the two sides are the same computation.
2. **epoch-grid chaining** (``chain_epoch_grids``, on by default): the grid's three epoch counts (config.yaml:
   50 / 150 / 300; ``--chain-epochs`` scales them) trained as three separate runs from scratch against one chain
   (the longer runs continue from the shorter runs' final state, as the workflow's jobs do).

Both must give the same numbers as what they replace: the script prints each side's final validation and test
metrics and whether they are equal bit for bit. Times are of ``train_run`` (the job less its imports), wall
and CPU, medians over ``--repeats``; sides are interleaved and their order reverses on every repeat, because a
shared machine drifts. ImageNet weights cannot be fetched offline, so the backbone is randomly initialised
(``pretrained: false``): speed does not depend on the weights' values.

    python benchmarks/seed004_savings.py                          # defaults below
    python benchmarks/seed004_savings.py --train-images 1000 --cache-epochs 5 --chain-epochs 2,6,12 --repeats 1
                                                  # the README's run: ~30 min on 2 cores shared with tests
    python benchmarks/seed004_savings.py --train-images 8000 --cache-epochs 50 --chain-epochs 50,150,300  # paper
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from cnnrepro import config as cfg
from cnnrepro.data import prepare
from cnnrepro.engine import train

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CNNREPRO_SHARED_DATA", REPO.parent / "shared" / "data"))
STUDY = "seed004_squeezenet_transfer_cifar10"
LEVELS = ("head", "last_two_fire_and_head", "none")


def study_config(args, epochs: list[int], feature_cache: bool) -> dict:
    """config.yaml with seed 004 alone, offline (npz data, no ImageNet weights), at the given epochs."""
    config = cfg.load_yaml(REPO / "config.yaml")
    study = copy.deepcopy(config["studies"][STUDY])
    study["pretrained"] = False
    study["grid"] = {"recipe.batch_size": [args.batch_size], "recipe.epochs": epochs}
    study["recipe"]["feature_cache"] = feature_cache
    study["tables"] = []
    config["studies"] = {STUDY: study}
    config["device"] = "cpu"
    config["data"] = {"datasets": {"cifar10": {"source": "npz", "npz": {"train": str(SHARED / "cifar10_train.npz")},
                                               "split_test_from_train": 2000,
                                               "subsample_train": args.train_images}}}
    return cfg.validate(config)


def run_settings(args, epochs: list[int], feature_cache: bool) -> dict[tuple[str, int], dict]:
    """(freeze level, epochs) -> that run's settings, as the workflow passes them to its training job."""
    by_run = cfg.settings_by_run(study_config(args, epochs, feature_cache))
    return {(s["freeze"], s["recipe"]["epochs"]): s for s in by_run.values()}


def prepare_data(args, work: Path) -> Path:
    config = study_config(args, [1], True)
    out = work / "cifar10.pt"
    prepare.prepare("cifar10", "npz", SHARED, out, cfg.data_settings(config, "cifar10"))
    return out


def outputs(folder: Path) -> train.RunOutputs:
    return train.RunOutputs(folder / "weights.pt", folder / "history.csv", folder / "metrics.json",
                            folder / "checkpoint.pt", folder / "final_state.pt")


def numbers(record: dict) -> dict:
    """The numbers a run reports, to compare a saving with what it replaces."""
    return {"eval_loss": record["eval"]["loss"], "eval_acc": record["eval"]["acc"],
            "test_loss": record["test"]["loss"], "test_acc": record["test"]["top1"],
            "train_loss_last": record["train_loss_last"]}


def timed(fn) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def measure_caching(args, data: Path, work: Path, level: str, cached: bool, index: int) -> dict:
    settings = run_settings(args, [args.cache_epochs], cached)[(level, args.cache_epochs)]
    folder = work / f"cache-{level}-{int(cached)}-{index}"
    wall, cpu, record = timed(lambda: train.train_run(settings, data, outputs(folder), threads=args.threads))
    shutil.rmtree(folder)
    return {"wall": wall, "cpu": cpu, "cached": record["speed"]["feature_cache"], "numbers": numbers(record)}


def measure_chaining(args, data: Path, work: Path, chained: bool, index: int) -> dict:
    settings = run_settings(args, args.chain_epochs, True)
    runs = [settings[(args.chain_freeze, epochs)] for epochs in args.chain_epochs]
    folder = work / f"chain-{int(chained)}-{index}"

    def train_all() -> list[dict]:
        records, previous = [], None
        for i, run in enumerate(runs):
            chain = train.ChainStart(outputs(previous[0]).final_state, previous[1]) if chained and previous else None
            keep = chained and i + 1 < len(runs)
            records.append(train.train_run(run, data, outputs(folder / str(i)), threads=args.threads, chain=chain,
                                           keep_final_state=keep))
            previous = (folder / str(i), run)
        return records

    wall, cpu, records = timed(train_all)
    shutil.rmtree(folder)
    return {"wall": wall, "cpu": cpu, "numbers": [numbers(r) for r in records],
            "epochs_trained": sum(r["epochs_run"] - (runs[i - 1]["recipe"]["epochs"] if chained and i else 0)
                                  for i, r in enumerate(records))}


def interleaved(repeats: int, sides: list, measure) -> dict:
    samples = {side: [] for side in sides}
    for rep in range(repeats):
        for side in (sides if rep % 2 == 0 else sides[::-1]):
            samples[side].append(measure(side, rep))
            print(f"    {side}: {samples[side][-1]['wall']:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    return samples


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def agreement(runs: list[dict]) -> str:
    """'bitwise' when every run reports the numbers of the first, else the largest difference."""
    first = runs[0]["numbers"]
    flat = lambda n: [v for d in (n if isinstance(n, list) else [n]) for v in d.values()]  # noqa: E731
    diff = max(abs(a - b) for r in runs for a, b in zip(flat(r["numbers"]), flat(first)))
    return "bitwise" if diff == 0 else f"max difference {diff:.2e}"


def fmt(numbers: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in numbers.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=4000,
                        help="of the 8,000 training images (the validation split is carved from these)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--cache-epochs", type=int, default=10)
    parser.add_argument("--chain-epochs", type=lambda s: [int(x) for x in s.split(",")], default=[5, 15, 30])
    parser.add_argument("--chain-freeze", choices=LEVELS, default="last_two_fire_and_head")
    parser.add_argument("--levels", type=lambda s: s.split(","), default=list(LEVELS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--skip", choices=["caching", "chaining"], action="append", default=[])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="cnnrepro-seed004-"))
    results: dict = {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "date": date.today().isoformat()}
    try:
        data = prepare_data(args, work)
        lines = [f"Seed 004 savings, {results['date']}, CPU only ({args.threads} threads, {os.cpu_count()} cores), "
                 f"{args.train_images:,} training images (80 % train / 20 % validation) + 2,000 test, 48 px, "
                 f"batch {args.batch_size}, medians of {args.repeats}", ""]
        if "caching" not in args.skip:
            lines += [f"Frozen-prefix caching, {args.cache_epochs} epochs:", "",
                      "| freeze level | cached wall s | uncached wall s | uncached/cached (wall) | CPU ratio "
                      "| cache used | same numbers |", "|---|---|---|---|---|---|---|"]
            results["caching"] = {}
            for level in args.levels:
                print(f"  caching, {level}", flush=True)
                samples = interleaved(args.repeats, ["cached", "uncached"],
                                      lambda side, rep: measure_caching(args, data, work, level, side == "cached", rep))
                results["caching"][level] = samples
                c, u = samples["cached"], samples["uncached"]
                lines.append(f"| {level} | {med(c, 'wall'):.1f} | {med(u, 'wall'):.1f} "
                             f"| {med(u, 'wall') / med(c, 'wall'):.2f}x | {med(u, 'cpu') / med(c, 'cpu'):.2f}x "
                             f"| {'yes' if c[0]['cached'] else 'no'} | {agreement(c + u)} |")
            lines += [""] + [f"- {level}: {fmt(s['cached'][0]['numbers'])}"
                             for level, s in results["caching"].items()] + [""]
        if "chaining" not in args.skip:
            epochs = "/".join(map(str, args.chain_epochs))
            print(f"  chaining, {args.chain_freeze}, {epochs} epochs", flush=True)
            samples = interleaved(args.repeats, ["chained", "separate"],
                                  lambda side, rep: measure_chaining(args, data, work, side == "chained", rep))
            results["chaining"] = samples
            c, s = samples["chained"], samples["separate"]
            lines += [f"Epoch-grid chaining, {args.chain_freeze}, the {epochs}-epoch runs:", "",
                      "| side | epochs trained | wall s | CPU s |", "|---|---|---|---|",
                      f"| chained | {c[0]['epochs_trained']} | {med(c, 'wall'):.1f} | {med(c, 'cpu'):.1f} |",
                      f"| separate | {s[0]['epochs_trained']} | {med(s, 'wall'):.1f} | {med(s, 'cpu'):.1f} |",
                      f"| separate/chained | | {med(s, 'wall') / med(c, 'wall'):.2f}x "
                      f"| {med(s, 'cpu') / med(c, 'cpu'):.2f}x |", "",
                      f"Numbers of every run, chained against separate: {agreement(c + s)}"]
            lines += [f"- {n} epochs: {fmt(x)}" for n, x in zip(args.chain_epochs, c[0]["numbers"])]
        print("\n" + "\n".join(lines))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
