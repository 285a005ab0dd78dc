"""Training speed, side by side in one process (not part of the test suite):

1. feature caching: seed-000-style ResNet18 linear probe on MNIST (frozen backbone with BatchNorm in eval
   mode, batch 512, 30 epochs) through the real engine, ``train_run``, with ``feature_cache: true`` and
   ``false``; the time is the whole job (data, model, features, epochs, evaluation). The head must learn for
   the comparison to mean something: the backbone here is randomly initialised (ImageNet weights cannot be
   loaded offline), on which seed 000's SGD lr 1e-4 barely moves the head, so the probe uses Adam lr 1e-2
   (``--optimizer``/``--lr`` change it). Seed 000 as configured (BatchNorm in train mode) does not cache:
   its frozen backbone's running statistics change every batch;
2. channels_last: the ResNet18-CIFAR training step (``train.train_one_epoch``, Adam, 32 px), with the model and
   batches in channels_last and in the default contiguous format.

Runs are interleaved and repeated, alternating which variant goes first, and medians are reported, because
a shared machine drifts by +-15 %. Speed does not depend on weight values, so ResNet18 is built without
ImageNet weights (offline). Data: real MNIST from ../shared/data (torchvision layout, download=False),
stratified subsets; synthetic stand-in data if it is absent.

The paper setting of seed 000 is 60,000 training images at 224 px for 30 epochs (plus 10,000 test images
evaluated every epoch); the defaults here are scaled down to finish in a few minutes on 2 CPU cores:

    python benchmarks/train_speed.py                      # defaults below
    python benchmarks/train_speed.py --images 60000 --test-images 10000 --input-size 224   # paper scale
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnrepro import config as cfgmod
from cnnrepro import models
from cnnrepro.data import augment, compact, prepare, sources
from cnnrepro.data.splits import Split
from cnnrepro.engine import train
from cnnrepro.runtime.device import device_name

# ../shared/data beside the repository (see the README); CNNREPRO_SHARED_DATA points elsewhere.
MNIST_ROOT = Path(os.environ.get("CNNREPRO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CIFAR10 = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}


def load_mnist(n_train: int, n_test: int) -> tuple[dict, str]:
    try:
        import torchvision

        splits = {}
        for name, is_train in (("train", True), ("test", False)):
            ds = torchvision.datasets.MNIST(str(MNIST_ROOT), train=is_train, download=False)
            splits[name] = (ds.data[:, None].contiguous(), ds.targets.long())
        return prepare.subsample(splits, n_train, n_test, seed=0), f"MNIST from {MNIST_ROOT / 'MNIST'}"
    except (RuntimeError, OSError) as exc:  # torchvision raises RuntimeError when the files are missing
        print(f"real MNIST unavailable ({exc}); using synthetic data", file=sys.stderr)
        return sources.make_synthetic("mnist", n_train, n_test), "synthetic MNIST stand-in"


def seed000_settings(args, feature_cache: bool) -> dict:
    """Seed 000's recipe (config.yaml) with BatchNorm in eval mode, the one setting under which caching applies."""
    recipe = {"optimizer": args.optimizer, "lr": args.lr, "batch_size": 512, "loss": "ce",
              "schedule": "constant", "epochs": args.epochs, "select": "last", "bn_frozen": "eval",
              "feature_cache": feature_cache}
    study = {"datasets": ["mnist"], "models": ["resnet18"], "freeze": ["head"], "pretrained": False,
             "input": {"size": args.input_size, "rgb": True, "normalization": "imagenet"}, "augment": "none",
             "eval_split": "test", "recipe": recipe}
    config = cfgmod.validate({"studies": {"bench": study}, "normalization": {"imagenet": IMAGENET},
                              "freeze_levels": {"head": ["head"]}, "device": "cpu"})
    return cfgmod.run_settings(config, cfgmod.Run("bench", "mnist", "resnet18", "head", "base", 0))


def time_caching(args, data_path: Path, work: Path, feature_cache: bool, index: int) -> dict:
    folder = work / f"cache{int(feature_cache)}_{index}"
    outputs = train.RunOutputs(folder / "weights.pt", folder / "history.csv", folder / "metrics.json",
                               folder / "checkpoint.pt")
    t0 = time.perf_counter()
    record = train.train_run(seed000_settings(args, feature_cache), data_path, outputs, threads=args.threads)
    return {"seconds": time.perf_counter() - t0, "top1": record["test"]["top1"],
            "loss_last": record["train_loss_last"], "cached": record["speed"]["feature_cache"]}


def time_step(args, channels_last: bool) -> float:
    """Seconds per ResNet18-CIFAR training step, through the engine's own epoch function."""
    torch.manual_seed(0)
    model = models.build_model("resnet18_cifar", 10)
    model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    transform = augment.build_batch_transform({"augment": "none", **CIFAR10}, "cpu")
    gen = torch.Generator().manual_seed(0)
    n = args.step_batch * args.steps
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    warm = Split(x[:args.step_batch], y[:args.step_batch], transform, torch.device("cpu"))
    split = Split(x, y, transform, torch.device("cpu"))
    criterion = lambda logits, target: F.cross_entropy(logits, target)  # noqa: E731
    # One untimed step: first-call allocations and oneDNN primitive creation are not the steady state.
    train.train_one_epoch(model, warm, optimizer, criterion, args.step_batch, gen, "train", channels_last)
    t0 = time.perf_counter()
    train.train_one_epoch(model, split, optimizer, criterion, args.step_batch, gen, "train", channels_last)
    return (time.perf_counter() - t0) / args.steps


def interleaved(repeats: int, measure) -> dict[bool, list]:
    """measure(variant, repeat) for both variants per repeat; the first variant alternates to cancel drift."""
    results: dict[bool, list] = {True: [], False: []}
    for r in range(repeats):
        for variant in ((True, False) if r % 2 == 0 else (False, True)):
            results[variant].append(measure(variant, r))
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="MNIST training images (paper: 60000)")
    parser.add_argument("--test-images", type=int, default=None,
                        help="MNIST test images, evaluated every epoch (default: images/4; paper: 10000)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the head training (paper: 30)")
    parser.add_argument("--input-size", type=int, default=48, help="ResNet18 input side in px (paper: 224)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the caching comparison")
    parser.add_argument("--optimizer", default="adam", help="head optimizer (seed 000: sgd, with ImageNet features)")
    parser.add_argument("--lr", type=float, default=1e-2, help="head learning rate (seed 000: 1e-4)")
    parser.add_argument("--step-batch", type=int, default=32, help="ResNet18-CIFAR batch size")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per channels_last sample")
    parser.add_argument("--step-repeats", type=int, default=5, help="interleaved repeats of the step timing")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--skip-caching", action="store_true")
    parser.add_argument("--skip-channels-last", action="store_true")
    args = parser.parse_args(argv)
    args.test_images = args.test_images or max(args.images // 4, 10)
    torch.set_num_threads(args.threads)
    logging.getLogger("cnnrepro").setLevel(logging.WARNING)  # the engine's per-epoch lines would drown the table
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
          f"{device_name(torch.device('cpu'))}")

    if not args.skip_caching:
        data, source = load_mnist(args.images, args.test_images)
        with tempfile.TemporaryDirectory(prefix="train_speed_") as tmp:
            work = Path(tmp)
            data_path = work / "mnist.pt"
            compact.write_compact(data, data_path, {"dataset": "mnist"})
            print(f"\n[1] seed-000 frozen ResNet18 head, {args.epochs} epochs, {len(data['train'][1])} train + "
                  f"{len(data['test'][1])} test images ({source}) at {args.input_size} px, BN eval, "
                  f"{args.repeats} interleaved repeats")
            # Untimed one-epoch runs first: the first training in a process pays one-time initialisation.
            warm = argparse.Namespace(**{**vars(args), "epochs": 1})
            for cached in (True, False):
                time_caching(warm, data_path, work, cached, -1)
            runs = interleaved(args.repeats, lambda cached, r: time_caching(args, data_path, work, cached, r))
        assert all(x["cached"] for x in runs[True]) and not any(x["cached"] for x in runs[False])
        cached = statistics.median(x["seconds"] for x in runs[True])
        plain = statistics.median(x["seconds"] for x in runs[False])
        for label, key in (("with feature cache", True), ("without (full model)", False)):
            times = ", ".join(f"{x['seconds']:.1f}" for x in runs[key])
            print(f"    {label:22s} median {statistics.median(x['seconds'] for x in runs[key]):8.1f} s "
                  f"[{times}]  test top-1 {runs[key][0]['top1']:.4f}, last loss {runs[key][0]['loss_last']:.6f}")
        print(f"    speed-up from caching: {plain / cached:.1f}x")
        print(f"    did the head learn? last loss {runs[True][0]['loss_last']:.3f} (ln 10 = {math.log(10):.3f} is "
              f"chance), test top-1 {runs[True][0]['top1']:.3f} (chance 0.100); cached and uncached "
              f"{'agree' if runs[True][0]['top1'] == runs[False][0]['top1'] else 'DIFFER'} on top-1")

    if not args.skip_channels_last:
        print(f"\n[2] ResNet18-CIFAR training step, batch {args.step_batch} at 32 px, Adam, {args.steps} timed "
              f"steps per sample, {args.step_repeats} interleaved repeats")
        for cl in (True, False):  # untimed: one-time initialisation of both memory formats
            time_step(argparse.Namespace(**{**vars(args), "steps": 1}), cl)
        steps = interleaved(args.step_repeats, lambda cl, r: time_step(args, cl))
        cl = statistics.median(steps[True])
        contiguous = statistics.median(steps[False])
        for label, key in (("channels_last", True), ("contiguous (NCHW)", False)):
            times = ", ".join(f"{1000 * t:.0f}" for t in steps[key])
            print(f"    {label:22s} median {1000 * statistics.median(steps[key]):8.0f} ms/step [{times}]")
        print(f"    speed-up from channels_last: {contiguous / cl:.2f}x")


if __name__ == "__main__":
    main()
