"""The whole training job against the textbook loop, side by side (not part of the test suite).

Seed 001's recipe (config.yaml: CIFAR-10 from scratch, Adam lr 1e-3, batch 128, cross-entropy, the dataset's
normalisation) on the real CIFAR-10 subset in ../shared/data (10,000 images, split 8,000 train / 2,000 test,
stratified, seed 0), for the models in ``--models``:

* **textbook**: what a new user writes: a ``torch.utils.data.Dataset`` that turns each uint8 HWC image into a
  PIL image and applies ``ToTensor`` + ``Normalize`` (as ``torchvision.datasets.CIFAR10`` does), a
  ``DataLoader(batch_size=128, shuffle=True, num_workers=W)``, the same model class and initial weights, Adam,
  ``--epochs`` epochs, then one evaluation of the test split (the PyTorch CIFAR-10 tutorial's shape; W = 2 is
  the tutorial's value, W = 0 is what is fastest on 2 cores). ``+cl``: model and batches in channels_last.
* **job**: cnnrepro's training job, ``cnnrepro.engine.train.train_run`` on the compact dataset file, writing weights,
  history, metrics and checkpoints as in the workflow. ``eval1`` is config.yaml as it stands (faithful: the eval
  split, which for seed 001 is the test split, is evaluated every epoch); ``evalN`` is the opt-in
  ``recipe.eval_every: <epochs>`` (evaluate after the last epoch only, as the textbook loop does); ``+cl`` adds
  the opt-in ``speed.channels_last`` (presets/fast.yaml).

Each measurement is a fresh Python process (imports included: what a job costs), timed by the parent from
start to exit, with ``--threads`` torch threads; variants are interleaved and their order reverses on every
repeat, because a shared machine drifts. The table gives per-variant medians, the spread, the final test
accuracy, and each variant's time relative to ``textbook w=0``, the faster textbook variant on this machine.

    python benchmarks/train_vs_textbook.py                                   # defaults below, ~1.5 h on 2 cores
    python benchmarks/train_vs_textbook.py --models mobilenet --epochs 1 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(os.environ.get("CNNREPRO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
REPO = Path(__file__).resolve().parents[1]
STUDY = "seed001_resnet_mobilenet_cifar10"

# name -> (kind, options)
VARIANTS = {
    "textbook w=2": ("textbook", {"workers": 2, "channels_last": False}),
    "textbook w=0": ("textbook", {"workers": 0, "channels_last": False}),
    "textbook w=0 +cl": ("textbook", {"workers": 0, "channels_last": True}),
    "job eval1": ("job", {"eval_every": 1, "channels_last": False}),
    "job evalN": ("job", {"eval_every": None, "channels_last": False}),
    "job evalN +cl": ("job", {"eval_every": None, "channels_last": True}),
}
REFERENCE = "textbook w=0"


# --------------------------------------------------------------------------- data


def prepare(work: Path, train_images: int, test_images: int) -> dict:
    """The npz subset split into train/test, as arrays for the textbook loop and a compact file for the job."""
    import numpy as np
    import torch

    from cnnrepro.data.compact import write_compact
    from cnnrepro.data.splits import stratified_split

    raw = np.load(SHARED / "cifar10_train.npz")
    x, y = raw["x"], raw["y"]
    train_idx, test_idx = stratified_split(torch.as_tensor(y), test_images, seed=0)
    train_idx = train_idx[:train_images] if train_images < len(train_idx) else train_idx
    arrays = work / "split.npz"
    np.savez(arrays, x_train=x[train_idx.numpy()], y_train=y[train_idx.numpy()], x_test=x[test_idx.numpy()],
             y_test=y[test_idx.numpy()])
    chw = torch.as_tensor(x).permute(0, 3, 1, 2)
    compact = work / "cifar10.pt"
    write_compact({"train": (chw[train_idx], torch.as_tensor(y)[train_idx]),
                   "test": (chw[test_idx], torch.as_tensor(y)[test_idx])}, compact, {"dataset": "cifar10"})
    return {"arrays": str(arrays), "compact": str(compact), "train": len(train_idx), "test": len(test_idx)}


# --------------------------------------------------------------------------- the two workers (run in a child)


def textbook(args: dict) -> dict:
    import numpy as np
    import torch
    import torchvision.transforms as T
    from PIL import Image
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

    from cnnrepro import models
    from cnnrepro.data import catalog

    torch.set_num_threads(args["threads"])
    data = np.load(args["arrays"])
    stats = catalog.DATASETS["cifar10"]
    transform = T.Compose([T.ToTensor(), T.Normalize(stats.mean, stats.std)])

    class CIFAR(Dataset):
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return transform(Image.fromarray(self.x[i])), int(self.y[i])

    fmt = torch.channels_last if args["channels_last"] else torch.contiguous_format
    train_loader = DataLoader(CIFAR(data["x_train"], data["y_train"]), batch_size=128, shuffle=True,
                              num_workers=args["workers"])
    test_loader = DataLoader(CIFAR(data["x_test"], data["y_test"]), batch_size=256, num_workers=args["workers"])
    torch.manual_seed(0)
    model = models.build_model(args["model"], 10).to(memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    for _ in range(args["epochs"]):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(x.to(memory_format=fmt)), y)
            loss.backward()
            optimizer.step()
    trained = time.perf_counter()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += int((model(x.to(memory_format=fmt)).argmax(1) == y).sum())
    return {"test_acc": correct / len(data["y_test"]), "train_loss_last_batch": float(loss),
            "tail_seconds": time.perf_counter() - trained, "evaluations": 1}


def job(args: dict) -> dict:
    import logging

    from cnnrepro import config as cfg
    from cnnrepro.engine import train

    study = {k: v for k, v in cfg.load_yaml(REPO / "config.yaml")["studies"][STUDY].items()
             if k not in ("tables", "figures")}
    study["models"] = [args["model"]]
    study["recipe"] = {**study["recipe"], "epochs": args["epochs"],
                       "eval_every": args["eval_every"] or args["epochs"]}
    config = cfg.validate({"studies": {STUDY: study}, "device": "cpu",
                           "speed": {"channels_last": args["channels_last"]}})
    settings = cfg.run_settings(config, cfg.Run(STUDY, "cifar10", args["model"], "none", "base", 0))
    messages = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append((time.perf_counter(), record.getMessage()))

    logging.getLogger("cnnrepro").addHandler(Keep())
    logging.getLogger("cnnrepro").setLevel(logging.INFO)
    out = Path(args["out"])
    evaluations = []
    real = train.evaluate
    train.evaluate = lambda *a, **k: evaluations.append(1) or real(*a, **k)
    record = train.train_run(settings, args["compact"], train.RunOutputs(
        out / "weights.pt", out / "history.csv", out / "metrics.json", out / "checkpoint.pt", out / "final_state.pt"),
        threads=args["threads"])
    done = time.perf_counter()
    last_epoch = max(t for t, m in messages if m.startswith(f"epoch {args['epochs']}/"))
    return {"test_acc": record["test"]["top1"], "train_loss_last": record["train_loss_last"],
            "tail_seconds": done - last_epoch, "evaluations": len(evaluations)}


# --------------------------------------------------------------------------- the parent


def measure(variant: str, model: str, args, data: dict, work: Path, index: int) -> dict:
    kind, options = VARIANTS[variant]
    child = {**options, "model": model, "epochs": args.epochs, "threads": args.threads, "kind": kind,
             "arrays": data["arrays"], "compact": data["compact"],
             "out": str(work / f"{model}_{variant.replace(' ', '_')}_{index}")}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(child)], capture_output=True, text=True,
                          cwd=REPO)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{variant} {model} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "seconds": seconds, "load_before": load, "load_after": os.getloadavg()[0]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18_cifar,mobilenet")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of: {', '.join(VARIANTS)}")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=8000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write every measurement to this file")
    args = parser.parse_args(argv)
    if args.child:
        child = json.loads(args.child)
        print(json.dumps((textbook if child["kind"] == "textbook" else job)(child)))
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    import torch

    print(f"{time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, {args.threads} threads, "
          f"{os.cpu_count()} CPUs; seed 001 recipe, {args.epochs} epochs, {args.repeats} interleaved repeats",
          flush=True)
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="train_vs_textbook_") as tmp:
        work = Path(tmp)
        data = prepare(work, args.train_images, args.test_images)
        print(f"data: {data['train']} train / {data['test']} test real CIFAR-10 images from {SHARED}", flush=True)
        for r in range(args.repeats):
            for model in args.models.split(","):
                for variant in (variants if r % 2 == 0 else variants[::-1]):
                    m = measure(variant, model, args, data, work, r)
                    results.setdefault((model, variant), []).append(m)
                    print(f"  repeat {r} {model:15s} {variant:17s} {m['seconds']:7.1f} s  test acc "
                          f"{m['test_acc']:.4f}  tail {m['tail_seconds']:5.1f} s  evaluations {m['evaluations']}  "
                          f"load {m['load_before']:.1f}->{m['load_after']:.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({f"{m}|{v}": x for (m, v), x in results.items()}, indent=1))
    print("\nmedian seconds per whole run (process start to exit); ratio = textbook w=0 / this (>1: faster); "
          "[min-max of the per-repeat ratios]")
    for model in args.models.split(","):
        print(f"\n{model}")
        ref = results.get((model, REFERENCE))
        for variant in variants:
            runs = results[(model, variant)]
            med = statistics.median(x["seconds"] for x in runs)
            accs = ", ".join(f"{x['test_acc']:.3f}" for x in runs)
            tail = statistics.median(x["tail_seconds"] for x in runs)
            line = (f"  {variant:17s} {med:8.1f} s  test acc {statistics.median(x['test_acc'] for x in runs):.4f} "
                    f"[{accs}]  tail {tail:5.1f} s")
            if ref:
                ratios = [a["seconds"] / b["seconds"] for a, b in zip(ref, runs)]
                line += f"  ratio {statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"
            print(line)


if __name__ == "__main__":
    main()
